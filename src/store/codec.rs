//! Records as they are kept in RocksDB. Encoded with prost so that fields can be added
//! later without a migration: an older record simply decodes with the new field unset.

use std::collections::BTreeMap;

/// One cached entry, including its embedding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub query: String,
    #[prost(string, tag = "4")]
    pub response: String,
    #[prost(btree_map = "string, string", tag = "5")]
    pub scope: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "6")]
    pub metadata: BTreeMap<String, String>,
    #[prost(int64, tag = "7")]
    pub created_at_unix_ms: i64,
    /// 0 = never expires.
    #[prost(int64, tag = "8")]
    pub expires_at_unix_ms: i64,
    // Tag 9 (hit count) moved to `CatalogRecord`, which is small enough to rewrite on a flush.
    /// Unit-length embedding of `query`.
    #[prost(float, repeated, tag = "10")]
    pub vector: Vec<f32>,
    #[prost(uint64, tag = "11")]
    pub input_tokens: u64,
    #[prost(uint64, tag = "12")]
    pub output_tokens: u64,
    #[prost(double, tag = "13")]
    pub cost_usd: f64,
}

impl EntryRecord {
    pub fn is_live(&self, now_unix_ms: i64) -> bool {
        self.expires_at_unix_ms == 0 || self.expires_at_unix_ms > now_unix_ms
    }
}

/// What the cache keeps in memory about an entry, stored apart from the entry itself (same
/// key, own column family) so that start-up reads a few dozen bytes per entry rather than its
/// text and vector, and so that recency and hit counts can be flushed without rewriting it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CatalogRecord {
    /// `keys::scope_id` of the entry's scope: which index partition it belongs to.
    #[prost(bytes = "vec", tag = "1")]
    pub scope_id: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub created_at_unix_ms: i64,
    /// 0 = never expires.
    #[prost(int64, tag = "3")]
    pub expires_at_unix_ms: i64,
    /// Last hit (or the Store), persisted lazily: after a crash recency is approximate.
    #[prost(int64, tag = "4")]
    pub last_used_unix_ms: i64,
    #[prost(uint64, tag = "5")]
    pub hit_count: u64,
    /// Stored size of the entry, counted against `--max-bytes`.
    #[prost(uint64, tag = "6")]
    pub size_bytes: u64,
    /// Identity of the entry's answer (`keys::answer_id` of its normalised response, or the
    /// answer of the entry a probe judged it equal to): verified mode counts near neighbours
    /// that agree. 0 = unknown (entries stored before verified mode).
    #[prost(fixed64, tag = "7")]
    pub answer: u64,
}

/// What verified mode learned about one entry: the `evidence` column family, under the
/// entry's key, written in the batch that taught it and deleted with the entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EvidenceRecord {
    #[prost(message, repeated, tag = "1")]
    pub observations: Vec<ObservationRecord>,
    /// `keys::query_id` of queries this entry must never answer.
    #[prost(fixed64, repeated, tag = "2")]
    pub refused_queries: Vec<u64>,
}

/// One judged lookup: the features it was decided on and whether the answer was right.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ObservationRecord {
    #[prost(float, tag = "1")]
    pub similarity: f32,
    #[prost(float, tag = "2")]
    pub margin: f32,
    #[prost(uint32, tag = "3")]
    pub agreeing: u32,
    #[prost(bool, tag = "4")]
    pub correct: bool,
    /// 1 = a probe token, 2 = Feedback.
    #[prost(uint32, tag = "5")]
    pub source: u32,
    /// For an audit (a would-be hit explored to check the model): the P(wrong) the model gave
    /// it; 0 otherwise.
    #[prost(float, tag = "6")]
    pub audit_p_wrong: f32,
}

/// A namespace's settings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceRecord {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub similarity_threshold: f32,
    #[prost(uint64, tag = "3")]
    pub ttl_seconds: u64,
    #[prost(uint64, tag = "4")]
    pub max_entries: u64,
    /// Fingerprint of the model its vectors were made with.
    #[prost(string, tag = "5")]
    pub embedding_model: String,
    #[prost(int64, tag = "6")]
    pub created_at_unix_ms: i64,
    /// Per-request thresholds are raised to at least this (0 = no floor).
    #[prost(float, tag = "7")]
    pub threshold_floor: f32,
    /// Hit guards; unset (namespaces made before guards existed) means the server default.
    #[prost(bool, optional, tag = "8")]
    pub hit_guards: Option<bool>,
    /// Verified mode's bound on wrong answers per lookup; 0 = the static threshold.
    #[prost(float, tag = "9")]
    pub error_bound: f32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn entry_round_trips_with_vector_and_maps() {
        let rec = EntryRecord {
            id: 42,
            namespace: "support".into(),
            query: "q".into(),
            response: "r".into(),
            scope: [("model".to_string(), "gpt".to_string())].into(),
            metadata: [("k".to_string(), "v".to_string())].into(),
            created_at_unix_ms: 1,
            expires_at_unix_ms: 2,
            vector: vec![0.5, -0.25, 1.0],
            input_tokens: 10,
            output_tokens: 20,
            cost_usd: 0.01,
        };
        let bytes = rec.encode_to_vec();
        assert_eq!(EntryRecord::decode(bytes.as_slice()).unwrap(), rec);
    }

    #[test]
    fn liveness_respects_zero_as_never() {
        let mut rec = EntryRecord::default();
        assert!(rec.is_live(i64::MAX));
        rec.expires_at_unix_ms = 100;
        assert!(rec.is_live(99));
        assert!(!rec.is_live(100));
    }
}
