//! The cache's own vocabulary: what callers ask and what they get back. Distinct from the
//! storage records (`store::codec`), which hold the vector and the context key inside the
//! scope, and from the wire messages, which the gRPC edge converts to and from these.

use super::context;
use crate::store::{EntryRecord, NamespaceRecord};

pub use super::learner::{Features, Source};
use std::collections::BTreeMap;

pub use super::guard::Veto;

/// A cached answer as callers see it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub id: u64,
    pub namespace: String,
    pub query: String,
    pub response: String,
    /// The caller's scope, without the conversation context.
    pub scope: BTreeMap<String, String>,
    /// The conversation it was stored under ("" = none).
    pub context_key: String,
    pub metadata: BTreeMap<String, String>,
    pub created_at_unix_ms: i64,
    /// 0 = never.
    pub expires_at_unix_ms: i64,
    /// What the call that produced it cost.
    pub usage: Usage,
    /// Hits so far (the one being answered included).
    pub hit_count: u64,
    /// What verified mode learned about it (filled by Export).
    pub evidence: Evidence,
}

/// What the cache learned about one entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    pub observations: Vec<Observation>,
    /// `store::keys::query_id` of the normalised queries it must never answer.
    pub refused_queries: Vec<u64>,
}

impl Evidence {
    pub fn is_empty(&self) -> bool {
        self.observations.is_empty() && self.refused_queries.is_empty()
    }
}

/// One judged lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub features: Features,
    pub correct: bool,
    pub source: Source,
    /// An audit's P(wrong) as the model gave it (0: not an audit).
    pub audit_p_wrong: f32,
}

impl Entry {
    pub(super) fn from_record(record: EntryRecord, hit_count: u64) -> Self {
        let (scope, context_key) = context::split(record.scope);
        Self {
            id: record.id,
            namespace: record.namespace,
            query: record.query,
            response: record.response,
            scope,
            context_key,
            metadata: record.metadata,
            created_at_unix_ms: record.created_at_unix_ms,
            expires_at_unix_ms: record.expires_at_unix_ms,
            usage: Usage {
                input_tokens: record.input_tokens,
                output_tokens: record.output_tokens,
                cost_usd: record.cost_usd,
            },
            hit_count,
            evidence: Evidence::default(),
        }
    }
}

/// Settings given to namespaces that are created implicitly or without a value, and the
/// global capacity.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub similarity_threshold: f32,
    pub ttl_seconds: u64,
    /// Bytes the whole data set may hold (0 = unbounded); beyond, the least recently used
    /// entries of any namespace are evicted.
    pub max_bytes: u64,
    /// Whether namespaces that never chose have hit guards on.
    pub hit_guards: bool,
    /// How long a probe token of verified mode stays valid.
    pub probe_ttl_seconds: u64,
}

/// A probe token's default lifetime: longer than any LLM call a gateway waits for.
pub const DEFAULT_PROBE_TTL_SECONDS: u64 = 600;

impl Default for Defaults {
    fn default() -> Self {
        Self {
            similarity_threshold: super::DEFAULT_THRESHOLD,
            ttl_seconds: 0,
            max_bytes: 0,
            hit_guards: true,
            probe_ttl_seconds: DEFAULT_PROBE_TTL_SECONDS,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LookupRequest {
    pub namespace: String,
    pub query: String,
    pub scope: BTreeMap<String, String>,
    pub similarity_threshold: Option<f32>,
    /// Earlier turns of the conversation, or the caller's own `context_key` (not both).
    pub context: Vec<String>,
    pub context_key: String,
}

/// Why a lookup missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissReason {
    /// A hit.
    #[default]
    None,
    /// Nothing live in this namespace, scope and context.
    Empty,
    BelowThreshold,
    /// The nearest entry cleared the threshold but a hit guard refused it.
    Vetoed,
    /// A generic follow-up ("why?") without a context to give it a meaning.
    NeedsContext,
    /// Verified mode: the nearest entry may be right, but not surely enough to serve; the
    /// outcome carries a probe token.
    Explore,
}

/// The nearest entry, which cleared the threshold and was refused by a guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardVeto {
    pub id: u64,
    pub similarity: f32,
    pub veto: Veto,
}

#[derive(Debug, Clone, Default)]
pub struct LookupOutcome {
    pub entry: Option<Entry>,
    /// Best live candidate's similarity, hit or miss (0 when there was none).
    pub similarity: f32,
    pub nearest_id: Option<u64>,
    /// The threshold this lookup used (the namespace's, or the request's raised to the floor).
    pub threshold: f32,
    /// Set when the nearest entry cleared the threshold and a hit guard refused it.
    pub veto: Option<GuardVeto>,
    pub miss_reason: MissReason,
    /// Whether the answer came from the exact-repeat path without running the model.
    pub exact: bool,
    /// Set iff `miss_reason` is `Explore`.
    pub probe_token: Option<String>,
    /// With a probe token: the entry that would have been served (not a hit).
    pub probe_entry: Option<Entry>,
}

impl LookupOutcome {
    pub fn hit(&self) -> bool {
        self.entry.is_some()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Default)]
pub struct StoreRequest {
    pub namespace: String,
    pub query: String,
    pub response: String,
    pub scope: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: Option<u64>,
    pub usage: Usage,
    pub context: Vec<String>,
    pub context_key: String,
    /// The token of the Lookup that answered EXPLORE for this query ("" = none).
    pub probe_token: String,
    /// The caller's judgement of the probed answer; `None`: compare the answers.
    pub probe_verdict: Option<bool>,
    /// What an exported entry had learned (imports).
    pub evidence: Evidence,
}

/// What a Store did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: u64,
    /// With a probe token: whether the probed answer was judged right (`None` when that entry
    /// has gone since).
    pub probe_correct: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct FeedbackRequest {
    pub namespace: String,
    pub entry_id: String,
    pub query: String,
    pub correct: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackOutcome {
    /// The entry's observations, this one included.
    pub observations: u32,
    /// Reported wrong for its own query (or for too many queries): the entry is gone.
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub enum DeleteTarget {
    Id(String),
    Scope(BTreeMap<String, String>),
    All,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceUpdate {
    pub name: String,
    pub similarity_threshold: Option<f32>,
    pub ttl_seconds: Option<u64>,
    pub max_entries: Option<u64>,
    pub threshold_floor: Option<f32>,
    pub hit_guards: Option<bool>,
    pub error_bound: Option<f32>,
}

#[derive(Debug, Clone)]
pub struct NamespaceView {
    pub settings: NamespaceRecord,
    pub entries: u64,
    /// Whether hit guards are on (its own choice, or the server default).
    pub hit_guards: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub lookups: u64,
    pub hits: u64,
    /// Hits answered by the exact-repeat path (included in `hits`).
    pub exact_hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub entries: u64,
    /// Stored size of the entries (texts, metadata, vector and per-entry overhead).
    pub bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// What the hits would have cost, from the `usage` each served entry was stored with.
    pub saved_input_tokens: u64,
    pub saved_output_tokens: u64,
    pub saved_cost_usd: f64,
    /// Verified mode: lookups answered EXPLORE, probes judged right and wrong, Feedback calls.
    pub explores: u64,
    pub probes_correct: u64,
    pub probes_wrong: u64,
    pub feedback_correct: u64,
    pub feedback_wrong: u64,
    /// The learned model's estimate of wrong hits per verified lookup since start.
    pub estimated_error_rate: f64,
}
