//! BatchLookup and BatchStore: each element answered exactly as the single call answers it, a
//! bad element refusing the whole call before anything is done, and what batching buys.

use crate::harness as common;

use common::{lookup_req, model_dir, store_req, TestServer};
use semcache::config::ServeArgs;
use semcache::grpc::routing::NAMESPACE_HEADER;
use semcache::proto::*;
use std::time::{Duration, Instant};
use tonic::{Code, Request};

const NS: &str = "batch";

fn questions(tag: &str, n: usize) -> Vec<String> {
    const THINGS: [&str; 8] = ["password", "invoice", "parcel", "refund", "address", "plan", "card", "email"];
    (0..n).map(|i| format!("{tag} {i}: how do I update the {} on my account?", THINGS[i % THINGS.len()])).collect()
}

fn lookups(ns: &str, queries: &[String]) -> BatchLookupRequest {
    BatchLookupRequest { requests: queries.iter().map(|q| lookup_req(ns, q)).collect() }
}

/// What must be equal between a single and a batched answer (the hit count moves with every
/// answer, and a batched forward pass may differ from a single one in the last bits).
fn gist(r: &LookupResponse) -> (bool, Option<String>, Option<String>, String, i32, i64) {
    let entry = r.entry.as_ref();
    (
        r.hit,
        entry.map(|e| e.id.clone()),
        entry.map(|e| e.response.clone()),
        r.nearest_id.clone(),
        r.miss_reason,
        (r.similarity * 1e3).round() as i64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_answer_element_by_element_as_single_calls_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = ServeArgs::with_dirs(dir.path(), model_dir());
    args.max_batch_requests = 64;
    let server = TestServer::start_with(args).await;
    let mut c = server.client.clone();

    let stored = questions("stored", 12);
    let batch =
        BatchStoreRequest { requests: stored.iter().map(|q| store_req(NS, q, &format!("answer to {q}"))).collect() };
    let ids: Vec<String> =
        c.batch_store(batch).await.unwrap().into_inner().responses.into_iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), stored.len());
    for (q, id) in stored.iter().zip(&ids) {
        let r = c.lookup(lookup_req(NS, q)).await.unwrap().into_inner();
        assert_eq!(r.entry.map(|e| e.id), Some(id.clone()), "stored in request order: {q}");
    }

    // Exact repeats, paraphrases, unrelated questions and an empty namespace, mixed.
    let mut queries: Vec<String> = stored.iter().step_by(3).cloned().collect();
    queries.extend(stored.iter().skip(1).step_by(3).map(|q| q.replace("how do I update", "how can I change")));
    queries.extend(["Which vaccines does a puppy need?".to_string(), "What is the capital of Peru?".to_string()]);
    let singles: Vec<LookupResponse> = {
        let mut out = Vec::new();
        for q in &queries {
            out.push(c.lookup(lookup_req(NS, q)).await.unwrap().into_inner());
        }
        out
    };
    let batched = c.batch_lookup(lookups(NS, &queries)).await.unwrap().into_inner().responses;
    assert_eq!(batched.len(), queries.len());
    for ((q, single), batched) in queries.iter().zip(&singles).zip(&batched) {
        assert_eq!(gist(single), gist(batched), "{q}");
    }
    assert!(singles.iter().any(|r| r.hit) && singles.iter().any(|r| !r.hit), "both kinds were compared");
    let mut mixed = lookups(NS, &queries[..2]);
    mixed.requests.push(lookup_req("nowhere", "anything at all"));
    let r = c.batch_lookup(mixed).await.unwrap().into_inner().responses;
    assert_eq!(r[2].miss_reason, MissReason::Empty as i32, "an element of an unknown namespace misses as alone");

    // A bad element refuses the whole call, naming it, and nothing of the batch is stored.
    let before = c.stats(StatsRequest { namespace: NS.into() }).await.unwrap().into_inner().stores;
    let mut bad =
        BatchStoreRequest { requests: questions("bad", 5).iter().map(|q| store_req(NS, q, "an answer")).collect() };
    bad.requests[3].query = "   ".into();
    let e = c.batch_store(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("requests[3]: "), "{}", e.message());
    let after = c.stats(StatsRequest { namespace: NS.into() }).await.unwrap().into_inner().stores;
    assert_eq!(after, before, "no element of a refused batch was stored");
    let e = c.batch_lookup(lookups(NS, &questions("many", 65))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("--max-batch-requests"), "{}", e.message());
    assert_eq!(c.batch_lookup(BatchLookupRequest::default()).await.unwrap_err().code(), Code::InvalidArgument);

    // Behind a proxy every element must be of the header's namespace.
    let mut routed = Request::new(BatchLookupRequest { requests: vec![lookup_req(NS, "a"), lookup_req("other", "b")] });
    routed.metadata_mut().insert(NAMESPACE_HEADER, NS.parse().unwrap());
    let e = c.batch_lookup(routed).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("requests[1]: ") && e.message().contains("other"), "{}", e.message());
}

/// 64 new questions in one BatchLookup against 64 sequential Lookups, in one run: the batch is
/// embedded in two forward passes of 32 instead of 64 passes of one. Reported, not asserted
/// beyond "faster" (timings are the benchmarks' business).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_of_64_lookups_beats_64_sequential_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client.clone();
    c.store(store_req(NS, "How do I reset my password?", "Settings > Security")).await.unwrap();
    let (mut sequential, mut batched) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let started = Instant::now();
        for q in questions(&format!("sequential round {round}"), 64) {
            c.lookup(lookup_req(NS, &q)).await.unwrap();
        }
        sequential.push(started.elapsed());
        let started = Instant::now();
        let r = c.batch_lookup(lookups(NS, &questions(&format!("batched round {round}"), 64))).await.unwrap();
        batched.push(started.elapsed());
        assert_eq!(r.into_inner().responses.len(), 64);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (s, b) = (median(sequential.clone()), median(batched.clone()));
    println!(
        "64 new lookups: sequential {:.0} ms (rounds {:?}), one BatchLookup {:.0} ms (rounds {:?}): {:.2}x",
        s.as_secs_f64() * 1e3,
        sequential.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        b.as_secs_f64() * 1e3,
        batched.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
        s.as_secs_f64() / b.as_secs_f64()
    );
    assert!(b < s, "a batch must not be slower than the same lookups one by one");
}
