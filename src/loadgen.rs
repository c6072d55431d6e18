//! The load generator behind `semcache bench`: N concurrent gRPC clients send a fixed number
//! of lookups to a running server, a given share of them exact repeats of stored queries
//! (hits) and the rest questions never seen before (misses, which run the model), and report
//! throughput and latency percentiles. It is a plain client of the public API, so it measures
//! what a gateway would see, network stack included.

use crate::client::routed;
use crate::client::{self, Client, ClientArgs, ClientError};
use crate::proto::{BatchLookupRequest, DropNamespaceRequest, LookupRequest, StoreRequest};
use futures_util::StreamExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::Code;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Concurrent clients, each on its own connection, each with one request in flight.
    pub clients: usize,
    /// Lookups in all.
    pub requests: u64,
    /// Share of lookups that repeat a stored query word for word, in [0, 1].
    pub hit_ratio: f64,
    /// Stored queries the repeats are drawn from.
    pub entries: u64,
    pub namespace: String,
    /// Lookups per call: 1 sends Lookup, more send BatchLookups of that many (each element's
    /// latency is its batch's).
    pub batch: usize,
}

/// Latencies of one kind of request, sorted.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `p`-quantile (0..=1) by nearest rank, or `None` without samples.
    pub fn quantile(&self, p: f64) -> Option<Duration> {
        let last = self.0.len().checked_sub(1)?;
        let rank = (p.clamp(0.0, 1.0) * last as f64).round() as usize;
        Some(self.0[rank])
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub elapsed: Duration,
    pub hits: Latencies,
    pub misses: Latencies,
    /// Refused with RESOURCE_EXHAUSTED (the server's queue was full).
    pub refused: u64,
    /// Any other error, by code.
    pub errors: Vec<(Code, u64)>,
}

impl LoadReport {
    pub fn answered(&self) -> u64 {
        (self.hits.len() + self.misses.len()) as u64
    }

