//! The policy with a stand-in model and a clock that moves only when told: expiry, eviction,
//! floors, scopes and the exact path, deterministically and without sleeps. (The integration
//! tests run the same rules with the real model over gRPC.)

use super::*;
use crate::clock::ManualClock;
use crate::embed::{EmbedError, ModelInfo};
use crate::index::IndexParams;
use std::sync::atomic::{AtomicUsize, Ordering};

const DIM: usize = 64;

/// Bag-of-words vectors: texts that share most words are close, as paraphrases are for the
/// real model. A text containing `WRONG-DIM` gets a vector of the wrong size, as a broken
/// model might.
struct Words {
    info: ModelInfo,
    calls: AtomicUsize,
}

impl Words {
    fn new() -> Arc<Self> {
        let info =
            ModelInfo { name: "words".into(), dim: DIM, fingerprint: format!("words/{DIM}/test"), max_seq_length: 256 };
        Arc::new(Self { info, calls: AtomicUsize::new(0) })
    }
}

#[async_trait::async_trait]
impl Embed for Words {
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn is_ready(&self) -> bool {
        true
    }
    fn queue_depth(&self) -> usize {
        0
    }
    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut v = vec![0f32; if text.contains("WRONG-DIM") { DIM + 1 } else { DIM }];
        for word in normalize(text).split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            let h = word.bytes().fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            v[(h % DIM as u64) as usize] += 1.0;
        }
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
        Ok(v.into_iter().map(|x| x / n).collect())
    }
}

struct Fixture {
    cache: Arc<Cache>,
    clock: Arc<ManualClock>,
    model: Arc<Words>,
    _dir: tempfile::TempDir,
}

fn fixture_with(defaults: Defaults) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let model = Words::new();
    let settings = Settings { index: IndexParams::default(), defaults, limits: Limits::default() };
    let cache = Cache::open(store, model.clone(), settings, clock.clone()).unwrap();
    Fixture { cache: Arc::new(cache), clock, model, _dir: dir }
}

fn fixture() -> Fixture {
    // Threshold low enough for bag-of-words paraphrases; guards off, they are tested apart.
    fixture_with(Defaults { similarity_threshold: 0.7, hit_guards: false, ..Defaults::default() })
}

fn store_req(ns: &str, query: &str, response: &str) -> StoreRequest {
    StoreRequest { namespace: ns.into(), query: query.into(), response: response.into(), ..Default::default() }
}

fn lookup_req(ns: &str, query: &str) -> LookupRequest {
    LookupRequest { namespace: ns.into(), query: query.into(), ..Default::default() }
}

impl Fixture {
    async fn store(&self, req: StoreRequest) -> u64 {
        self.cache.store(req).await.unwrap().id
    }

    async fn lookup(&self, ns: &str, query: &str) -> LookupOutcome {
        self.cache.lookup(lookup_req(ns, query)).await.unwrap()
    }

    async fn served(&self, ns: &str, query: &str) -> Option<String> {
        self.lookup(ns, query).await.entry.map(|e| e.response)
    }
}

#[tokio::test]
async fn an_exact_repeat_is_answered_without_the_model() {
    let f = fixture();
    f.store(store_req("ns", "How do I reset my password?", "Settings")).await;
    let calls = f.model.calls.load(Ordering::SeqCst);
    let r = f.lookup("ns", "  how do I RESET my password? ").await;
    assert!(r.exact && r.hit() && r.similarity == 1.0);
    assert_eq!(r.entry.as_ref().unwrap().hit_count, 1);
    assert_eq!(f.model.calls.load(Ordering::SeqCst), calls, "no forward pass");
    let r = f.lookup("ns", "how do i reset my password please").await;
    assert!(r.hit() && !r.exact, "a paraphrase goes through the model");
    assert_eq!(r.entry.unwrap().hit_count, 2);
    let stats = f.cache.stats("ns").unwrap();
    assert_eq!((stats.lookups, stats.hits, stats.exact_hits, stats.stores), (2, 2, 1, 1));
}

