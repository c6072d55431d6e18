//! Verified mode over gRPC with the real model: EXPLORE, a Store with its token, Feedback,
//! refused tokens, what survives a restart, Export/Import, and the stream replay of
//! `semcache eval --stream` on a Banking77 sample.

use crate::harness::{self as common, lookup, lookup_req, store_req, TestServer};
use common::process::run;
use semcache::config::ServeArgs;
use semcache::proto::*;
use tonic::Code;

async fn verified_namespace(server: &TestServer, name: &str, error_bound: f32) {
    let mut c = server.client.clone();
    let ns = c
        .configure_namespace(ConfigureNamespaceRequest {
            name: name.into(),
            error_bound: Some(error_bound),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ns.error_bound, error_bound);
}

fn probed(ns: &str, query: &str, response: &str, token: &str) -> StoreRequest {
    StoreRequest { probe_token: token.into(), ..store_req(ns, query, response) }
}

async fn explore(server: &TestServer, ns: &str, query: &str) -> LookupResponse {
    let r = lookup(&mut server.client.clone(), lookup_req(ns, query)).await;
    assert_eq!(r.miss_reason(), MissReason::Explore, "{r:?}");
    assert!(!r.hit && r.entry.is_none() && !r.probe_token.is_empty(), "{r:?}");
    let probed = r.probe_entry.as_ref().expect("the answer that would have been served");
    assert_eq!(probed.id, r.nearest_id, "{r:?}");
    r
}

#[tokio::test]
async fn explore_then_store_with_its_token_teaches_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::with_dirs(dir.path(), common::model_dir());
    args.probe_ttl_seconds = 1;
    let server = TestServer::start_with(args).await;
    let mut c = server.client.clone();
    verified_namespace(&server, "support", 0.02).await;
    let id =
        common::store(&mut c, store_req("support", "How do I reset my password?", "Open Settings > Security.")).await;

    // A new verified namespace trusts nothing yet: the paraphrase is explored, not served.
    let r = explore(&server, "support", "How can I reset my password?").await;
    assert_eq!(r.nearest_id, id);
    let token = r.probe_token;

    // Tokens that are not this lookup's are refused precisely, and teach nothing.
    let e = c.store(probed("billing", "How can I reset my password?", "x", &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("another namespace"), "{}", e.message());
    let e = c.store(probed("support", "Where is my parcel?", "x", &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("another query"), "{}", e.message());
    // One character in the middle changed (the last may carry only padding bits).
    let mid = token.len() / 2;
    let swapped = if &token[mid..=mid] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &token[..mid], &token[mid + 1..]);
    let e = c.store(probed("support", "How can I reset my password?", "x", &forged)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("not a token this server issued"), "{}", e.message());
    let verdict_alone =
        StoreRequest { probe_verdict: Some(true), ..store_req("support", "How can I reset my password?", "x") };
    assert_eq!(c.store(verdict_alone).await.unwrap_err().code(), Code::InvalidArgument);
    let stats = c.stats(StatsRequest { namespace: "support".into() }).await.unwrap().into_inner();
    assert_eq!((stats.explores, stats.probes_correct, stats.probes_wrong, stats.stores), (1, 0, 0, 1));

    // The gateway's LLM gave the same answer (up to case and punctuation): right.
    let stored = c
        .store(probed("support", "How can I reset my password?", "open settings > security", &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.probe_correct, Some(true));
    let e = c.store(probed("support", "How can I reset my password?", "x", &token)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "reused: {e:?}");
    assert!(e.message().contains("already used"), "{}", e.message());

    // The caller's own verdict overrides the comparison.
    let r = explore(&server, "support", "I forgot my password, what now?").await;
    let judged = StoreRequest {
        probe_verdict: Some(false),
        ..probed("support", "I forgot my password, what now?", "Open Settings > Security.", &r.probe_token)
    };
    assert_eq!(c.store(judged).await.unwrap().into_inner().probe_correct, Some(false));

    // An expired token is refused and teaches nothing.
    let r = explore(&server, "support", "password reset steps please").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let e = c.store(probed("support", "password reset steps please", "x", &r.probe_token)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("expired"), "{}", e.message());
    let stats = c.stats(StatsRequest { namespace: "support".into() }).await.unwrap().into_inner();
    assert_eq!((stats.explores, stats.probes_correct, stats.probes_wrong), (3, 1, 1), "{stats:?}");
    server.stop().await;
}

#[tokio::test]
async fn feedback_refuses_a_wrong_hit_for_its_query_and_needs_the_write_grant() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    // Static mode: Feedback applies there too.
    let id = common::store(&mut c, store_req("faq", "How do I reset my password?", "Open Settings > Security.")).await;
    let query = "How can I reset my password?";
    assert!(lookup(&mut c, lookup_req("faq", query)).await.hit);
    let feedback = |query: &str, entry_id: &str, correct| FeedbackRequest {
        namespace: "faq".into(),
        entry_id: entry_id.into(),
        query: query.into(),
        correct,
    };
    let out = c.feedback(feedback(query, &id, false)).await.unwrap().into_inner();
    assert_eq!((out.observations, out.deleted), (1, false));
    let r = lookup(&mut c, lookup_req("faq", query)).await;
    assert!(!r.hit, "never served for that query again: {r:?}");
    assert!(lookup(&mut c, lookup_req("faq", "How do I reset my password please?")).await.hit, "others still hit");

    let e = c.feedback(feedback(query, "12345678", true)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.feedback(feedback(query, "abc", true)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e =
        c.feedback(FeedbackRequest { namespace: "nowhere".into(), ..feedback(query, &id, true) }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let stats = c.stats(StatsRequest { namespace: "faq".into() }).await.unwrap().into_inner();
    assert_eq!((stats.feedback_correct, stats.feedback_wrong), (0, 1));
    server.stop().await;

    // A reader may look up but not teach.
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::with_dirs(dir.path(), common::model_dir());
    args.tokens = vec![
        common::token_spec("reader", "r-token", &["faq"], &[]),
        common::token_spec("gw", "w-token", &["faq"], &["faq"]),
    ];
    let server = TestServer::start_with(args).await;
    let mut writer = common::authed(&server.channel, Some("w-token"));
    let id = writer.store(store_req("faq", "How do I reset my password?", "Settings")).await.unwrap().into_inner().id;
    let mut reader = common::authed(&server.channel, Some("r-token"));
    let e = reader.feedback(feedback(query, &id, false)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(writer.feedback(feedback(query, &id, false)).await.is_ok());
    server.stop().await;
}

#[tokio::test]
async fn what_was_learned_survives_a_restart_and_moves_with_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    verified_namespace(&server, "support", 0.01).await;
    common::store(&mut c, store_req("support", "Where is my card?", "card_arrival")).await;
    let r = explore(&server, "support", "Where is my card now?").await;
    let later = explore(&server, "support", "When will my card get here?").await;
    c.store(probed("support", "Where is my card now?", "card_arrival", &r.probe_token)).await.unwrap();
    let exported = |mut c: semcache::proto::semantic_cache_client::SemanticCacheClient<tonic::transport::Channel>| async move {
        let mut stream = c.export(ExportRequest { namespace: "support".into() }).await.unwrap().into_inner();
        let mut out = Vec::new();
        while let Some(e) = stream.message().await.unwrap() {
            out.push((e.query, e.evidence));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let before = exported(c.clone()).await;
    let probed_entry = before.iter().find(|(q, _)| q == "Where is my card?").unwrap();
    let evidence = probed_entry.1.clone().expect("the probed entry learned");
    assert_eq!(evidence.observations.len(), 1);
    assert!(evidence.observations[0].correct && evidence.observations[0].similarity > 0.5, "{evidence:?}");
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    assert_eq!(exported(c.clone()).await, before, "the evidence is back after a restart");
    let e = c.store(probed("support", "Where is my card now?", "card_arrival", &r.probe_token)).await;
    assert_eq!(e.unwrap_err().code(), Code::FailedPrecondition, "a used token stays used across a restart");
    let ok = c.store(probed("support", "When will my card get here?", "card_arrival", &later.probe_token)).await;
    assert_eq!(ok.unwrap().into_inner().probe_correct, Some(true), "an unused one still works after a restart");
    let with_two = exported(c.clone()).await;

    // semcache export | semcache import into another server keeps it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = TestServer::start(other_dir.path()).await;
    let file = dir.path().join("support.jsonl");
    let (addr, other_addr) = (format!("http://{}", server.addr), format!("http://{}", other.addr));
    let file_arg = file.to_str().unwrap();
    let (ok, _, stderr) = run(&["export", "--addr", &addr, "--namespace", "support", "--output", file_arg]).await;
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = run(&["import", file_arg, "--addr", &other_addr]).await;
    assert!(ok, "{stderr}");
    assert!(std::fs::read_to_string(&file).unwrap().contains("\"evidence\""));
    assert_eq!(exported(other.client.clone()).await, with_two, "imported with what it had learned");
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_banking77_stream_replayed_stays_within_its_error_bound() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let addr = format!("http://{}", server.addr);
    let stream = format!("{}/tests/fixtures/intent_stream/banking77_test_10_intents.jsonl", env!("CARGO_MANIFEST_DIR"));
    let plot = dir.path().join("stream.svg");
    let (ok, stdout, stderr) = run(&[
        "eval",
        "--addr",
        &addr,
        "--stream",
        &stream,
        "--orders",
        "1",
        "--thresholds",
        "0.86,0.9",
        "--error-bounds",
        "0.05",
        "--plot",
        plot.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("banking77_test_10_intents.jsonl: 399 lookups per replay"), "{stdout}");
    for row in ["| static 0.860 |", "| static 0.900 |", "| verified δ=0.05 |"] {
        assert!(stdout.contains(row), "{row} in {stdout}");
    }
    assert!(stdout.contains("verified δ=0.05: error rate") && stdout.contains("(within the bound)"), "{stdout}");
    let verified_hits: f64 = {
        let line = stdout.lines().find(|l| l.starts_with("| verified δ=0.05 |")).unwrap();
        line.split('|').nth(2).unwrap().trim().trim_end_matches('%').parse().unwrap()
    };
    assert!(verified_hits > 10.0, "it learned to serve: {verified_hits}% hits\n{stdout}");
    assert!(std::fs::read_to_string(&plot).unwrap().contains("verified δ=0.05"));
    server.stop().await;
}
