//! Restart, health and reflection: the server as an operator sees it.

use crate::harness as common;

use common::*;
use semcache::proto::*;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let id = store(&mut c, store_req("support", "How do I reset my password?", "answer")).await;
    assert!(lookup(&mut c, lookup_req("support", "How do I reset my password?")).await.hit);
    let mut scoped = store_req("support", "What is your shipping policy?", "scoped");
    scoped.scope = scope(&[("tenant", "acme")]);
    scoped.metadata = scope(&[("source", "gpt-4o")]);
    let scoped_id = store(&mut c, scoped).await;
    let deleted = store(&mut c, store_req("support", "Where is my order?", "gone")).await;
    c.delete(DeleteRequest { namespace: "support".into(), target: Some(delete_request::Target::Id(deleted.clone())) })
        .await
        .unwrap();
    c.configure_namespace(ConfigureNamespaceRequest {
        name: "support".into(),
        similarity_threshold: Some(0.7),
        ttl_seconds: Some(3600),
        max_entries: Some(100),
        threshold_floor: Some(0.6),
        hit_guards: Some(false),
        error_bound: None,
    })
    .await
    .unwrap();
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let hit = lookup(&mut c, lookup_req("support", "I forgot my password, how can I change it?")).await;
    assert!(hit.hit);
    let entry = hit.entry.unwrap();
    assert_eq!(entry.id, id);
    assert_eq!(entry.hit_count, 2, "the hit before the restart was flushed at shutdown");
    let mut l = lookup_req("support", "what is your shipping policy?");
    l.scope = scope(&[("tenant", "acme")]);
    let r = lookup(&mut c, l).await;
    let e = r.entry.expect("scoped entry survives");
    assert_eq!((e.id, e.metadata), (scoped_id.clone(), scope(&[("source", "gpt-4o")])));
    assert!(!lookup(&mut c, lookup_req("support", "Where is my order?")).await.hit, "deletes survive too");

    let ns = c.get_namespace(GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!((ns.similarity_threshold, ns.ttl_seconds, ns.max_entries, ns.entries), (0.7, 3600, 100, 2));
    assert_eq!((ns.threshold_floor, ns.hit_guards), (0.6, false));

    // Ids keep growing across restarts; none is reused.
    let next = store(&mut c, store_req("support", "Do you ship abroad?", "yes")).await;
    let n: u64 = next.parse().unwrap();
    for old in [&id, &scoped_id, &deleted] {
        assert!(n > old.parse::<u64>().unwrap());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_from_another_model_is_refused_until_reembedded() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    for (q, r) in [("How do I reset my password?", "Settings > Security"), ("Where is my order?", "Tracking page")] {
        store(&mut c, store_req("old", q, r)).await;
    }
    store(&mut c, store_req("fresh", "How do I reset my password?", "x")).await;
    server.stop().await;

    // As if "old" had been embedded by another model.
    let stale = "other-model/384/0123456789abcdef";
    {
        let db = semcache::store::Store::open(dir.path()).unwrap();
        let mut record = db.namespaces().unwrap().into_iter().find(|n| n.name == "old").unwrap();
        record.embedding_model = stale.into();
        let mut batch = db.batch();
        batch.put_namespace(&record);
        db.write(batch).unwrap();
    }

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let status = c.lookup(lookup_req("old", "I forgot my password, how can I change it?")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let msg = status.message();
    assert!(msg.contains(stale) && msg.contains("all-MiniLM-L6-v2") && msg.contains("semcache reembed"), "{msg}");
    let status = c.store(store_req("old", "q", "r")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // Other namespaces are unaffected, and the stale one can still be inspected.
    assert!(lookup(&mut c, lookup_req("fresh", "I forgot my password, how can I change it?")).await.hit);
    let ns = c.get_namespace(GetNamespaceRequest { name: "old".into() }).await.unwrap().into_inner();
    assert_eq!((ns.entries, ns.embedding_model.as_str()), (2, stale));
    server.stop().await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_semcache"))
        .args(["reembed", "--data-dir"])
        .arg(dir.path())
        .arg("--model-dir")
        .arg(model_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("old: 2 entries re-embedded"), "{stdout}");
    assert!(!stdout.contains("fresh"), "only the stale namespace is re-embedded: {stdout}");

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    let r = lookup(&mut c, lookup_req("old", "I forgot my password, how can I change it?")).await;
    assert_eq!(r.entry.expect("serves again after reembed").response, "Settings > Security");
    let ns = c.get_namespace(GetNamespaceRequest { name: "old".into() }).await.unwrap().into_inner();
    assert!(ns.embedding_model.contains("all-MiniLM-L6-v2"), "{}", ns.embedding_model);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_serving_only_after_the_model_is_warm() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = semcache::config::ServeArgs::with_dirs(dir.path(), model_dir());
    // Enough warm-up passes (seconds) that the test reliably sees the loading phase.
    args.warmup_rounds = 300;
    let server = TestServer::spawn(args).await;
    let service = "semcache.v1.SemanticCache";
    assert_eq!(server.health("").await, ServingStatus::NotServing);
    assert_eq!(server.health(service).await, ServingStatus::NotServing);
    let mut c = server.client.clone();
    let status = c.store(store_req("ns", "q", "r")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("loading"), "{}", status.message());

    server.wait_serving().await;
    assert_eq!(server.health(service).await, ServingStatus::Serving);
    store(&mut c, store_req("ns", "q", "r")).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = ServerReflectionClient::new(server.channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["semcache.v1.SemanticCache", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    server.stop().await;
}
