//! Request validation. Every refusal names the field, what is wrong with the value and the rule
//! it breaks, as a structured [`ValidationError`], so the gRPC edge and the config file can each
//! render it in their own words without parsing a message.

use std::collections::BTreeMap;
use std::fmt;

/// A value refused by a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The request field (or setting) that holds the value, as in `similarity_threshold`.
    pub field: &'static str,
    /// What is wrong with the value, naming it or its size: `is 1.5`, `contains ' '`.
    pub problem: String,
    /// What would be accepted, empty when the problem says it all: `it must be a number in (0, 1]`.
    pub rule: String,
    /// Whether the caller's request is fine and the server's configuration refuses it (a
    /// FAILED_PRECONDITION rather than an INVALID_ARGUMENT).
    pub refused_by_config: bool,
}

impl ValidationError {
    pub fn new(field: &'static str, problem: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { field, problem: problem.into(), rule: rule.into(), refused_by_config: false }
    }

    /// Problem and rule without the field's name, for a caller that names the field its own way.
    pub fn detail(&self) -> String {
        if self.rule.is_empty() {
            self.problem.clone()
        } else {
            format!("{}; {}", self.problem, self.rule)
        }
    }

    /// The rule alone, or the problem when there is no separate rule: what a config file
    /// shows after the value it already quotes.
    pub fn reason(&self) -> &str {
        if self.rule.is_empty() {
            &self.problem
        } else {
            &self.rule
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.refused_by_config {
            return write!(f, "{}; {}", self.problem, self.rule);
        }
        write!(f, "{} {}", self.field, self.problem)?;
        if !self.rule.is_empty() {
            write!(f, "; {}", self.rule)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationError {}

pub const MAX_NAMESPACE_LEN: usize = 128;
pub const MAX_MAP_KEY_BYTES: usize = 256;
/// Scope values may hold a whole system prompt; also the limit of one context turn.
pub const MAX_MAP_VALUE_BYTES: usize = 64 * 1024;

/// The metadata key by which a gateway marks a response that should normally not be cached:
/// `truncated` (the model hit its token limit) or `error`.
pub const INCOMPLETE_KEY: &str = "semcache.incomplete";
const INCOMPLETE_VALUES: [&str; 2] = ["truncated", "error"];

/// What a request may carry, set by the operator (each field is the flag of the same name;
/// [`Limits::default`] gives the flags' defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_query_bytes: usize,
    pub max_response_bytes: usize,
    pub max_scope_entries: usize,
    pub max_metadata_entries: usize,
    pub max_map_value_bytes: usize,
    /// Namespaces that may exist; a Store or ConfigureNamespace that would create one more
    /// is refused.
    pub max_namespaces: usize,
    /// Whether Store accepts a response that its metadata marks as [`INCOMPLETE_KEY`].
    pub cache_incomplete: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_query_bytes: 32 * 1024,
            max_response_bytes: 1024 * 1024,
            max_scope_entries: 32,
            max_metadata_entries: 64,
            max_map_value_bytes: MAX_MAP_VALUE_BYTES,
            max_namespaces: 10_000,
            cache_incomplete: false,
        }
    }
}

/// The limits of one map field, with the flags that set them (named in refusals).
#[derive(Debug, Clone, Copy)]
pub struct MapLimit {
    pub entries: usize,
    pub entries_flag: &'static str,
    pub value_bytes: usize,
}

impl Limits {
    pub fn scope(&self) -> MapLimit {
        MapLimit {
            entries: self.max_scope_entries,
            entries_flag: "--max-scope-entries",
            value_bytes: self.max_map_value_bytes,
        }
    }

    pub fn metadata(&self) -> MapLimit {
        MapLimit {
            entries: self.max_metadata_entries,
            entries_flag: "--max-metadata-entries",
            value_bytes: self.max_map_value_bytes,
        }
    }
}

type Checked = Result<(), ValidationError>;

pub fn namespace(name: &str) -> Checked {
    if name.is_empty() {
        return Err(ValidationError::new("namespace", "is required", ""));
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(ValidationError::new(
            "namespace",
            format!("is {} characters", name.len()),
            format!("at most {MAX_NAMESPACE_LEN} are allowed"),
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(ValidationError::new(
            "namespace",
            format!("contains {c:?}"),
            "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed",
        ));
    }
    Ok(())
}

/// A query or response; `flag` is the setting that allows `max_bytes`.
pub fn text(field: &'static str, value: &str, max_bytes: usize, flag: &str) -> Checked {
    // Control characters are dropped by the tokenizer: a text of nothing else says nothing.
    if value.chars().all(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::new(field, "is empty (or only whitespace and control characters)", ""));
    }
    if value.len() > max_bytes {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes", value.len()),
            format!("at most {max_bytes} are allowed ({flag})"),
        ));
    }
    Ok(())
}

