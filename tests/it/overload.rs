//! Overload against the real binary: far more concurrent requests than it admits. The excess
//! must be refused with RESOURCE_EXHAUSTED, sooner than the admitted calls are answered; the
//! admitted ones must succeed; and the server's memory must not grow with what was offered.

use crate::harness as common;

use common::process::{rss_of, Server};
use common::{lookup_req, store_req};
use semcache::proto::semantic_cache_client::SemanticCacheClient;
use semcache::proto::StatsRequest;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

const REQUESTS: usize = 4000;
const CONNECTIONS: usize = 20;
const IN_FLIGHT: usize = 32;
/// Each lookup carries the largest query the server accepts by default (--max-query-bytes):
/// 4000 of them offer 128 MiB at once.
const QUERY_BYTES: usize = 32 * 1024;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[derive(Default)]
struct Burst {
    ok: Vec<Duration>,
    refused: Vec<Duration>,
    by_limit: std::collections::BTreeMap<&'static str, usize>,
}

/// `n` lookups at once, spread over the connections; each carries a query of QUERY_BYTES.
async fn burst(clients: &[SemanticCacheClient<Channel>], n: usize, tag: &str) -> Burst {
    let filler = "why does the cache refuse so much traffic ".repeat(QUERY_BYTES / 43);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut c = clients[i % clients.len()].clone();
            let mut query = format!("{tag} {i} {filler}");
            query.truncate(QUERY_BYTES);
            tokio::spawn(async move {
                let sent = Instant::now();
                let result = c.lookup(lookup_req("load", &query)).await;
                (result.map(|_| ()), sent.elapsed())
            })
        })
        .collect();
    let mut b = Burst::default();
    for t in tasks {
        match t.await.unwrap() {
            (Ok(()), took) => b.ok.push(took),
            (Err(s), took) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                let limit = ["--max-in-flight", "--max-queue"].into_iter().find(|l| s.message().contains(l));
                *b.by_limit.entry(limit.unwrap_or_else(|| panic!("{}", s.message()))).or_insert(0) += 1;
                b.refused.push(took);
            }
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_is_refused_quickly_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let in_flight = IN_FLIGHT.to_string();
    let (server, channel) = Server::start(
        &dir.path().join("data"),
        dir.path().join("server.log"),
        &["--max-in-flight", &in_flight, "--max-queue", "64"],
    )
    .await;
    let mut c = SemanticCacheClient::new(channel);
    // Lookups in an empty namespace need no model; this one has an entry, so each is embedded.
    c.store(store_req("load", "How do I reset my password?", "Use the link.")).await.unwrap();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let ch = Endpoint::from_shared(server.url()).unwrap().connect().await.unwrap();
        clients.push(SemanticCacheClient::new(ch));
    }

    let pid = server.child.id();
    let rss_start = rss_of(pid);
    let peak = Arc::new(AtomicU64::new(rss_start));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_of(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // A full server: exactly as many calls as it admits, all served. Its peak is what the
    // admitted work costs.
    let full = burst(&clients, IN_FLIGHT, "full").await;
    assert_eq!(full.ok.len(), IN_FLIGHT, "refused within the limits: {:?}", full.by_limit);
    let peak_full = peak.load(Ordering::Relaxed);
    // Then far more than it admits.
    let over = burst(&clients, REQUESTS, "over").await;
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak_over = peak.load(Ordering::Relaxed);
    let offered = (REQUESTS * QUERY_BYTES) as u64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{REQUESTS} lookups of {} KiB at once ({:.0} MiB offered) on {CONNECTIONS} connections, --max-in-flight \
         {IN_FLIGHT}: {} served (median {:?}), {} refused {:?} (median {:?}); RSS at start {:.0} MiB, peak with \
         {IN_FLIGHT} in flight {:.0} MiB, peak under overload {:.0} MiB",
        QUERY_BYTES / 1024,
        mib(offered),
        over.ok.len(),
        median(over.ok.clone()),
        over.refused.len(),
        over.by_limit,
        median(over.refused.clone()),
        mib(rss_start),
        mib(peak_full),
        mib(peak_over),
    );
    assert!(
        !over.ok.is_empty() && !over.refused.is_empty(),
        "served {}, refused {}",
        over.ok.len(),
        over.refused.len()
    );
    assert!(median(over.refused.clone()) < median(over.ok.clone()), "refusals must come back sooner than answers");
    let grew = peak_over.saturating_sub(peak_full);
    assert!(
        grew < offered / 4,
        "RSS grew {grew} bytes beyond a full server's for {offered} offered: requests are buffered"
    );

    // Still serving; the lookups counted are those admitted past the in-flight limit (a full
    // model queue refuses a lookup that was already counted).
    let stats = c.stats(StatsRequest::default()).await.unwrap().into_inner();
    let counted = full.ok.len() + over.ok.len() + over.by_limit.get("--max-queue").copied().unwrap_or(0);
    assert_eq!(stats.lookups, counted as u64);
    assert!(c.lookup(lookup_req("load", "How do I reset my password?")).await.unwrap().into_inner().hit);
    server.terminate().await;
}