#[tokio::test]
async fn an_expired_entry_is_never_served_even_before_the_sweep() {
    let f = fixture();
    let mut short = store_req("ns", "what is the refund window", "30 days");
    short.ttl_seconds = Some(10);
    let short_id = f.store(short).await;
    let mut forever = store_req("ns", "do you ship abroad", "yes");
    forever.ttl_seconds = Some(0);
    f.store(forever).await;

    f.clock.advance_ms(9_999);
    assert_eq!(f.served("ns", "what is the refund window").await.as_deref(), Some("30 days"));
    f.clock.advance_ms(1);
    // No sweep has run: only the read path can refuse it, on both paths.
    assert_eq!(f.served("ns", "what is the refund window").await, None, "exact path");
    let r = f.lookup("ns", "what is the refund window today").await;
    assert!(!r.hit() && r.nearest_id != Some(short_id), "semantic path: {r:?}");
    assert_eq!(f.cache.stats("ns").unwrap().entries, 2, "still stored until the sweep");
    assert_eq!(f.served("ns", "do you ship abroad").await.as_deref(), Some("yes"));

    assert_eq!(f.cache.sweep_expired(100).unwrap(), 1);
    let stats = f.cache.stats("ns").unwrap();
    assert_eq!((stats.entries, stats.expirations), (1, 1));
    assert_eq!(f.cache.sweep_expired(100).unwrap(), 0);
}

#[tokio::test]
async fn the_namespace_ttl_applies_and_a_hit_does_not_extend_it() {
    let f = fixture();
    let update = NamespaceUpdate { name: "ns".into(), ttl_seconds: Some(5), ..Default::default() };
    f.cache.configure_namespace(update).await.unwrap();
    let id = f.store(store_req("ns", "where is my order", "tracking page")).await;
    f.clock.advance_ms(4_000);
    let e = f.lookup("ns", "where is my order").await.entry.unwrap();
    assert_eq!((e.id, e.expires_at_unix_ms - e.created_at_unix_ms), (id, 5_000));
    f.clock.advance_ms(1_000);
    assert_eq!(f.served("ns", "where is my order").await, None);
}

#[tokio::test]
async fn the_least_recently_used_entry_goes_at_max_entries() {
    let f = fixture();
    let update = NamespaceUpdate { name: "lru".into(), max_entries: Some(3), ..Default::default() };
    f.cache.configure_namespace(update).await.unwrap();
    let qs = ["capital of france", "how to bake bread", "will it rain", "who wrote hamlet"];
    for q in &qs[..3] {
        f.store(store_req("lru", q, q)).await;
        f.clock.advance_ms(1);
    }
    assert!(f.lookup("lru", qs[0]).await.hit(), "the oldest becomes the most recent");
    f.store(store_req("lru", qs[3], qs[3])).await;
    assert_eq!(f.served("lru", qs[1]).await, None, "the least recently used went");
    for q in [qs[0], qs[2], qs[3]] {
        assert!(f.lookup("lru", q).await.hit(), "{q}");
    }
    let stats = f.cache.stats("lru").unwrap();
    assert_eq!((stats.entries, stats.evictions), (3, 1));
    // Lowering the limit evicts at once, oldest use first.
    let update = NamespaceUpdate { name: "lru".into(), max_entries: Some(1), ..Default::default() };
    f.cache.configure_namespace(update).await.unwrap();
    assert_eq!(f.cache.stats("lru").unwrap().entries, 1);
    assert!(f.lookup("lru", qs[3]).await.hit(), "the most recently used stays");
}

#[tokio::test]
async fn the_floor_bounds_thresholds_from_both_sides() {
    let f = fixture();
    let set = |t: Option<f32>, floor: Option<f32>| NamespaceUpdate {
        name: "ns".into(),
        similarity_threshold: t,
        threshold_floor: floor,
        ..Default::default()
    };
    f.cache.configure_namespace(set(Some(0.8), Some(0.75))).await.unwrap();
    let e = f.cache.configure_namespace(set(None, Some(0.9))).await.unwrap_err();
    assert!(matches!(&e, CacheError::InvalidArgument(v) if v.field == "threshold_floor"), "{e}");
    let e = f.cache.configure_namespace(set(Some(0.7), None)).await.unwrap_err();
    assert!(matches!(&e, CacheError::InvalidArgument(v) if v.field == "similarity_threshold"), "{e}");
    assert_eq!(f.cache.get_namespace("ns").unwrap().settings.similarity_threshold, 0.8, "refusals change nothing");

    f.store(store_req("ns", "how do I reset my password", "settings")).await;
    let mut lax = lookup_req("ns", "reset password");
    lax.similarity_threshold = Some(0.1);
    assert_eq!(f.cache.lookup(lax).await.unwrap().threshold, 0.75, "raised to the floor");
    let mut strict = lookup_req("ns", "reset password");
    strict.similarity_threshold = Some(0.95);
    assert_eq!(f.cache.lookup(strict).await.unwrap().threshold, 0.95, "a stricter one is kept");
}

