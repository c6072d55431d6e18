//! Request validation. Every refusal names the field, the rule and the value's size, so the
//! person reading the status can fix the call.

use super::CacheError;
use std::collections::BTreeMap;

pub const MAX_NAMESPACE_LEN: usize = 128;
pub const MAX_SCOPE_ENTRIES: usize = 32;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_MAP_KEY_BYTES: usize = 256;
/// Scope values may hold a whole system prompt.
pub const MAX_MAP_VALUE_BYTES: usize = 64 * 1024;

/// Size limits that the operator can change.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_query_bytes: usize,
    pub max_response_bytes: usize,
}

fn invalid(field: &'static str, reason: String) -> CacheError {
    CacheError::InvalidArgument { field, reason }
}

pub fn namespace(name: &str) -> Result<(), CacheError> {
    if name.is_empty() {
        return Err(invalid("namespace", "is required".into()));
    }
    if name.len() > MAX_NAMESPACE_LEN {
        return Err(invalid(
            "namespace",
            format!("is {} characters; at most {MAX_NAMESPACE_LEN} are allowed", name.len()),
        ));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(invalid("namespace", format!("contains {c:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")));
    }
    Ok(())
}

pub fn text(field: &'static str, value: &str, max_bytes: usize) -> Result<(), CacheError> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is empty (or only whitespace)".into()));
    }
    if value.len() > max_bytes {
        return Err(invalid(field, format!("is {} bytes; at most {max_bytes} are allowed", value.len())));
    }
    Ok(())
}

pub fn threshold(field: &'static str, value: f32) -> Result<(), CacheError> {
    if value.is_nan() || value <= 0.0 || value > 1.0 {
        return Err(invalid(field, format!("is {value}; it must be a number in (0, 1]")));
    }
    Ok(())
}

/// A namespace's threshold floor: 0 (none) up to 1.
pub fn floor(value: f32) -> Result<(), CacheError> {
    if value.is_nan() || !(0.0..=1.0).contains(&value) {
        return Err(invalid("threshold_floor", format!("is {value}; it must be a number in [0, 1] (0 = no floor)")));
    }
    Ok(())
}

pub fn map(field: &'static str, map: &BTreeMap<String, String>, max_entries: usize) -> Result<(), CacheError> {
    if map.len() > max_entries {
        return Err(invalid(field, format!("has {} entries; at most {max_entries} are allowed", map.len())));
    }
    for (k, v) in map {
        if k.is_empty() {
            return Err(invalid(field, "has an empty key".into()));
        }
        if k.len() > MAX_MAP_KEY_BYTES {
            return Err(invalid(
                field,
                format!(
                    "key {:?}... is {} bytes; at most {MAX_MAP_KEY_BYTES} are allowed",
                    &k[..k.floor_char_boundary(32)],
                    k.len()
                ),
            ));
        }
        if v.len() > MAX_MAP_VALUE_BYTES {
            return Err(invalid(
                field,
                format!("value of {k:?} is {} bytes; at most {MAX_MAP_VALUE_BYTES} are allowed", v.len()),
            ));
        }
    }
    Ok(())
}

pub fn entry_id(id: &str) -> Result<u64, CacheError> {
    id.parse::<u64>().map_err(|_| {
        invalid("id", format!("{:?} is not an entry id; ids are the decimal numbers that Store returns", truncate(id)))
    })
}

fn truncate(s: &str) -> &str {
    &s[..s.floor_char_boundary(64)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<impl std::fmt::Debug, CacheError>) -> String {
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
        assert!(reason(text("query", " \n\t", 10)).contains("empty"));
        assert!(reason(text("query", "abcdefghijk", 10)).contains("11 bytes"));
        assert!(text("query", "ok", 10).is_ok());
        for bad in [0.0, -0.1, 1.0001, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(threshold("similarity_threshold", bad).is_err(), "{bad}");
        }
        for good in [1e-6, 0.5, 1.0] {
            assert!(threshold("similarity_threshold", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn maps_and_ids() {
        let mut m = BTreeMap::new();
        m.insert(String::new(), "x".to_string());
        assert!(reason(map("scope", &m, 4)).contains("empty key"));
        let big: BTreeMap<_, _> = (0..5).map(|i| (i.to_string(), String::new())).collect();
        assert!(reason(map("scope", &big, 4)).contains("5 entries"));
        let long: BTreeMap<_, _> = [("k".to_string(), "v".repeat(MAX_MAP_VALUE_BYTES + 1))].into();
        assert!(reason(map("metadata", &long, 4)).contains("bytes"));
        assert_eq!(entry_id("42").unwrap(), 42);
        assert!(reason(entry_id("abc")).contains("decimal"));
        assert!(entry_id("-1").is_err());
    }
}