    /// Answered lookups per second.
    pub fn throughput(&self) -> f64 {
        self.answered() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn all(&self) -> Latencies {
        Latencies::new(self.hits.0.iter().chain(&self.misses.0).copied().collect())
    }
}

const ASK: [&str; 8] = [
    "How do I",
    "What is the best way to",
    "Can you explain how to",
    "Is it possible to",
    "What should I do to",
    "Why is it so hard to",
    "Give me steps to",
    "Where can I learn to",
];
const ACT: [&str; 10] =
    ["reset", "configure", "cancel", "upgrade", "back up", "migrate", "share", "repair", "renew", "export"];
const THING: [&str; 10] = [
    "my account password",
    "a shared calendar",
    "the monthly subscription",
    "a wireless router",
    "my phone's contacts",
    "the company database",
    "a family photo album",
    "the kitchen dishwasher",
    "my car insurance",
    "a Python virtual environment",
];
const WHEN: [&str; 8] = [
    "without losing any data",
    "before the end of the month",
    "on a Linux laptop",
    "when I am travelling abroad",
    "if the support line is closed",
    "for a small team of ten",
    "using only the mobile app",
    "after moving to a new city",
];

/// A distinct, realistic question for every `n` (about 15-20 tokens, like a chat query).
pub fn question(n: u64) -> String {
    let (a, r) = (n % 8, n / 8);
    let (b, r) = (r % 10, r / 10);
    let (c, r) = (r % 10, r / 10);
    let (d, r) = (r % 8, r / 8);
    let tail = if r == 0 { String::new() } else { format!(" (case {r})") };
    format!("{} {} {} {}{tail}?", ASK[a as usize], ACT[b as usize], THING[c as usize], WHEN[d as usize])
}

/// Whether lookup `i` of a run repeats a stored query: an even spread at the given ratio.
fn is_repeat(i: u64, ratio: f64) -> bool {
    let ratio = ratio.clamp(0.0, 1.0);
    ((i + 1) as f64 * ratio).floor() > (i as f64 * ratio).floor()
}

/// Stores the queries that repeats will hit (the first `entries` questions).
pub async fn seed(client: &mut Client, config: &LoadConfig) -> Result<(), ClientError> {
    for n in 0..config.entries {
        client
            .store(routed(StoreRequest {
                namespace: config.namespace.clone(),
                query: question(n),
                response: format!("Cached answer number {n}: a few sentences an LLM wrote earlier."),
                ..Default::default()
            }))
            .await?;
    }
    Ok(())
}

pub async fn drop_namespace(client: &mut Client, namespace: &str) -> Result<u64, ClientError> {
    Ok(client.drop_namespace(routed(DropNamespaceRequest { name: namespace.into() })).await?.into_inner().deleted)
}

/// Runs the load. `fresh` picks where the never-seen questions start, so runs against the same
/// server do not repeat each other's misses; `progress` is called after every answered lookup.
/// Refusals and errors are counted, not returned: a run under overload is still a result.
pub async fn run(
    server: &ClientArgs,
    config: &LoadConfig,
    fresh: u64,
    progress: &(dyn Fn() + Send + Sync),
) -> Result<LoadReport, ClientError> {
    let clients = config.clients.max(1);
    // One connection per client, each with at most one lookup in flight: what `clients`
    // gateways would see, rather than many streams multiplexed over one HTTP/2 connection.
    let mut idle = Vec::with_capacity(clients);
    for _ in 0..clients {
        idle.push(client::connect(server).await?);
    }
    let idle = Mutex::new(idle);
    let batch = config.batch.max(1) as u64;
    let lookup = |first: u64| {
        let requests: Vec<LookupRequest> = (first..(first + batch).min(config.requests))
            .map(|i| {
                let repeat = is_repeat(i, config.hit_ratio) && config.entries > 0;
                let query = if repeat { question(i % config.entries) } else { question(fresh + i) };
                LookupRequest { namespace: config.namespace.clone(), query, ..Default::default() }
            })
            .collect();
        let idle = &idle;
        async move {
            // `buffer_unordered(clients)` starts a call only while fewer than `clients` run,
            // and each puts its connection back before it counts as done: one is always idle.
            let mut client = idle.lock().expect("idle lock").pop().expect("an idle connection");
            let sent = Instant::now();
            let answers = if batch == 1 {
                let request = requests.into_iter().next().expect("one lookup");
                client.lookup(routed(request)).await.map(|r| vec![r.into_inner().hit])
            } else {
                let request = BatchLookupRequest { requests };
                client
                    .batch_lookup(routed(request))
                    .await
                    .map(|r| r.into_inner().responses.iter().map(|r| r.hit).collect())
            };
            let took = sent.elapsed();
            idle.lock().expect("idle lock").push(client);
            (took, answers)
        }
    };
    let started = Instant::now();
    let mut answers =
        futures_util::stream::iter((0..config.requests).step_by(batch as usize)).map(lookup).buffer_unordered(clients);
    let (mut hits, mut misses, mut refused, mut errors) = (Vec::new(), Vec::new(), 0, Vec::<(Code, u64)>::new());
    while let Some((took, answer)) = answers.next().await {
        match answer {
            Ok(answered) => {
                for hit in answered {
                    if hit { &mut hits } else { &mut misses }.push(took);
                    progress();
                }
            }
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => match errors.iter_mut().find(|(c, _)| *c == s.code()) {
                Some((_, n)) => *n += 1,
                None => errors.push((s.code(), 1)),
            },
        }
    }
    Ok(LoadReport {
        elapsed: started.elapsed(),
        hits: Latencies::new(hits),
        misses: Latencies::new(misses),
        refused,
        errors,
    })
}

/// The report as a small table, durations in milliseconds.
pub fn render(report: &LoadReport) -> String {
    let ms = |d: Option<Duration>| d.map_or_else(|| "-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
    let mut out = format!(
        "{} lookups answered in {:.2} s: {:.1} lookups/s\n{:<6} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
        report.answered(),
        report.elapsed.as_secs_f64(),
        report.throughput(),
        "",
        "count",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms"
    );
    for (name, l) in [("all", &report.all()), ("hit", &report.hits), ("miss", &report.misses)] {
        out += &format!(
            "{name:<6} {:>8} {:>9} {:>9} {:>9} {:>9}\n",
            l.len(),
            ms(l.quantile(0.5)),
            ms(l.quantile(0.95)),
            ms(l.quantile(0.99)),
            ms(l.quantile(1.0))
        );
    }
    out += &format!("refused (RESOURCE_EXHAUSTED): {}", report.refused);
    for (code, n) in &report.errors {
        out += &format!("; {code:?}: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_distinct() {
        let all: std::collections::HashSet<String> = (0..20_000).map(question).collect();
        assert_eq!(all.len(), 20_000);
    }

    #[test]
    fn repeats_follow_the_ratio_evenly() {
        for ratio in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let repeats = (0..1000).filter(|&i| is_repeat(i, ratio)).count();
            assert_eq!(repeats, (1000.0 * ratio) as usize, "ratio {ratio}");
        }
        // Spread out, not front-loaded.
        assert_eq!((0..10).filter(|&i| is_repeat(i, 0.5)).count(), 5);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(l.quantile(0.5), Some(Duration::from_micros(51)));
        assert_eq!(l.quantile(0.99), Some(Duration::from_micros(99)));
        assert_eq!(l.quantile(1.0), Some(Duration::from_micros(100)));
        assert_eq!(Latencies::default().quantile(0.5), None);
    }
}