#[tokio::test]
async fn nothing_crosses_a_scope_or_a_context() {
    let f = fixture();
    let mut acme = store_req("ns", "what are your opening hours", "9 to 5");
    acme.scope = [("tenant".to_string(), "acme".to_string())].into();
    f.store(acme.clone()).await;
    assert_eq!(f.served("ns", "what are your opening hours").await, None, "no scope is another scope");
    let mut other = lookup_req("ns", "what are your opening hours");
    other.scope = [("tenant".to_string(), "globex".to_string())].into();
    assert!(!f.cache.lookup(other).await.unwrap().hit());
    let mut same = lookup_req("ns", "what are your opening hours");
    same.scope = acme.scope.clone();
    same.context_key = "conversation-1".into();
    assert!(!f.cache.lookup(same.clone()).await.unwrap().hit(), "a context is a partition of its own");
    same.context_key.clear();
    let r = f.cache.lookup(same).await.unwrap();
    assert!(r.exact && r.entry.as_ref().unwrap().scope == acme.scope);
    assert!(!f.lookup("other", "what are your opening hours").await.hit(), "nor a namespace");
}

#[tokio::test]
async fn a_generic_follow_up_needs_its_context() {
    let f = fixture();
    f.store(store_req("ns", "tell me more", "more")).await;
    assert_eq!(f.lookup("ns", "tell me more").await.miss_reason, MissReason::NeedsContext);
}

#[tokio::test]
async fn a_panic_under_the_locks_is_an_internal_error_and_the_cache_goes_on() {
    let f = fixture();
    f.store(store_req("ns", "a fine question", "fine")).await;
    // What a bug below the cache does: panic on the blocking pool while holding the locks a
    // Store holds.
    let e = f
        .cache
        .blocking("Store", |c| -> Result<(), CacheError> {
            let _deleting = c.deleting.read();
            let _stripes = c.lock_stripes(c.stripes.iter().map(|_| &[0u8; 32]).take(1));
            let _configure = c.configure.lock();
            panic!("a bug below the cache");
        })
        .await
        .unwrap_err();
    assert!(matches!(&e, CacheError::Internal(m) if m.contains("Store")), "{e}");
    f.store(store_req("ns", "another fine question", "also fine")).await;
    assert_eq!(f.served("ns", "a fine question").await.as_deref(), Some("fine"));
    f.cache.configure_namespace(NamespaceUpdate { name: "ns".into(), ..Default::default() }).await.unwrap();
    assert_eq!(f.cache.delete("ns".into(), DeleteTarget::All).await.unwrap(), 2);
}

#[tokio::test]
async fn a_model_answer_of_the_wrong_size_is_refused_before_anything_is_written() {
    let f = fixture();
    let e = f.cache.store(store_req("ns", "WRONG-DIM question", "x")).await.unwrap_err();
    assert!(matches!(e, CacheError::Embed(_)), "{e}");
    assert!(f.cache.get_namespace("ns").is_err(), "not even the namespace");
    f.store(store_req("ns2", "a fine question", "fine")).await;
    let e = f.cache.lookup(lookup_req("ns2", "WRONG-DIM question")).await.unwrap_err();
    assert!(matches!(e, CacheError::Embed(_)), "{e}");
}

#[tokio::test]
async fn export_and_delete_see_the_same_live_entries() {
    let f = fixture();
    let mut short = store_req("ns", "short lived", "a");
    short.ttl_seconds = Some(1);
    f.store(short).await;
    f.store(store_req("ns", "kept forever", "b")).await;
    f.clock.advance_ms(1_000);
    let mut exported = Vec::new();
    f.cache
        .export("ns", |e| {
            exported.push(e.response);
            true
        })
        .unwrap();
    assert_eq!(exported, ["b"], "an expired entry is not exported");
    let e = f.cache.delete("nowhere".into(), DeleteTarget::All).await.unwrap_err();
    assert!(matches!(e, CacheError::NamespaceNotFound(_)));
    let e = f.cache.delete("ns".into(), DeleteTarget::Id("abc".into())).await.unwrap_err();
    assert!(matches!(e, CacheError::InvalidArgument(_)));
    assert_eq!(f.cache.drop_namespace("ns".into()).await.unwrap(), 2);
    assert!(f.cache.get_namespace("ns").is_err());
}

async fn make_verified(f: &Fixture, ns: &str, delta: f32) {
    let update = NamespaceUpdate { name: ns.into(), error_bound: Some(delta), ..Default::default() };
    f.cache.configure_namespace(update).await.unwrap();
}

/// Stores with the token of an EXPLORE, as a gateway does after calling its LLM.
async fn store_probed(f: &Fixture, ns: &str, query: &str, response: &str, token: &str) -> Result<Stored, CacheError> {
    let req = StoreRequest { probe_token: token.into(), ..store_req(ns, query, response) };
    f.cache.store(req).await
}

