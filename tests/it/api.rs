//! The SemanticCache API end to end over loopback gRPC, with the real model and RocksDB.

use crate::harness as common;

use common::*;
use semcache::proto::*;
use tonic::Code;

const RESET: &str = "How do I reset my password?";
const RESET_PARAPHRASE: &str = "I forgot my password, how can I change it?";
const SHIPPING: &str = "What is your shipping policy?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrase_hits_and_unrelated_question_misses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();

    let id = store(&mut c, store_req("support", RESET, "Open Settings > Security > Reset password.")).await;

    let hit = lookup(&mut c, lookup_req("support", RESET_PARAPHRASE)).await;
    assert!(hit.hit, "paraphrase must hit: similarity {}", hit.similarity);
    let entry = hit.entry.expect("a hit carries its entry");
    assert_eq!(entry.id, id);
    assert_eq!(entry.query, RESET);
    assert_eq!(entry.response, "Open Settings > Security > Reset password.");
    assert_eq!(entry.namespace, "support");
    assert_eq!(hit.nearest_id, id);
    assert!(hit.similarity > 0.5 && hit.similarity < 1.0, "{}", hit.similarity);
    assert!(entry.created_at_unix_ms > 0);
    assert_eq!(entry.expires_at_unix_ms, 0);
    assert_eq!(entry.hit_count, 1);

    let miss = lookup(&mut c, lookup_req("support", SHIPPING)).await;
    assert!(!miss.hit);
    assert!(miss.entry.is_none());
    assert_eq!(miss.nearest_id, id, "a miss still names the nearest entry");
    assert!(miss.similarity > 0.0 && miss.similarity < hit.similarity, "{}", miss.similarity);

    // The same text again (modulo case and spacing) takes the exact path: similarity 1.
    let exact = lookup(&mut c, lookup_req("support", "  how do I RESET my   password? ")).await;
    assert!(exact.hit);
    assert_eq!(exact.similarity, 1.0);
    assert_eq!(exact.entry.unwrap().hit_count, 2);

    let stats = c.stats(StatsRequest { namespace: "support".into() }).await.unwrap().into_inner();
    assert_eq!((stats.lookups, stats.hits, stats.misses, stats.stores, stats.entries), (3, 2, 1, 1, 1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_never_cross_namespace_or_scope() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let gpt = scope(&[("model", "gpt-4o"), ("tenant", "acme")]);

    let mut req = store_req("support", RESET, "scoped answer");
    req.scope = gpt.clone();
    let scoped_id = store(&mut c, req).await;

    // Other namespace: unknown, so a plain miss.
    let other = lookup(&mut c, lookup_req("billing", RESET)).await;
    assert!(!other.hit && other.similarity == 0.0 && other.nearest_id.is_empty());

    // Same namespace, no scope / a different scope / a subset of the scope: all miss,
    // and the exact text does not leak through the exact path either.
    for s in [scope(&[]), scope(&[("model", "gpt-4o")]), scope(&[("model", "claude"), ("tenant", "acme")])] {
        let mut l = lookup_req("support", RESET);
        l.scope = s.clone();
        let r = lookup(&mut c, l).await;
        assert!(!r.hit, "scope {s:?} must not hit");
        assert!(r.nearest_id.is_empty(), "scope {s:?} must not even see the entry");
    }

    // Equal scope maps hit regardless of the order the client built them in.
    let mut l = lookup_req("support", RESET_PARAPHRASE);
    l.scope = scope(&[("tenant", "acme"), ("model", "gpt-4o")]);
    let r = lookup(&mut c, l).await;
    assert!(r.hit);
    assert_eq!(r.entry.unwrap().scope, gpt);

    // An unscoped entry with the same text is a separate entry.
    let plain_id = store(&mut c, store_req("support", RESET, "unscoped answer")).await;
    assert_ne!(plain_id, scoped_id);
    let r = lookup(&mut c, lookup_req("support", RESET)).await;
    assert_eq!(r.entry.unwrap().response, "unscoped answer");

    // A second namespace with the same question keeps its own answer.
    store(&mut c, store_req("billing", RESET, "billing answer")).await;
    let r = lookup(&mut c, lookup_req("billing", RESET_PARAPHRASE)).await;
    assert_eq!(r.entry.unwrap().response, "billing answer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_per_namespace_and_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    store(&mut c, store_req("support", RESET, "answer")).await;
    let sim = lookup(&mut c, lookup_req("support", RESET_PARAPHRASE)).await.similarity;

    // Raise the namespace threshold above the paraphrase's similarity: now a miss.
    let ns = c
        .configure_namespace(ConfigureNamespaceRequest {
            name: "support".into(),
            similarity_threshold: Some((sim + 1.0) / 2.0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ns.similarity_threshold, (sim + 1.0) / 2.0);
    assert_eq!(ns.entries, 1);
    assert!(!lookup(&mut c, lookup_req("support", RESET_PARAPHRASE)).await.hit);

    // A request may lower it for itself ...
    let mut l = lookup_req("support", RESET_PARAPHRASE);
    l.similarity_threshold = Some(sim - 0.01);
    assert!(lookup(&mut c, l).await.hit);
    // ... or raise it.
    c.configure_namespace(ConfigureNamespaceRequest {
        name: "support".into(),
        similarity_threshold: Some(0.1),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut l = lookup_req("support", RESET_PARAPHRASE);
    l.similarity_threshold = Some(1.0);
    assert!(!lookup(&mut c, l).await.hit);

    // Unset fields keep their value.
    let ns = c
        .configure_namespace(ConfigureNamespaceRequest {
            name: "support".into(),
            ttl_seconds: Some(60),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ns.similarity_threshold, ns.ttl_seconds), (0.1, 60));
    let got = c.get_namespace(GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!(got, ns);
    assert!(got.embedding_model.starts_with("all-MiniLM-L6-v2/384/"), "{}", got.embedding_model);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_by_id_scope_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let tenant_a = scope(&[("tenant", "a")]);
    let tenant_b = scope(&[("tenant", "b")]);
    let mut ids = Vec::new();
    for (q, s) in [(RESET, &tenant_a), (SHIPPING, &tenant_a), (RESET, &tenant_b), ("Where is my order?", &tenant_b)] {
        let mut req = store_req("shop", q, "answer");
        req.scope = s.clone();
        ids.push(store(&mut c, req).await);
    }
    let scoped = |q: &str, s: &std::collections::BTreeMap<String, String>| {
        let mut l = lookup_req("shop", q);
        l.scope = s.clone();
        l
    };

    // By id: gone from the exact path and from the semantic path.
    let del = |target| DeleteRequest { namespace: "shop".into(), target: Some(target) };
    let r = c.delete(del(delete_request::Target::Id(ids[0].clone()))).await.unwrap().into_inner();
    assert_eq!(r.deleted, 1);
    let after = lookup(&mut c, scoped(RESET, &tenant_a)).await;
    assert!(!after.hit);
    assert_ne!(after.nearest_id, ids[0]);
    assert!(!lookup(&mut c, scoped(RESET_PARAPHRASE, &tenant_a)).await.hit);
    let again = c.delete(del(delete_request::Target::Id(ids[0].clone()))).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound);

    // By scope: only that exact scope.
    let r = c
        .delete(del(delete_request::Target::Scope(ScopeSelector { scope: tenant_b.clone() })))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 2);
    assert!(!lookup(&mut c, scoped(RESET, &tenant_b)).await.hit);
    assert!(lookup(&mut c, scoped(SHIPPING, &tenant_a)).await.hit);

    // All: the namespace stays, empty.
    let r = c.delete(del(delete_request::Target::All(true))).await.unwrap().into_inner();
    assert_eq!(r.deleted, 1);
    assert!(!lookup(&mut c, scoped(SHIPPING, &tenant_a)).await.hit);
    let ns = c.get_namespace(GetNamespaceRequest { name: "shop".into() }).await.unwrap().into_inner();
    assert_eq!(ns.entries, 0);

    // Storing the deleted text again works and hits again.
    let mut req = store_req("shop", RESET, "new answer");
    req.scope = tenant_a.clone();
    store(&mut c, req).await;
    assert_eq!(lookup(&mut c, scoped(RESET, &tenant_a)).await.entry.unwrap().response, "new answer");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_the_same_question_replaces_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let first = store(&mut c, store_req("support", RESET, "old")).await;
    let second = store(&mut c, store_req("support", "how do i reset my password?", "new")).await;
    assert_ne!(first, second);
    let r = lookup(&mut c, lookup_req("support", RESET_PARAPHRASE)).await;
    assert_eq!(r.entry.unwrap().response, "new");
    let ns = c.get_namespace(GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!(ns.entries, 1, "the older entry is replaced, not kept beside the new one");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_are_listed_and_unknown_ones_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    store(&mut c, store_req("zeta", RESET, "a")).await;
    c.configure_namespace(ConfigureNamespaceRequest {
        name: "alpha".into(),
        max_entries: Some(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let list = c.list_namespaces(ListNamespacesRequest {}).await.unwrap().into_inner();
    let names: Vec<_> = list.namespaces.iter().map(|n| (n.name.as_str(), n.entries, n.max_entries)).collect();
    assert_eq!(names, vec![("alpha", 0, 10), ("zeta", 1, 0)]);
    let default_threshold = list.namespaces[1].similarity_threshold;
    assert_eq!(default_threshold, semcache::cache::DEFAULT_THRESHOLD);

    for status in [
        c.get_namespace(GetNamespaceRequest { name: "nope".into() }).await.unwrap_err(),
        c.stats(StatsRequest { namespace: "nope".into() }).await.unwrap_err(),
        c.delete(DeleteRequest { namespace: "nope".into(), target: Some(delete_request::Target::All(true)) })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert!(status.message().contains("nope"), "{}", status.message());
    }
    let all = c.stats(StatsRequest::default()).await.unwrap().into_inner();
    assert_eq!((all.stores, all.entries), (1, 1));
    server.stop().await;
}

/// A GET over plain HTTP/1.1, enough for the metrics endpoint without an HTTP client crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_savings_count_a_known_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path(), model_dir());
    args.metrics_listen = Some(metrics_addr);
    let server = TestServer::start_with(args).await;
    let mut c = server.client.clone();
    let usage = Some(Usage { input_tokens: 100, output_tokens: 40, cost_usd: 0.25 });
    store(&mut c, StoreRequest { usage, ..store_req("m", RESET, "Settings > Security") }).await;
    store(&mut c, StoreRequest { usage, ..store_req("m", SHIPPING, "Free over $50") }).await;
    store(&mut c, store_req("other", SHIPPING, "x")).await;
    assert!(lookup(&mut c, lookup_req("m", RESET)).await.entry.is_some_and(|_| true), "exact hit");
    let semantic = lookup(&mut c, lookup_req("m", RESET_PARAPHRASE)).await;
    assert!(semantic.hit);
    let miss = lookup(&mut c, lookup_req("m", "Which vaccines does a puppy need?")).await;
    assert!(!miss.hit && !miss.nearest_id.is_empty());

    // Savings: two hits on an entry stored with usage.
    let stats = c.stats(StatsRequest { namespace: "m".into() }).await.unwrap().into_inner();
    assert_eq!((stats.lookups, stats.hits, stats.misses, stats.stores), (3, 2, 1, 2));
    assert_eq!((stats.saved_input_tokens, stats.saved_output_tokens, stats.saved_cost_usd), (200, 80, 0.5));

    let text = http_get(metrics_addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    for (series, value) in [
        ("semcache_lookups_total{namespace=\"m\"}", 3.0),
        ("semcache_hits_total{namespace=\"m\",kind=\"exact\"}", 1.0),
        ("semcache_hits_total{namespace=\"m\",kind=\"semantic\"}", 1.0),
        ("semcache_misses_total{namespace=\"m\"}", 1.0),
        ("semcache_stores_total{namespace=\"m\"}", 2.0),
        ("semcache_stores_total{namespace=\"other\"}", 1.0),
        ("semcache_entries{namespace=\"m\"}", 2.0),
        ("semcache_saved_tokens_total{namespace=\"m\",type=\"input\"}", 200.0),
        ("semcache_saved_tokens_total{namespace=\"m\",type=\"output\"}", 80.0),
        ("semcache_saved_cost_usd_total{namespace=\"m\"}", 0.5),
        ("semcache_evictions_total{namespace=\"m\"}", 0.0),
        ("semcache_lookup_duration_seconds_count{outcome=\"exact_hit\"}", 1.0),
        ("semcache_lookup_duration_seconds_count{outcome=\"semantic_hit\"}", 1.0),
        ("semcache_lookup_duration_seconds_count{outcome=\"miss\"}", 1.0),
        ("semcache_miss_similarity_count", 1.0),
        ("semcache_embed_queue_depth", 0.0),
        ("semcache_storage_writable", 1.0),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
    assert!(sample(&text, "semcache_bytes{namespace=\"m\"}") > 2.0 * 384.0 * 4.0, "two vectors at least");
    // Warm-up, three stores and two lookups that ran the model.
    assert!(sample(&text, "semcache_embed_batch_size_count") >= 5.0);
    assert!((sample(&text, "semcache_miss_similarity_sum") - f64::from(miss.similarity)).abs() < 1e-6);
    assert!(http_get(metrics_addr, "/nope").await.starts_with("HTTP/1.1 404"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_from_the_config_file_are_applied_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path(), model_dir());
    args.namespaces = vec![semcache::cache::NamespaceUpdate {
        name: "support".into(),
        similarity_threshold: Some(0.9),
        ttl_seconds: Some(3600),
        max_entries: Some(10),
        threshold_floor: Some(0.8),
        hit_guards: Some(false),
        error_bound: None,
    }];
    let server = TestServer::start_with(args).await;
    let mut c = server.client.clone();
    let ns = c.get_namespace(GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!(
        (ns.similarity_threshold, ns.ttl_seconds, ns.max_entries, ns.threshold_floor, ns.hit_guards),
        (0.9, 3600, 10, 0.8, false)
    );
    server.stop().await;
}
