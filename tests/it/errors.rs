//! Every bad input in DESIGN.md's error list gets its precise status, the server stays up,
//! and nothing stored changes.

use crate::harness as common;

use common::*;
use semcache::proto::*;
use tonic::{Code, Status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let id = store(&mut c, store_req("support", "How do I reset my password?", "answer")).await;
    let before = c.stats(StatsRequest::default()).await.unwrap().into_inner();

    let huge = "x".repeat(33 * 1024);
    let lookups: Vec<(&str, LookupRequest, &str)> = vec![
        ("empty namespace", lookup_req("", "q"), "namespace"),
        ("bad namespace", lookup_req("sup port", "q"), "namespace"),
        ("long namespace", lookup_req(&"n".repeat(129), "q"), "namespace"),
        ("empty query", lookup_req("support", ""), "query"),
        ("blank query", lookup_req("support", " \t\n "), "query"),
        ("oversized query", lookup_req("support", &huge), "query"),
        (
            "threshold 0",
            LookupRequest { similarity_threshold: Some(0.0), ..lookup_req("support", "q") },
            "similarity_threshold",
        ),
        (
            "threshold > 1",
            LookupRequest { similarity_threshold: Some(1.5), ..lookup_req("support", "q") },
            "similarity_threshold",
        ),
        (
            "threshold < 0",
            LookupRequest { similarity_threshold: Some(-0.2), ..lookup_req("support", "q") },
            "similarity_threshold",
        ),
        (
            "threshold NaN",
            LookupRequest { similarity_threshold: Some(f32::NAN), ..lookup_req("support", "q") },
            "similarity_threshold",
        ),
        (
            "threshold inf",
            LookupRequest { similarity_threshold: Some(f32::INFINITY), ..lookup_req("support", "q") },
            "similarity_threshold",
        ),
        ("empty scope key", LookupRequest { scope: scope(&[("", "x")]), ..lookup_req("support", "q") }, "scope"),
    ];
    for (case, req, field) in lookups {
        let status = c.lookup(req).await.unwrap_err();
        expect(case, &status, Code::InvalidArgument, field);
    }

    let stores: Vec<(&str, StoreRequest, &str)> = vec![
        ("bad namespace", store_req("a/b", "q", "r"), "namespace"),
        ("empty query", store_req("support", "", "r"), "query"),
        ("empty response", store_req("support", "q", ""), "response"),
        ("oversized query", store_req("support", &huge, "r"), "query"),
        ("oversized response", store_req("support", "q", &"r".repeat(1024 * 1024 + 1)), "response"),
        (
            "negative cost",
            StoreRequest {
                usage: Some(Usage { cost_usd: -1.0, ..Default::default() }),
                ..store_req("support", "q", "r")
            },
            "cost_usd",
        ),
        (
            "too many scope keys",
            StoreRequest {
                scope: (0..100).map(|i| (format!("k{i}"), "v".to_string())).collect(),
                ..store_req("support", "q", "r")
            },
            "scope",
        ),
    ];
    for (case, req, field) in stores {
        let status = c.store(req).await.unwrap_err();
        expect(case, &status, Code::InvalidArgument, field);
    }

    let configure = c
        .configure_namespace(ConfigureNamespaceRequest {
            name: "support".into(),
            similarity_threshold: Some(f32::NAN),
            ..Default::default()
        })
        .await
        .unwrap_err();
    expect("configure NaN", &configure, Code::InvalidArgument, "similarity_threshold");
    let configure = c
        .configure_namespace(ConfigureNamespaceRequest { name: "bad name".into(), ..Default::default() })
        .await
        .unwrap_err();
    expect("configure bad name", &configure, Code::InvalidArgument, "namespace");

    let del = |ns: &str, target| DeleteRequest { namespace: ns.into(), target };
    let s = c.delete(del("support", None)).await.unwrap_err();
    expect("delete without target", &s, Code::InvalidArgument, "target");
    let s = c.delete(del("support", Some(delete_request::Target::All(false)))).await.unwrap_err();
    expect("delete all=false", &s, Code::InvalidArgument, "target");
    let s = c.delete(del("support", Some(delete_request::Target::Id("abc".into())))).await.unwrap_err();
    expect("delete non-numeric id", &s, Code::InvalidArgument, "id");
    let s = c.delete(del("support", Some(delete_request::Target::Id("999999".into())))).await.unwrap_err();
    expect("delete unknown id", &s, Code::NotFound, "999999");
    let s = c.get_namespace(GetNamespaceRequest { name: "".into() }).await.unwrap_err();
    expect("get empty name", &s, Code::InvalidArgument, "namespace");

    // Still up, nothing changed.
    let after = c.stats(StatsRequest::default()).await.unwrap().into_inner();
    assert_eq!((after.stores, after.entries), (before.stores, before.entries));
    let hit = lookup(&mut c, lookup_req("support", "How do I reset my password?")).await;
    assert_eq!(hit.entry.unwrap().id, id);
    let ns = c.get_namespace(GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!(ns.similarity_threshold, semcache::cache::DEFAULT_THRESHOLD);
    server.stop().await;
}

fn expect(case: &str, status: &Status, code: Code, mentions: &str) {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(status.message().contains(mentions), "{case}: message {:?} should name {mentions:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path(), model_dir());
    args.max_queue = 1;
    args.max_batch = 1;
    let server = TestServer::start_with(args).await;
    let mut c = server.client.clone();
    store(&mut c, store_req("ns", "seed question", "seed")).await;

    // Far more concurrent lookups than a one-slot queue admits: some must be refused at once,
    // the admitted ones must succeed.
    let long_query = "why does the model take a while on long text ".repeat(20);
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut c = server.client.clone();
            let q = format!("{long_query} {i}");
            tokio::spawn(async move { c.lookup(lookup_req("ns", &q)).await })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("--max-queue"), "{}", s.message());
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    // And the server is still fine afterwards.
    assert!(lookup(&mut c, lookup_req("ns", "seed question")).await.hit);
    server.stop().await;
}
