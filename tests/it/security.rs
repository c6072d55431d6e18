//! Hostile and malformed requests against a server with tokens and tight limits: each gets its
//! precise status, the server stays up, and nothing stored changes. Run with `--nocapture` to
//! see the table.

use crate::harness as common;

use common::*;
use semcache::grpc::auth::hash_token;
use semcache::proto::*;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use tonic::{Code, Status};

type Call = Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

fn call<T: Send + 'static>(f: impl Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static) -> Call {
    Box::pin(async move { f.await.map(|_| ()) })
}

const ADMIN: &str = "admin-token-0123456789";
const GATEWAY: &str = "gateway-token-0123456789";
const READER: &str = "reader-token-0123456789";
const LIMITED: &str = "limited-token-0123456789";

/// Every entry, as the admin exports it.
async fn snapshot(admin: &mut semcache::client::Client) -> (Vec<Entry>, Vec<Namespace>, u64) {
    let mut stream = admin.export(ExportRequest::default()).await.unwrap().into_inner();
    let mut entries = Vec::new();
    while let Some(e) = stream.message().await.unwrap() {
        entries.push(e);
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    let namespaces = admin.list_namespaces(ListNamespacesRequest {}).await.unwrap().into_inner().namespaces;
    let stores = admin.stats(StatsRequest::default()).await.unwrap().into_inner().stores;
    (entries, namespaces, stores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_precise_statuses_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path(), model_dir());
    let mut limited = token_spec("limited", LIMITED, &["*"], &[]);
    limited.requests_per_second = NonZeroU32::new(1);
    args.tokens = vec![
        token_spec("admin", ADMIN, &["*"], &["*"]),
        token_spec("gateway", GATEWAY, &["support", "docs"], &["support"]),
        token_spec("reader", READER, &["support"], &[]),
        limited,
    ];
    args.max_namespaces = 3;
    args.max_request_bytes = 256 * 1024;
    let server = TestServer::start_with(args).await;
    let ch = &server.channel;
    let mut admin = authed(ch, Some(ADMIN));
    for (ns, q) in [
        ("support", "How do I reset my password?"),
        ("support", "Where is my invoice?"),
        ("docs", "What is an API key?"),
        ("billing", "Why was I charged twice?"),
    ] {
        admin.store(store_req(ns, q, "a cached answer")).await.unwrap();
    }
    let before = snapshot(&mut admin).await;

    let none = authed(ch, None);
    let wrong = authed(ch, Some("not-a-token"));
    let gateway = authed(ch, Some(GATEWAY));
    let reader = authed(ch, Some(READER));
    let lim = authed(ch, Some(LIMITED));
    let (a, g, r) = (|| admin.clone(), || gateway.clone(), || reader.clone());
    let basic = {
        let ch = ch.clone();
        move || {
            semcache::proto::semantic_cache_client::SemanticCacheClient::with_interceptor(
                ch.clone(),
                |mut req: tonic::Request<()>| {
                    req.metadata_mut().insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
                    Ok(req)
                },
            )
        }
    };
    let q = |ns: &str, query: &str| lookup_req(ns, query);
    let s = |ns: &str, query: &str, response: &str| store_req(ns, query, response);
    let huge_scope = (0..10_000).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let marked = |value: &str| [("semcache.incomplete".to_string(), value.to_string())].into();
    let threshold = |t: f32| LookupRequest { similarity_threshold: Some(t), ..lookup_req("support", "reset password") };

    let cases: Vec<(&str, Code, &str, Call)> = vec![
        (
            "no token",
            Code::Unauthenticated,
            "requires a token",
            call({
                let mut c = none.clone();
                async move { c.lookup(q("support", "reset password")).await }
            }),
        ),
        (
            "wrong token",
            Code::Unauthenticated,
            "not valid",
            call({
                let mut c = wrong.clone();
                async move { c.store(s("support", "poison", "evil")).await }
            }),
        ),
        (
            "Basic instead of Bearer",
            Code::Unauthenticated,
            "Bearer <token>",
            call({
                let mut c = basic();
                async move { c.lookup(q("support", "reset password")).await }
            }),
        ),
        (
            "read-only token stores",
            Code::PermissionDenied,
            "\"reader\" may not write namespace \"support\"",
            call({
                let mut c = r();
                async move { c.store(s("support", "poison", "evil")).await }
            }),
        ),
        (
            "read-only token deletes all",
            Code::PermissionDenied,
            "may not write",
            call({
                let mut c = r();
                async move {
                    c.delete(DeleteRequest {
                        namespace: "support".into(),
                        target: Some(delete_request::Target::All(true)),
                    })
                    .await
                }
            }),
        ),
        (
            "cross-namespace lookup",
            Code::PermissionDenied,
            "may not read namespace \"billing\"",
            call({
                let mut c = g();
                async move { c.lookup(q("billing", "charged twice")).await }
            }),
        ),
        (
            "cross-namespace store",
            Code::PermissionDenied,
            "may not write namespace \"docs\"",
            call({
                let mut c = g();
                async move { c.store(s("docs", "poison", "evil")).await }
            }),
        ),
        (
            "cross-namespace drop",
            Code::PermissionDenied,
            "may not write namespace \"billing\"",
            call({
                let mut c = g();
                async move { c.drop_namespace(DropNamespaceRequest { name: "billing".into() }).await }
            }),
        ),
        (
            "lower another tenant's threshold",
            Code::PermissionDenied,
            "may not write namespace \"billing\"",
            call({
                let mut c = g();
                async move {
                    c.configure_namespace(ConfigureNamespaceRequest {
                        name: "billing".into(),
                        similarity_threshold: Some(0.01),
                        ..Default::default()
                    })
                    .await
                }
            }),
        ),
        (
            "stats of every namespace",
            Code::PermissionDenied,
            "all namespaces",
            call({
                let mut c = g();
                async move { c.stats(StatsRequest::default()).await }
            }),
        ),
        (
            "export everything",
            Code::PermissionDenied,
            "all namespaces",
            call({
                let mut c = g();
                async move { c.export(ExportRequest::default()).await }
            }),
        ),
        (
            "over its rate limit",
            Code::ResourceExhausted,
            "1 requests per second",
            call({
                let mut c = lim.clone();
                async move {
                    for _ in 0..5 {
                        c.stats(StatsRequest { namespace: "support".into() }).await?;
                    }
                    Ok(tonic::Response::new(()))
                }
            }),
        ),
        (
            "empty query",
            Code::InvalidArgument,
            "query is empty",
            call({
                let mut c = a();
                async move { c.lookup(q("support", "")).await }
            }),
        ),
        (
            "control characters only",
            Code::InvalidArgument,
            "control characters",
            call({
                let mut c = a();
                async move { c.store(s("support", "\u{0}\u{1b}\u{7}\u{7f}\u{9b}\r\n", "r")).await }
            }),
        ),
        (
            "control character in namespace",
            Code::InvalidArgument,
            "namespace contains '\\0'",
            call({
                let mut c = a();
                async move { c.lookup(q("supp\u{0}ort", "q")).await }
            }),
        ),
        (
            "path-like namespace",
            Code::InvalidArgument,
            "namespace contains '/'",
            call({
                let mut c = a();
                async move { c.store(s("../etc", "q", "r")).await }
            }),
        ),
        (
            "namespace of 129 chars",
            Code::InvalidArgument,
            "at most 128",
            call({
                let mut c = a();
                async move { c.get_namespace(GetNamespaceRequest { name: "n".repeat(129) }).await }
            }),
        ),
        (
            "query over the limit",
            Code::InvalidArgument,
            "--max-query-bytes",
            call({
                let mut c = a();
                async move { c.lookup(q("support", &"x".repeat(33 * 1024))).await }
            }),
        ),
        (
            "request over the limit",
            Code::ResourceExhausted,
            "--max-request-bytes",
            call({
                let mut c = a();
                async move { c.store(s("support", "q", &"r".repeat(300 * 1024))).await }
            }),
        ),
        (
            "threshold NaN",
            Code::InvalidArgument,
            "similarity_threshold is NaN",
            call({
                let mut c = a();
                async move { c.lookup(threshold(f32::NAN)).await }
            }),
        ),
        (
            "threshold +inf",
            Code::InvalidArgument,
            "similarity_threshold is inf",
            call({
                let mut c = a();
                async move { c.lookup(threshold(f32::INFINITY)).await }
            }),
        ),
        (
            "threshold -inf",
            Code::InvalidArgument,
            "similarity_threshold is -inf",
            call({
                let mut c = a();
                async move { c.lookup(threshold(f32::NEG_INFINITY)).await }
            }),
        ),
        (
            "threshold negative",
            Code::InvalidArgument,
            "similarity_threshold is -0.5",
            call({
                let mut c = a();
                async move { c.lookup(threshold(-0.5)).await }
            }),
        ),
        (
            "configure threshold NaN",
            Code::InvalidArgument,
            "similarity_threshold",
            call({
                let mut c = a();
                async move {
                    c.configure_namespace(ConfigureNamespaceRequest {
                        name: "support".into(),
                        similarity_threshold: Some(f32::NAN),
                        ..Default::default()
                    })
                    .await
                }
            }),
        ),
        (
            "10k scope keys",
            Code::InvalidArgument,
            "10000 entries; at most 32 are allowed (--max-scope-entries)",
            call({
                let mut c = a();
                async move { c.lookup(LookupRequest { scope: huge_scope, ..q("support", "q") }).await }
            }),
        ),
        (
            "metadata value over the limit",
            Code::InvalidArgument,
            "--max-map-value-bytes",
            call({
                let mut c = a();
                async move {
                    c.store(StoreRequest {
                        metadata: [("k".to_string(), "v".repeat(70_000))].into(),
                        ..s("support", "q", "r")
                    })
                    .await
                }
            }),
        ),
        (
            "empty scope key",
            Code::InvalidArgument,
            "scope has an empty key",
            call({
                let mut c = a();
                async move { c.lookup(LookupRequest { scope: scope(&[("", "x")]), ..q("support", "q") }).await }
            }),
        ),
        (
            "context and context_key",
            Code::InvalidArgument,
            "context",
            call({
                let mut c = a();
                async move {
                    c.lookup(LookupRequest { context: vec!["hi".into()], context_key: "k".into(), ..q("support", "q") })
                        .await
                }
            }),
        ),
        (
            "empty response",
            Code::InvalidArgument,
            "response is empty",
            call({
                let mut c = a();
                async move { c.store(s("support", "q", "")).await }
            }),
        ),
        (
            "truncated response",
            Code::FailedPrecondition,
            "--cache-incomplete",
            call({
                let mut c = a();
                async move {
                    c.store(StoreRequest { metadata: marked("truncated"), ..s("support", "q", "half an ans") }).await
                }
            }),
        ),
        (
            "unknown incomplete marker",
            Code::InvalidArgument,
            "one of truncated, error",
            call({
                let mut c = a();
                async move { c.store(StoreRequest { metadata: marked("partly"), ..s("support", "q", "r") }).await }
            }),
        ),
        (
            "namespace beyond the limit",
            Code::ResourceExhausted,
            "--max-namespaces",
            call({
                let mut c = a();
                async move { c.store(s("fourth", "q", "r")).await }
            }),
        ),
        (
            "unknown entry id",
            Code::NotFound,
            "no entry with id 999999",
            call({
                let mut c = a();
                async move {
                    c.delete(DeleteRequest {
                        namespace: "support".into(),
                        target: Some(delete_request::Target::Id("999999".into())),
                    })
                    .await
                }
            }),
        ),
        (
            "non-numeric entry id",
            Code::InvalidArgument,
            "not an entry id",
            call({
                let mut c = a();
                async move {
                    c.delete(DeleteRequest {
                        namespace: "support".into(),
                        target: Some(delete_request::Target::Id("1; DROP".into())),
                    })
                    .await
                }
            }),
        ),
        (
            "unknown namespace",
            Code::NotFound,
            "does not exist",
            call({
                let mut c = a();
                async move { c.get_namespace(GetNamespaceRequest { name: "nowhere".into() }).await }
            }),
        ),
        (
            "delete without a target",
            Code::InvalidArgument,
            "target is required",
            call({
                let mut c = a();
                async move { c.delete(DeleteRequest { namespace: "support".into(), target: None }).await }
            }),
        ),
        (
            "8000 repeated tokens (served: a miss)",
            Code::Ok,
            "",
            call({
                let mut c = g();
                async move { c.lookup(q("support", &"why ".repeat(8000))).await }
            }),
        ),
    ];
    assert!(cases.len() >= 20);
    println!("{:<40} {:<20} message", "case", "status");
    let mut failures = Vec::new();
    for (case, code, mention, fut) in cases {
        let (got, message) = match fut.await {
            Ok(()) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_string()),
        };
        println!("{case:<40} {:<20} {}", format!("{got:?}"), &message[..message.floor_char_boundary(110)]);
        if got != code || !message.contains(mention) {
            failures.push(format!("{case}: expected {code:?} naming {mention:?}, got {got:?}: {message}"));
        }
        for secret in [ADMIN, GATEWAY, READER, LIMITED, "not-a-token", &hash_token(ADMIN)] {
            assert!(!message.contains(secret), "{case}: a status shows a token or its digest");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Still serving, and nothing stored or configured changed.
    assert_eq!(server.health("").await, tonic_health::pb::health_check_response::ServingStatus::Serving);
    let after = snapshot(&mut admin).await;
    assert_eq!(after.0, before.0, "entries changed");
    assert_eq!(after.1, before.1, "namespaces changed");
    assert_eq!(after.2, before.2, "stores were counted");

    // And the grants that exist work: the gateway serves and writes its own namespace and
    // sees only the namespaces it has a grant on.
    let mut gw = gateway.clone();
    assert!(gw.lookup(q("support", "How do I reset my password?")).await.unwrap().into_inner().hit);
    assert!(gw.lookup(q("docs", "What is an API key?")).await.unwrap().into_inner().hit);
    gw.store(s("support", "How do I change my email?", "Settings, then Email.")).await.unwrap();
    let seen: Vec<_> = gw
        .list_namespaces(ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(seen, ["docs", "support"]);
    server.stop().await;
}

#[tokio::test]
async fn without_tokens_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let missing_model = dir.path().join("no-model");
    let run = |insecure: bool, tokens: bool| {
        let mut args = semcache::config::ServeArgs::with_dirs(dir.path().join("data"), &missing_model);
        args.insecure_listen_any = insecure;
        if tokens {
            args.tokens = vec![token_spec("t", "tok", &["*"], &["*"])];
        }
        async move {
            let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
            semcache::server::run(args, listener, std::future::pending()).await.unwrap_err().to_string()
        }
    };
    let refused = run(false, false).await;
    assert!(
        refused.contains("refusing to listen on 0.0.0.0") && refused.contains("--insecure-listen-any"),
        "{refused}"
    );
    // Past the check, these fail on the missing model instead.
    for (insecure, tokens) in [(true, false), (false, true)] {
        let e = run(insecure, tokens).await;
        assert!(e.contains("no-model"), "insecure {insecure}, tokens {tokens}: {e}");
    }
}
