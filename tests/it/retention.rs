//! How long entries live and what removes them: TTL and the sweeper, LRU eviction by
//! `max_entries` and `--max-bytes`, Delete and DropNamespace, and graph checkpoints across a
//! restart. Real server, real model, real RocksDB.

use crate::harness as common;

use common::*;
use semcache::config::ServeArgs;
use semcache::proto::delete_request::Target;
use semcache::proto::semantic_cache_client::SemanticCacheClient;
use semcache::proto::*;
use std::time::Duration;
use tonic::transport::Channel;

fn args(dir: &std::path::Path) -> ServeArgs {
    let mut args = ServeArgs::with_dirs(dir, model_dir());
    args.sweep_interval_ms = 50;
    args.warmup_rounds = 1;
    args
}

async fn stats(c: &mut SemanticCacheClient<Channel>, ns: &str) -> StatsResponse {
    c.stats(StatsRequest { namespace: ns.into() }).await.unwrap().into_inner()
}

async fn hits(c: &mut SemanticCacheClient<Channel>, ns: &str, query: &str) -> bool {
    lookup(c, lookup_req(ns, query)).await.hit
}

/// Waits until a namespace holds `n` entries (the sweeper runs in the background), failing
/// after 10 s.
async fn wait_for_entries(c: &SemanticCacheClient<Channel>, ns: &str, n: u64) {
    let mut c = c.clone();
    for _ in 0..200 {
        if stats(&mut c, ns).await.entries == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{ns} did not reach {n} entries within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_never_hit_and_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    // No sweep during the first part: whatever refuses the expired entry there is the read
    // path's own filter, and the entry counts show that it is still stored.
    a.sweep_interval_ms = 3_600_000;
    let server = TestServer::start_with(a).await;
    let mut c = server.client.clone();
    let mut short = store_req("ttl", "How do I reset my password?", "Settings > Security");
    short.ttl_seconds = Some(1);
    store(&mut c, short).await;
    let mut forever = store_req("ttl", "Where is my order?", "Tracking page");
    forever.ttl_seconds = Some(0);
    store(&mut c, forever).await;

    assert!(hits(&mut c, "ttl", "How do I reset my password?").await);
    let r = lookup(&mut c, lookup_req("ttl", "I forgot my password, how can I change it?")).await;
    let e = r.entry.expect("semantic hit while fresh");
    assert!(e.expires_at_unix_ms > e.created_at_unix_ms);
    assert_eq!(e.expires_at_unix_ms - e.created_at_unix_ms, 1000);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Expired, maybe not yet purged: neither the exact nor the semantic path serves it. The
    // hits above did not extend its life.
    assert!(!hits(&mut c, "ttl", "How do I reset my password?").await, "exact path after expiry");
    assert!(!hits(&mut c, "ttl", "I forgot my password, how can I change it?").await, "semantic path after expiry");
    assert!(hits(&mut c, "ttl", "Where is my order?").await, "ttl 0 never expires");

    let s = stats(&mut c, "ttl").await;
    assert_eq!((s.expirations, s.entries), (0, 2), "refused by the read path, not yet purged");
    server.stop().await;

    // With the sweeper running, the expired entry goes from the index and RocksDB.
    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    wait_for_entries(&c, "ttl", 1).await;
    let s = stats(&mut c, "ttl").await;
    assert_eq!((s.expirations, s.entries), (1, 1));
    let ns = c.get_namespace(GetNamespaceRequest { name: "ttl".into() }).await.unwrap().into_inner();
    assert_eq!(ns.entries, 1, "purged from RocksDB's catalog too");
    assert!(hits(&mut c, "ttl", "Where is my order?").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_ttl_applies_when_a_store_gives_none() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    let cfg = ConfigureNamespaceRequest { name: "ttl".into(), ttl_seconds: Some(1), ..Default::default() };
    c.configure_namespace(cfg).await.unwrap();
    store(&mut c, store_req("ttl", "What is the refund window?", "30 days")).await;
    let mut kept = store_req("ttl", "Do you ship abroad?", "Yes");
    kept.ttl_seconds = Some(0);
    store(&mut c, kept).await;
    wait_for_entries(&c, "ttl", 1).await;
    assert!(!hits(&mut c, "ttl", "What is the refund window?").await);
    assert!(hits(&mut c, "ttl", "Do you ship abroad?").await, "a per-Store 0 overrides the namespace TTL");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_recently_used_entry_is_evicted_at_max_entries() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    let cfg = ConfigureNamespaceRequest { name: "lru".into(), max_entries: Some(3), ..Default::default() };
    c.configure_namespace(cfg).await.unwrap();
    let qs = ["What is the capital of France?", "How do I bake bread?", "Is it going to rain?", "Who wrote Hamlet?"];
    for q in &qs[..3] {
        store(&mut c, store_req("lru", q, "answer")).await;
    }
    // A hit makes the oldest the most recent; the second-oldest is now the LRU one.
    assert!(hits(&mut c, "lru", qs[0]).await);
    store(&mut c, store_req("lru", qs[3], "Shakespeare")).await;
    assert!(!hits(&mut c, "lru", qs[1]).await, "the least recently used entry went");
    for q in [qs[0], qs[2], qs[3]] {
        assert!(hits(&mut c, "lru", q).await, "{q} stays");
    }
    let s = stats(&mut c, "lru").await;
    assert_eq!((s.entries, s.evictions), (3, 1));

    // Lowering the limit evicts at once, least recently used first (qs[0] was hit last).
    let cfg = ConfigureNamespaceRequest { name: "lru".into(), max_entries: Some(1), ..Default::default() };
    let ns = c.configure_namespace(cfg).await.unwrap().into_inner();
    assert_eq!(ns.entries, 1);
    assert!(hits(&mut c, "lru", qs[3]).await, "the most recently used one is kept");
    server.stop().await;

    // Recency and the limit survive a restart.
    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    store(&mut c, store_req("lru", "How far is the moon?", "384,400 km")).await;
    assert_eq!(stats(&mut c, "lru").await.entries, 1);
    assert!(hits(&mut c, "lru", "How far is the moon?").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_bounds_the_whole_data_set_across_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    // An entry with a 384-d vector is ~1.7 KB stored: room for about three.
    a.max_bytes = 6_000;
    let server = TestServer::start_with(a).await;
    let mut c = server.client.clone();
    let qs = ["What is the capital of France?", "How do I bake bread?", "Is it going to rain?", "Who wrote Hamlet?"];
    for (i, q) in qs.iter().enumerate() {
        store(&mut c, store_req(if i % 2 == 0 { "a" } else { "b" }, q, "answer")).await;
    }
    let total = stats(&mut c, "").await;
    assert!(total.entries < 4 && total.entries >= 2, "{total:?}");
    assert_eq!(total.evictions, 4 - total.entries);
    assert!(!hits(&mut c, "a", qs[0]).await, "the oldest entry, in another namespace, went first");
    assert!(hits(&mut c, "b", qs[3]).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reach_every_path_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    let by_id = store(&mut c, store_req("d", "How do I reset my password?", "Settings")).await;
    store(&mut c, store_req("d", "Where is my order?", "Tracking")).await;
    let mut scoped = store_req("d", "What is the refund window?", "30 days");
    scoped.scope = scope(&[("tenant", "acme")]);
    store(&mut c, scoped).await;
    store(&mut c, store_req("gone", "Who wrote Hamlet?", "Shakespeare")).await;

    let del = |target| DeleteRequest { namespace: "d".into(), target: Some(target) };
    assert_eq!(c.delete(del(Target::Id(by_id.clone()))).await.unwrap().into_inner().deleted, 1);
    let status = c.delete(del(Target::Id(by_id))).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(!hits(&mut c, "d", "How do I reset my password?").await, "exact path");
    assert!(!hits(&mut c, "d", "I forgot my password, how can I change it?").await, "semantic path");

    let selector = ScopeSelector { scope: scope(&[("tenant", "acme")]) };
    assert_eq!(c.delete(del(Target::Scope(selector))).await.unwrap().into_inner().deleted, 1);
    let mut l = lookup_req("d", "What is the refund window?");
    l.scope = scope(&[("tenant", "acme")]);
    assert!(!lookup(&mut c, l).await.hit);
    assert!(hits(&mut c, "d", "Where is my order?").await, "other scopes untouched");

    let dropped = c.drop_namespace(DropNamespaceRequest { name: "gone".into() }).await.unwrap().into_inner();
    assert_eq!(dropped.deleted, 1);
    let status = c.get_namespace(GetNamespaceRequest { name: "gone".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = c.drop_namespace(DropNamespaceRequest { name: "gone".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(!hits(&mut c, "gone", "Who wrote Hamlet?").await);
    server.stop().await;

    let server = TestServer::start_with(args(dir.path())).await;
    let mut c = server.client.clone();
    assert!(!hits(&mut c, "d", "How do I reset my password?").await);
    assert!(hits(&mut c, "d", "Where is my order?").await);
    let names: Vec<String> = c
        .list_namespaces(ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["d".to_string()]);
    assert_eq!(stats(&mut c, "").await.entries, 1);

    // Delete all keeps the namespace and its settings; a Store brings a dropped one back fresh.
    let all = c.delete(del(Target::All(true))).await.unwrap().into_inner();
    assert_eq!(all.deleted, 1);
    assert_eq!(c.get_namespace(GetNamespaceRequest { name: "d".into() }).await.unwrap().into_inner().entries, 0);
    store(&mut c, store_req("gone", "Who wrote Hamlet?", "Shakespeare")).await;
    assert!(hits(&mut c, "gone", "Who wrote Hamlet?").await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_partitions_come_back_from_checkpoints_and_survive_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path());
    // A graph after 12 entries, so that a short test exercises the graph path.
    a.exact_scan_limit = 12;
    let server = TestServer::start_with(a.clone()).await;
    let mut c = server.client.clone();
    let animals = ["cats", "horses", "owls", "bees", "sharks", "eagles", "frogs", "wolves", "camels", "dolphins"];
    let places = ["Tokyo", "the Sahara", "Norway"];
    let questions: Vec<String> =
        animals.iter().flat_map(|a| places.iter().map(move |p| format!("How many {a} live in {p}?"))).collect();
    let mut ids = Vec::new();
    for q in &questions {
        ids.push(store(&mut c, store_req("g", q, &format!("answer {q}"))).await);
    }
    // Deletes after the graph exists are dead points in the checkpoint.
    for id in &ids[..3] {
        c.delete(DeleteRequest { namespace: "g".into(), target: Some(Target::Id(id.clone())) }).await.unwrap();
    }
    server.stop().await; // writes the checkpoint

    let graphs = dir.path().join("graphs");
    let checkpoints: Vec<_> = std::fs::read_dir(&graphs).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    assert!(checkpoints[0].join("meta.json").is_file());

    let check = |c: SemanticCacheClient<Channel>| {
        let questions = questions.clone();
        let ids = ids.clone();
        async move {
            let mut c = c;
            for (i, q) in questions.iter().enumerate() {
                // Not the exact text, so the answer comes through the graph.
                let r = lookup(&mut c, lookup_req("g", &format!("{q} Thanks!"))).await;
                if i < 3 {
                    assert!(r.entry.is_none_or(|e| e.id != ids[i]), "deleted entry {i} came back");
                } else {
                    assert_eq!(r.entry.expect("hit").id, ids[i], "{q}");
                }
            }
            assert_eq!(stats(&mut c, "g").await.entries, 27);
        }
    };
    let server = TestServer::start_with(a.clone()).await;
    check(server.client.clone()).await;
    server.stop().await;

    // A corrupt checkpoint costs a rebuild, not data and not a crash.
    std::fs::write(checkpoints[0].join("graph.bin"), b"not a graph").unwrap();
    let server = TestServer::start_with(a).await;
    check(server.client.clone()).await;
    server.stop().await;
}