#[tokio::test]
async fn an_explore_is_judged_once_by_its_store_and_nothing_else_teaches() {
    let f = fixture();
    make_verified(&f, "v", 0.01).await;
    f.store(store_req("v", "how do i reset my password", "Settings > Security")).await;
    let r = f.lookup("v", "how do i reset my password now").await;
    assert_eq!(r.miss_reason, MissReason::Explore, "a new namespace trusts nothing yet: {r:?}");
    let token = r.probe_token.clone().expect("an EXPLORE carries a token");

    // Misdirected tokens teach nothing and are refused precisely.
    let e = store_probed(&f, "other", "how do i reset my password now", "x", &token).await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::OtherNamespace)), "{e}");
    let e = store_probed(&f, "v", "something else entirely", "x", &token).await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::OtherQuery)), "{e}");
    let e = store_probed(&f, "v", "how do i reset my password now", "x", "bm90IGEgdG9rZW4").await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::Forged)), "{e}");
    assert_eq!(f.cache.stats("v").unwrap().probes_correct + f.cache.stats("v").unwrap().probes_wrong, 0);

    // The fresh answer equals the cached one after normalisation: right.
    let stored =
        store_probed(&f, "v", "how do i reset my password now", " settings > security. ", &token).await.unwrap();
    assert_eq!(stored.probe_correct, Some(true));
    let e = store_probed(&f, "v", "how do i reset my password now", "again", &token).await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::Used)), "{e}");
    let stats = f.cache.stats("v").unwrap();
    assert_eq!((stats.explores, stats.probes_correct, stats.probes_wrong), (1, 1, 0));

    // A token outlives nothing: past its lifetime it is refused, and teaches nothing.
    let r = f.lookup("v", "how do i reset my password today").await;
    let token = r.probe_token.expect("still exploring");
    f.clock.advance_ms(DEFAULT_PROBE_TTL_SECONDS as i64 * 1000);
    let e = store_probed(&f, "v", "how do i reset my password today", "x", &token).await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::Expired { .. })), "{e}");
    assert_eq!(f.cache.stats("v").unwrap().probes_correct, 1);
    let e = f.cache.store(StoreRequest { probe_verdict: Some(true), ..store_req("v", "q", "r") }).await.unwrap_err();
    assert!(matches!(e, CacheError::InvalidArgument(_)), "a verdict without a token: {e}");
}

/// Four intents, each asked many ways; the gateway's "LLM" answers with the intent.
fn intent_stream() -> Vec<(String, &'static str)> {
    let intents = [
        (
            "reset password",
            ["how do i reset my password", "i forgot my password", "password reset help", "change my password please"],
        ),
        ("track order", ["where is my order", "track my order", "order status please", "has my order shipped"]),
        (
            "refund",
            ["how do i get a refund", "i want my money back", "refund my purchase", "can i return this for a refund"],
        ),
        (
            "delete account",
            ["delete my account", "close my account", "how do i remove my account", "cancel my account forever"],
        ),
    ];
    let tails = ["", " now", " today", " please", " quickly", " thanks", " asap", " again"];
    let mut out = Vec::new();
    for tail in tails {
        for (answer, asks) in &intents {
            for ask in asks {
                out.push((format!("{ask}{tail}"), *answer));
            }
        }
    }
    out
}

#[tokio::test]
async fn verified_mode_learns_to_serve_and_stays_within_its_bound() {
    let f = fixture();
    make_verified(&f, "v", 0.05).await;
    let stream = intent_stream();
    let (mut hits, mut wrong, mut explores, mut late_hits) = (0, 0, 0, 0);
    for (i, (query, answer)) in stream.iter().enumerate() {
        let r = f.lookup("v", query).await;
        if let Some(entry) = &r.entry {
            hits += 1;
            wrong += usize::from(entry.response != *answer);
            late_hits += usize::from(i >= stream.len() / 2);
            continue;
        }
        explores += usize::from(r.miss_reason == MissReason::Explore);
        let req = StoreRequest { probe_token: r.probe_token.unwrap_or_default(), ..store_req("v", query, answer) };
        f.cache.store(req).await.unwrap();
    }
    let n = stream.len();
    assert!(explores > 0 && late_hits > 0, "it explored ({explores}) and then served ({late_hits} late hits)");
    assert!(wrong as f64 <= 0.05 * n as f64, "{wrong} wrong of {n} lookups ({hits} hits)");
    let stats = f.cache.stats("v").unwrap();
    assert!(stats.probes_correct > 0 && stats.estimated_error_rate <= 0.05, "{stats:?}");
}

