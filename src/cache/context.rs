//! Conversation context: a follow-up ("what does this mean in finance?") is a different
//! question in every conversation, so a lookup that carries its context may only hit entries
//! stored under the identical context.
//!
//! The context becomes one more scope entry under the empty key, which validation never lets
//! a caller use. It therefore partitions exactly like scope, through the same index
//! partitions, exact-repeat keys, checkpoints and scope checks, with no second mechanism to
//! keep in step.

use super::validate::{self, ValidationError};
use crate::text::normalize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The scope key that holds the context key. Callers cannot send an empty scope key.
pub const SCOPE_KEY: &str = "";

/// Turns a lookup or store may carry.
pub const MAX_TURNS: usize = 256;
/// Bytes of a caller's own context key.
pub const MAX_KEY_BYTES: usize = 256;

/// The context key of a request: the caller's own key, or a hash of the normalised turns
/// (so a turn that differs only in case or spacing is the same context). `None` without
/// context.
pub fn key(turns: &[String], own_key: &str) -> Result<Option<String>, ValidationError> {
    if !turns.is_empty() && !own_key.is_empty() {
        return Err(ValidationError::new(
            "context",
            "and context_key are both set",
            "send the earlier turns or your own key, not both",
        ));
    }
    if !own_key.is_empty() {
        if own_key.len() > MAX_KEY_BYTES {
            return Err(ValidationError::new(
                "context_key",
                format!("is {} bytes", own_key.len()),
                format!("at most {MAX_KEY_BYTES} are allowed"),
            ));
        }
        return Ok(Some(own_key.to_owned()));
    }
    if turns.is_empty() {
        return Ok(None);
    }
    if turns.len() > MAX_TURNS {
        return Err(ValidationError::new(
            "context",
            format!("has {} turns", turns.len()),
            format!("at most {MAX_TURNS} are allowed (or send a context_key)"),
        ));
    }
    let mut h = Sha256::new();
    h.update((turns.len() as u64).to_be_bytes());
    for turn in turns {
        if turn.len() > validate::MAX_MAP_VALUE_BYTES {
            return Err(ValidationError::new(
                "context",
                format!("has a turn of {} bytes", turn.len()),
                format!("at most {} are allowed (or send a context_key)", validate::MAX_MAP_VALUE_BYTES),
            ));
        }
        let turn = normalize(turn);
        h.update((turn.len() as u64).to_be_bytes());
        h.update(turn.as_bytes());
    }
    let digest = h.finalize();
    Ok(Some(digest[..16].iter().map(|b| format!("{b:02x}")).collect()))
}

/// The scope a request is partitioned by: its scope plus its context key, if any.
pub fn scoped(mut scope: BTreeMap<String, String>, key: Option<String>) -> BTreeMap<String, String> {
    if let Some(key) = key {
        scope.insert(SCOPE_KEY.to_owned(), key);
    }
    scope
}

/// Splits a stored scope back into the caller's scope and the context key ("" = none).
pub fn split(mut scope: BTreeMap<String, String>) -> (BTreeMap<String, String>, String) {
    let key = scope.remove(SCOPE_KEY).unwrap_or_default();
    (scope, key)
}

/// Words that carry no topic of their own in a conversational turn: what is left of "why?",
/// "ok, continue", "tell me more", "can you explain that again please" once they go is
/// nothing, so such a query means something only in its conversation.
const CONVERSATIONAL: &[&str] = &[
    "a",
    "about",
    "again",
    "all",
    "also",
    "an",
    "and",
    "another",
    "any",
    "anything",
    "are",
    "be",
    "but",
    "can",
    "continue",
    "could",
    "detail",
    "details",
    "do",
    "does",
    "done",
    "elaborate",
    "else",
    "example",
    "examples",
    "explain",
    "further",
    "give",
    "go",
    "going",
    "good",
    "great",
    "how",
    "i",
    "in",
    "is",
    "it",
    "its",
    "just",
    "keep",
    "like",
    "me",
    "mean",
    "means",
    "more",
    "next",
    "nice",
    "no",
    "nope",
    "not",
    "now",
    "of",
    "ok",
    "okay",
    "on",
    "one",
    "other",
    "please",
    "pls",
    "really",
    "right",
    "say",
    "show",
    "so",
    "some",
    "something",
    "still",
    "sure",
    "tell",
    "thank",
    "thanks",
    "that",
    "that's",
    "the",
    "them",
    "then",
    "there",
    "these",
    "they",
    "thing",
    "things",
    "this",
    "those",
    "thx",
    "to",
    "too",
    "very",
    "was",
    "way",
    "we",
    "what",
    "what's",
    "when",
    "where",
    "which",
    "who",
    "why",
    "will",
    "with",
    "would",
    "wow",
    "yeah",
    "yep",
    "yes",
    "you",
    "your",
];

/// Whether a query, as [`normalize`] gives it, is a generic follow-up that only its
/// conversation gives a meaning: it has no word outside [`CONVERSATIONAL`] (and no number).
/// Such a query never hits without a context.
pub fn is_generic(normalized: &str) -> bool {
    normalized
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .all(|w| CONVERSATIONAL.binary_search(&w).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversational_words_are_sorted_for_binary_search() {
        assert!(CONVERSATIONAL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn generic_follow_ups() {
        for q in ["continue", "Why?", "ok", "OK, thanks!", "tell me more", "Can you explain that again, please?", "…"]
        {
            assert!(is_generic(&normalize(q)), "{q}");
        }
        for q in ["why is the sky blue?", "what about Python?", "explain 2", "capital of France", "ok rust"] {
            assert!(!is_generic(&normalize(q)), "{q}");
        }
    }

    #[test]
    fn keys_from_turns_or_the_caller() {
        let turns = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(key(&[], "").unwrap(), None);
        assert_eq!(key(&[], "conv-42").unwrap().as_deref(), Some("conv-42"));
        let a = key(&turns(&["What is a derivative?"]), "").unwrap().unwrap();
        assert_eq!(a.len(), 32);
        // Normalised: case and spacing do not make another conversation.
        assert_eq!(Some(a.clone()), key(&turns(&["what is a  derivative?"]), "").unwrap());
        assert_ne!(Some(a.clone()), key(&turns(&["What is an integral?"]), "").unwrap());
        // Turn boundaries count: ["a b"] is not ["a", "b"].
        assert_ne!(key(&turns(&["a b"]), "").unwrap(), key(&turns(&["a", "b"]), "").unwrap());
        assert!(key(&turns(&["x"]), "k").unwrap_err().to_string().contains("not both"));
        assert!(key(&[], &"k".repeat(257)).unwrap_err().to_string().contains("257 bytes"));
        assert!(key(&vec!["t".to_string(); 257], "").unwrap_err().to_string().contains("257 turns"));
    }

    #[test]
    fn scope_round_trip() {
        let scope: BTreeMap<_, _> = [("model".to_string(), "m".to_string())].into();
        let s = scoped(scope.clone(), Some("k".into()));
        assert_eq!(s.len(), 2);
        assert_eq!(split(s), (scope.clone(), "k".to_string()));
        assert_eq!(split(scoped(scope.clone(), None)), (scope, String::new()));
    }
}