pub fn threshold(field: &'static str, value: f32) -> Checked {
    if value.is_nan() || value <= 0.0 || value > 1.0 {
        return Err(ValidationError::new(field, format!("is {value}"), "it must be a number in (0, 1]"));
    }
    Ok(())
}

/// A namespace's threshold floor: 0 (none) up to 1.
pub fn floor(value: f32) -> Checked {
    if value.is_nan() || !(0.0..=1.0).contains(&value) {
        return Err(ValidationError::new(
            "threshold_floor",
            format!("is {value}"),
            "it must be a number in [0, 1] (0 = no floor)",
        ));
    }
    Ok(())
}

/// Verified mode's error bound: a share of lookups, 0 for static mode.
pub fn error_bound(value: f32) -> Checked {
    if value.is_nan() || !(0.0..0.5).contains(&value) {
        return Err(ValidationError::new(
            "error_bound",
            format!("is {value}"),
            "it must be a number in [0, 0.5): the share of lookups that may be answered wrongly, e.g. 0.01; 0 = the static threshold",
        ));
    }
    Ok(())
}

/// A namespace's threshold may not go below its floor. `floor_changed` says which of the two
/// the caller is setting, so that the refusal names the one to change.
pub fn threshold_above_floor(namespace: &str, threshold: f32, floor: f32, floor_changed: bool) -> Checked {
    if threshold >= floor {
        return Ok(());
    }
    Err(if floor_changed {
        ValidationError::new(
            "threshold_floor",
            format!("{floor} is above namespace {namespace:?}'s similarity_threshold {threshold}"),
            "raise the threshold to at least the floor (in the same call)",
        )
    } else {
        ValidationError::new(
            "similarity_threshold",
            format!("{threshold} is below namespace {namespace:?}'s threshold_floor {floor}"),
            "lower the floor first (in the same call) or keep the threshold at or above it",
        )
    })
}

pub fn map(field: &'static str, map: &BTreeMap<String, String>, limit: MapLimit) -> Checked {
    if map.len() > limit.entries {
        return Err(ValidationError::new(
            field,
            format!("has {} entries", map.len()),
            format!("at most {} are allowed ({})", limit.entries, limit.entries_flag),
        ));
    }
    for (k, v) in map {
        if k.is_empty() {
            return Err(ValidationError::new(field, "has an empty key", ""));
        }
        if k.len() > MAX_MAP_KEY_BYTES {
            return Err(ValidationError::new(
                field,
                format!("key {:?}... is {} bytes", &k[..k.floor_char_boundary(32)], k.len()),
                format!("at most {MAX_MAP_KEY_BYTES} are allowed"),
            ));
        }
        if v.len() > limit.value_bytes {
            return Err(ValidationError::new(
                field,
                format!("value of {:?} is {} bytes", truncate(k), v.len()),
                format!("at most {} are allowed (--max-map-value-bytes)", limit.value_bytes),
            ));
        }
    }
    Ok(())
}

/// Store's metadata: keys under `semcache.` are reserved, and a response marked incomplete is
/// cached only when the operator allows it.
pub fn incomplete(metadata: &BTreeMap<String, String>, allowed: bool) -> Checked {
    for (k, v) in metadata.range("semcache.".to_string()..) {
        if !k.starts_with("semcache.") {
            break;
        }
        if k != INCOMPLETE_KEY {
            return Err(ValidationError::new(
                "metadata",
                format!("key {:?} is reserved (keys starting with \"semcache.\")", truncate(k)),
                format!("the only one is {INCOMPLETE_KEY:?}"),
            ));
        }
        if !INCOMPLETE_VALUES.contains(&v.as_str()) {
            return Err(ValidationError::new(
                "metadata",
                format!("{INCOMPLETE_KEY} is {:?}", truncate(v)),
                format!("it must be one of {}", INCOMPLETE_VALUES.join(", ")),
            ));
        }
        if !allowed {
            return Err(ValidationError {
                refused_by_config: true,
                ..ValidationError::new(
                    "metadata",
                    format!(
                        "the response is marked {INCOMPLETE_KEY} = {v:?} and this server does not cache incomplete \
                         responses"
                    ),
                    "start it with --cache-incomplete to allow them",
                )
            });
        }
    }
    Ok(())
}

