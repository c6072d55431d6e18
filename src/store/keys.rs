//! Key layouts of the column families.
//!
//! `entries`: `namespace 0x00 id(u64 big-endian)`. Namespace names never contain 0x00, so one
//! namespace's entries form one contiguous, id-ordered range: a namespace can be scanned or
//! dropped by prefix, and "entries written after id N" is a range scan.
//!
//! `exact`: sha256 over the namespace, the canonical scope and the normalised query. The value
//! is the entry key it points to.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub const SEP: u8 = 0x00;

pub fn entry_key(namespace: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 9);
    k.extend_from_slice(namespace.as_bytes());
    k.push(SEP);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Splits an entry key into its namespace and id; `None` if it is not one.
pub fn parse_entry_key(key: &[u8]) -> Option<(&str, u64)> {
    if key.len() < 9 || key[key.len() - 9] != SEP {
        return None;
    }
    let (ns, rest) = key.split_at(key.len() - 9);
    let id = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(ns).ok()?, id))
}

/// The prefix shared by every entry key of `namespace`.
pub fn namespace_prefix(namespace: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(namespace.len() + 1);
    k.extend_from_slice(namespace.as_bytes());
    k.push(SEP);
    k
}

/// Feeds a scope into a hasher unambiguously: every key and value is length-prefixed, in
/// key order, so `{a: "b,c"}` and `{a: "b", c: ""}` can never collide.
fn hash_scope(h: &mut Sha256, scope: &BTreeMap<String, String>) {
    h.update((scope.len() as u64).to_be_bytes());
    for (k, v) in scope {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
}

/// Identifies an exact scope map; equal maps (in any order on the wire) give equal ids.
pub fn scope_id(scope: &BTreeMap<String, String>) -> [u8; 16] {
    let mut h = Sha256::new();
    hash_scope(&mut h, scope);
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

pub fn exact_key(namespace: &str, scope: &BTreeMap<String, String>, normalized: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((namespace.len() as u64).to_be_bytes());
    h.update(namespace.as_bytes());
    hash_scope(&mut h, scope);
    h.update(normalized.as_bytes());
    h.finalize().into()
}

/// The first 8 bytes of a SHA-256, big-endian: stable across servers and releases, so it can
/// be exported.
fn short_hash(domain: &[u8], text: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(text.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 of 32 bytes"))
}

/// Identity of a normalised answer; never 0 (0 means unknown).
pub fn answer_id(normalized_response: &str) -> u64 {
    short_hash(b"answer\0", normalized_response).max(1)
}

/// Identity of a normalised query, for the queries an entry must never answer.
pub fn query_id(normalized_query: &str) -> u64 {
    short_hash(b"query\0", normalized_query)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn entry_keys_round_trip_and_sort_by_id_within_a_namespace() {
        let a = entry_key("ns", 1);
        let b = entry_key("ns", 256);
        assert!(a < b);
        assert_eq!(parse_entry_key(&b), Some(("ns", 256)));
        assert!(b.starts_with(&namespace_prefix("ns")));
        // A namespace that extends another's name is not inside its prefix.
        assert!(!entry_key("ns2", 1).starts_with(&namespace_prefix("ns")));
        assert_eq!(parse_entry_key(b"short"), None);
    }

    #[test]
    fn scope_ids_are_order_free_and_unambiguous() {
        let a = scope(&[("model", "x"), ("tenant", "t")]);
        let b = scope(&[("tenant", "t"), ("model", "x")]);
        assert_eq!(scope_id(&a), scope_id(&b));
        assert_ne!(scope_id(&scope(&[("a", "b,c")])), scope_id(&scope(&[("a", "b"), ("c", "")])));
        assert_ne!(scope_id(&BTreeMap::new()), scope_id(&scope(&[("", "")])));
    }

    #[test]
    fn exact_keys_separate_namespace_scope_and_text() {
        let s = BTreeMap::new();
        let base = exact_key("ns", &s, "hello");
        assert_eq!(base, exact_key("ns", &s, "hello"));
        assert_ne!(base, exact_key("ns2", &s, "hello"));
        assert_ne!(base, exact_key("ns", &scope(&[("m", "x")]), "hello"));
        assert_ne!(base, exact_key("ns", &s, "hello!"));
        assert_ne!(exact_key("ab", &s, "c"), exact_key("a", &s, "bc"));
    }
}
