//! The text form under which two queries count as the same question: the exact-repeat path,
//! conversation context keys and the evaluation tools all compare texts this way.

use unicode_normalization::UnicodeNormalization;

/// Unicode NFKC, trimmed, runs of whitespace collapsed to one space, lower-cased.
/// (Rust offers no full Unicode case folding; `to_lowercase` differs from it only for a
/// handful of characters such as the German sharp s, which then merely miss the exact path
/// and still go through the model.)
pub fn normalize(text: &str) -> String {
    let nfkc: String = text.nfkc().collect();
    let mut out = String::with_capacity(nfkc.len());
    for word in nfkc.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// An answer as verified mode compares two of them: [`normalize`]d, and without the
/// punctuation around it (`"Yes."` and `yes` are the same answer; `5` and `50` are not).
pub fn normalize_answer(text: &str) -> String {
    let normalized = normalize(text);
    normalized.trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace() || is_quote(c)).to_owned()
}

fn is_quote(c: char) -> bool {
    matches!(c, '\u{2018}' | '\u{2019}' | '\u{201C}' | '\u{201D}' | '\u{00AB}' | '\u{00BB}' | '\u{2026}')
}

#[cfg(test)]
mod tests {
    use super::{normalize, normalize_answer};

    #[test]
    fn answers_compare_without_case_space_or_surrounding_punctuation() {
        assert_eq!(normalize_answer("  Yes. "), "yes");
        assert_eq!(normalize_answer("\u{201C}Card  arrival\u{201D}!"), "card arrival");
        assert_eq!(normalize_answer("e.g. (see above)"), "e.g. (see above");
        assert_ne!(normalize_answer("5"), normalize_answer("50"));
        assert_ne!(normalize_answer("not yes"), normalize_answer("yes"));
        assert_eq!(normalize_answer("?!"), "");
    }

    #[test]
    fn folds_case_space_and_compatibility_forms() {
        assert_eq!(normalize("  How do I\treset   my\nPassword? "), "how do i reset my password?");
        // Full-width letters and the "ﬁ" ligature are NFKC-equivalent to plain ASCII.
        assert_eq!(normalize("ＨＥＬＬＯ ﬁle"), "hello file");
        // Non-breaking and ideographic spaces count as whitespace.
        assert_eq!(normalize("a\u{00A0}b\u{3000}c"), "a b c");
        assert_eq!(normalize("   "), "");
    }

    #[test]
    fn keeps_what_changes_meaning() {
        assert_ne!(normalize("5 miles"), normalize("50 miles"));
        assert_ne!(normalize("café"), normalize("cafe"));
        assert_eq!(normalize("Café"), normalize("cafe\u{301}"));
    }
}