pub fn entry_id(id: &str) -> Result<u64, ValidationError> {
    id.parse::<u64>().map_err(|_| {
        ValidationError::new(
            "id",
            format!("{:?} is not an entry id", truncate(id)),
            "ids are the decimal numbers that Store returns",
        )
    })
}

fn truncate(s: &str) -> &str {
    &s[..s.floor_char_boundary(64)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<impl std::fmt::Debug, ValidationError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn namespace_names() {
        assert!(namespace("support.v2_en-GB").is_ok());
        assert!(reason(namespace("")).contains("required"));
        assert!(reason(namespace("a b")).contains("' '"));
        assert!(reason(namespace("ns/1")).contains("'/'"));
        assert!(reason(namespace("ü")).contains("'ü'"));
        assert!(namespace(&"a".repeat(128)).is_ok());
        assert!(reason(namespace(&"a".repeat(129))).contains("129"));
    }

    #[test]
    fn texts_and_thresholds() {
        assert!(reason(text("query", " \n\t", 10, "--max-query-bytes")).contains("empty"));
        let long = reason(text("query", "abcdefghijk", 10, "--max-query-bytes"));
        assert!(long.contains("11 bytes") && long.contains("(--max-query-bytes)"), "{long}");
        assert!(text("query", "ok", 10, "--max-query-bytes").is_ok());
        assert!(reason(text("query", "\u{0}\u{1b}\u{7f}\r", 10, "--max-query-bytes")).contains("control"));
        assert!(text("query", "a\u{0}b", 10, "--max-query-bytes").is_ok());
        for bad in [0.0, -0.1, 1.0001, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(threshold("similarity_threshold", bad).is_err(), "{bad}");
        }
        for good in [1e-6, 0.5, 1.0] {
            assert!(threshold("similarity_threshold", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn maps_and_ids() {
        let limit = MapLimit { entries: 4, ..Limits::default().scope() };
        let mut m = BTreeMap::new();
        m.insert(String::new(), "x".to_string());
        assert!(reason(map("scope", &m, limit)).contains("empty key"));
        let big: BTreeMap<_, _> = (0..5).map(|i| (i.to_string(), String::new())).collect();
        let many = reason(map("scope", &big, limit));
        assert!(many.contains("5 entries") && many.contains("--max-scope-entries"), "{many}");
        let long: BTreeMap<_, _> = [("k".to_string(), "v".repeat(MAX_MAP_VALUE_BYTES + 1))].into();
        assert!(reason(map("metadata", &long, Limits::default().metadata())).contains("--max-map-value-bytes"));
        assert_eq!(entry_id("42").unwrap(), 42);
        assert!(reason(entry_id("abc")).contains("decimal"));
        assert!(entry_id("-1").is_err());
    }

    #[test]
    fn incomplete_responses_need_the_operator() {
        let meta = |k: &str, v: &str| -> BTreeMap<String, String> { [(k.to_string(), v.to_string())].into() };
        assert!(incomplete(&meta("source", "gpt"), false).is_ok());
        assert!(incomplete(&meta("semcachex", "1"), false).is_ok());
        let refused = incomplete(&meta(INCOMPLETE_KEY, "truncated"), false).unwrap_err();
        assert!(refused.refused_by_config && refused.to_string().contains("--cache-incomplete"), "{refused}");
        assert!(incomplete(&meta(INCOMPLETE_KEY, "error"), true).is_ok());
        assert!(reason(incomplete(&meta(INCOMPLETE_KEY, "maybe"), true)).contains("truncated, error"));
        assert!(reason(incomplete(&meta("semcache.other", "x"), true)).contains("reserved"));
    }
}
