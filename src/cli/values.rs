//! Parsers of flag values that several subcommands take, so that a bad value is refused by clap
//! (exit code 2, with the flag's name) before anything connects.

use std::collections::BTreeMap;

/// A share in [0, 1] (`--hit-ratio`, `--target-precision`).
pub fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// A similarity threshold in (0, 1], the range the server accepts.
pub fn threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("{s:?} is not a similarity threshold in (0, 1]")),
    }
}

/// One `--scope KEY=VALUE`. The value may hold `=` (a scope value can be a whole system prompt);
/// the key may not be empty.
pub fn scope_entry(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The scope of repeated `--scope` flags. A key given twice is refused: which value was meant?
pub fn scope(entries: Vec<(String, String)>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut scope = BTreeMap::new();
    for (key, value) in entries {
        if scope.insert(key.clone(), value).is_some() {
            anyhow::bail!("--scope {key}=... is given twice");
        }
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_entries_split_at_the_first_equals_sign() {
        assert_eq!(scope_entry("tenant=acme"), Ok(("tenant".into(), "acme".into())));
        assert_eq!(scope_entry("prompt=a=b"), Ok(("prompt".into(), "a=b".into())));
        assert_eq!(scope_entry("model="), Ok(("model".into(), String::new())));
        assert!(scope_entry("novalue").unwrap_err().contains("KEY=VALUE"));
        assert!(scope_entry("=acme").is_err());
    }

    #[test]
    fn a_scope_key_given_twice_is_refused() {
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(scope(vec![pair("a", "1"), pair("b", "2")]).unwrap().len(), 2);
        assert!(scope(vec![pair("a", "1"), pair("a", "2")]).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn ratios_and_thresholds_keep_to_their_ranges() {
        assert_eq!(ratio("0.5"), Ok(0.5));
        assert!(ratio("1.5").unwrap_err().contains("not a ratio between 0 and 1"));
        assert_eq!(threshold("1"), Ok(1.0));
        assert!(threshold("0").is_err() && threshold("x").is_err());
    }
}