#[tokio::test]
async fn a_hit_reported_wrong_is_never_served_for_that_query_again() {
    let f = fixture();
    let id = f.store(store_req("ns", "how do i reset my password", "Settings")).await;
    let query = "how do i reset my password twice";
    assert!(f.lookup("ns", query).await.hit());
    let feedback = |query: &str, correct| FeedbackRequest {
        namespace: "ns".into(),
        entry_id: id.to_string(),
        query: query.into(),
        correct,
    };
    let out = f.cache.feedback(feedback(query, false)).await.unwrap();
    assert_eq!(out, FeedbackOutcome { observations: 1, deleted: false });
    assert!(!f.lookup("ns", query).await.hit(), "refused for that query");
    assert!(!f.lookup("ns", "  HOW do i reset my password twice ").await.hit(), "in any spelling");
    assert!(f.lookup("ns", "how do i reset my password again").await.hit(), "other queries still hit");
    let out = f.cache.feedback(feedback("how do i reset my password again", true)).await.unwrap();
    assert_eq!(out.observations, 2);
    let stats = f.cache.stats("ns").unwrap();
    assert_eq!((stats.feedback_correct, stats.feedback_wrong), (1, 1));

    let e = f.cache.feedback(FeedbackRequest { entry_id: "999".into(), ..feedback(query, true) }).await.unwrap_err();
    assert!(matches!(e, CacheError::EntryNotFound { .. }), "{e}");
    let e = f.cache.feedback(FeedbackRequest { namespace: "none".into(), ..feedback(query, true) }).await.unwrap_err();
    assert!(matches!(e, CacheError::NamespaceNotFound(_)), "{e}");
    // Wrong for its own question: no query should get it, so it goes.
    let out = f.cache.feedback(feedback("How do I reset my password", false)).await.unwrap();
    assert!(out.deleted);
    assert!(f.cache.get_namespace("ns").unwrap().entries == 0);
}

#[tokio::test]
async fn what_was_learned_survives_a_restart_and_goes_with_its_entry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let open = || {
        let settings =
            Settings { index: IndexParams::default(), defaults: Defaults::default(), limits: Limits::default() };
        // The blocking pool may still hold the last operation's clone of a dropped cache for a
        // moment, and with it RocksDB's lock.
        let store = (0..200)
            .find_map(|_| match Store::open(dir.path()) {
                Ok(store) => Some(store),
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                }
            })
            .expect("the data dir is released");
        Arc::new(Cache::open(store, Words::new(), settings, clock.clone()).unwrap())
    };
    let evidence_of = |cache: &Cache| {
        let mut all = Vec::new();
        cache
            .export("v", |e| {
                all.push((e.query, e.evidence));
                true
            })
            .unwrap();
        all
    };
    let (before, token) = {
        let cache = open();
        let update = NamespaceUpdate { name: "v".into(), error_bound: Some(0.01), ..Default::default() };
        cache.configure_namespace(update).await.unwrap();
        cache.store(store_req("v", "where is my order", "tracking")).await.unwrap();
        let r = cache.lookup(lookup_req("v", "where is my order now")).await.unwrap();
        let token = r.probe_token.unwrap();
        let probed =
            StoreRequest { probe_token: token.clone(), ..store_req("v", "where is my order now", "elsewhere") };
        assert_eq!(cache.store(probed).await.unwrap().probe_correct, Some(false));
        (evidence_of(&cache), token)
    };
    assert_eq!(before[0].1.observations.len(), 1, "{before:?}");
    assert!(!before[0].1.observations[0].correct);
    let cache = open();
    assert_eq!(evidence_of(&cache), before, "evidence is back after a restart");
    let again = StoreRequest { probe_token: token, ..store_req("v", "where is my order now", "elsewhere") };
    let e = cache.store(again).await.unwrap_err();
    assert!(matches!(e, CacheError::Probe(probe::ProbeError::Used)), "a used token stays used: {e}");
    // Imported evidence comes back as exported.
    let imported = StoreRequest { evidence: before[0].1.clone(), ..store_req("w", "where is my order", "tracking") };
    cache.store(imported).await.unwrap();
    let mut got = Vec::new();
    cache
        .export("w", |e| {
            got.push(e.evidence);
            true
        })
        .unwrap();
    assert_eq!(got, [before[0].1.clone()]);
    cache.delete("v".into(), DeleteTarget::All).await.unwrap();
    drop(cache);
    let cache = open();
    assert!(evidence_of(&cache).is_empty(), "deleted with its entry");
}
