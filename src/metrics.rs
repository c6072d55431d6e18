//! The Prometheus endpoint (`--metrics-listen`, `GET /metrics`).
//!
//! Counts that the cache already keeps for `Stats` (lookups, hits, stores, evictions,
//! savings, entries, bytes per namespace) are read from it at scrape time rather than counted
//! twice; what only the edge sees (latency by outcome, how close misses came) and what only
//! the model thread sees (batch sizes) are histograms observed where they happen.

use crate::cache::{Cache, LookupOutcome, Stats};
use crate::store::Writability;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The label of the lookup-latency histogram.
type Outcome = [(&'static str, &'static str); 1];

/// Latency buckets from 0.1 ms to about 3.3 s: the exact path sits in the first few, a
/// forward pass around 10 ms, a queued burst in the hundreds.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Buckets of the batch-size histogram: 1, 2, 4, ... 256 texts.
pub fn batch_size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// Similarity buckets 0.0, 0.05, ... 1.0: where misses fall relative to the threshold.
fn similarity_histogram() -> Histogram {
    Histogram::new(linear_buckets(0.0, 0.05, 21))
}

pub struct Metrics {
    registry: Registry,
    lookup_seconds: Family<Outcome, Histogram, fn() -> Histogram>,
    miss_similarity: Histogram,
}

impl Metrics {
    /// `batch_sizes` is the histogram the model thread observes (see [`batch_size_histogram`]).
    pub fn new(cache: Arc<Cache>, batch_sizes: Histogram) -> Self {
        let mut registry = Registry::with_prefix("semcache");
        let lookup_seconds = Family::<Outcome, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "lookup_duration_seconds",
            "Lookup latency at the server, by outcome (exact_hit, semantic_hit, miss)",
            lookup_seconds.clone(),
        );
        let miss_similarity = similarity_histogram();
        registry.register(
            "miss_similarity",
            "Best candidate's cosine similarity on lookups that missed with a candidate",
            miss_similarity.clone(),
        );
        registry.register("embed_batch_size", "Texts per forward pass of the model", batch_sizes);
        registry.register_collector(Box::new(CacheCollector { cache }));
        Self { registry, lookup_seconds, miss_similarity }
    }

    /// Records one answered Lookup.
    pub fn observe_lookup(&self, outcome: &LookupOutcome, elapsed: Duration) {
        let label = match (&outcome.entry, outcome.exact) {
            (Some(_), true) => "exact_hit",
            (Some(_), false) => "semantic_hit",
            (None, _) => "miss",
        };
        self.lookup_seconds.get_or_create(&[("outcome", label)]).observe(elapsed.as_secs_f64());
        if outcome.entry.is_none() && outcome.nearest_id.is_some() {
            self.miss_similarity.observe(f64::from(outcome.similarity));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Reads the cache's counters at scrape time.
struct CacheCollector {
    cache: Arc<Cache>,
}

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

/// A sample's value: counts stay integers in the exposition, dollars do not.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Amount(f64),
}

type Rows<'a> = Vec<(Vec<(&'static str, &'a str)>, Value)>;

/// One part of a per-namespace count: its label value and how to read it.
type Split = (&'static str, fn(&Stats) -> Value);

/// One metric family: a descriptor and a value per label set (no labels: a single sample).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: &Rows,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        if labels.is_empty() {
            return sample(kind, *value, metric);
        }
        sample(kind, *value, metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn sample(kind: MetricType, value: Value, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
    match (kind, value) {
        (MetricType::Counter, Value::Count(v)) => ConstCounter::new(v).encode(encoder),
        (MetricType::Counter, Value::Amount(v)) => ConstCounter::new(v).encode(encoder),
        (_, Value::Count(v)) => ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(encoder),
        (_, Value::Amount(v)) => ConstGauge::new(v).encode(encoder),
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.cache.all_stats();
        let by_namespace = |value: fn(&Stats) -> Value| -> Rows {
            stats.iter().map(|(ns, s)| (vec![("namespace", ns.as_str())], value(s))).collect()
        };
        let by_namespace_and = |key: &'static str, values: [Split; 2]| -> Rows {
            let mut rows = Vec::new();
            for (ns, s) in &stats {
                for (label, value) in values {
                    rows.push((vec![("namespace", ns.as_str()), (key, label)], value(s)));
                }
            }
            rows
        };
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        let e = &mut encoder;
        family(e, "lookups", "Lookups answered", counter, &by_namespace(|s| Value::Count(s.lookups)))?;
        let hits = by_namespace_and(
            "kind",
            [("exact", |s| Value::Count(s.exact_hits)), ("semantic", |s| Value::Count(s.hits - s.exact_hits))],
        );
        family(e, "hits", "Lookups served from the cache, by path", counter, &hits)?;
        family(e, "misses", "Lookups that missed", counter, &by_namespace(|s| Value::Count(s.misses)))?;
        family(e, "stores", "Entries stored", counter, &by_namespace(|s| Value::Count(s.stores)))?;
        let evictions = by_namespace(|s| Value::Count(s.evictions));
        family(e, "evictions", "Entries evicted to respect a capacity", counter, &evictions)?;
        let expirations = by_namespace(|s| Value::Count(s.expirations));
        family(e, "expirations", "Expired entries purged", counter, &expirations)?;
        let tokens = by_namespace_and(
            "type",
            [("input", |s| Value::Count(s.saved_input_tokens)), ("output", |s| Value::Count(s.saved_output_tokens))],
        );
        let saved = "the hits saved, from the usage their entries were stored with";
        family(e, "saved_tokens", &format!("LLM tokens {saved}"), counter, &tokens)?;
        let cost = by_namespace(|s| Value::Amount(s.saved_cost_usd));
        family(e, "saved_cost_usd", &format!("Dollars {saved}"), counter, &cost)?;
        family(e, "entries", "Entries held", gauge, &by_namespace(|s| Value::Count(s.entries)))?;
        family(e, "bytes", "Stored size of the entries", gauge, &by_namespace(|s| Value::Count(s.bytes)))?;
        family(
            e,
            "explores",
            "Verified lookups answered EXPLORE",
            counter,
            &by_namespace(|s| Value::Count(s.explores)),
        )?;
        let probes = by_namespace_and(
            "verdict",
            [("correct", |s| Value::Count(s.probes_correct)), ("wrong", |s| Value::Count(s.probes_wrong))],
        );
        family(
            e,
            "probes",
            "Probe tokens returned with a Store, by whether the cached answer was right",
            counter,
            &probes,
        )?;
        let feedback = by_namespace_and(
            "verdict",
            [("correct", |s| Value::Count(s.feedback_correct)), ("wrong", |s| Value::Count(s.feedback_wrong))],
        );
        family(e, "feedback", "Feedback calls, by verdict", counter, &feedback)?;
        let rate = by_namespace(|s| Value::Amount(s.estimated_error_rate));
        let help = "Verified mode's estimate of wrong hits per lookup since start";
        family(e, "estimated_error_rate", help, gauge, &rate)?;
        let writable = Value::Count(u64::from(self.cache.writability() == Writability::Writable));
        let help = "1 while the data dir takes writes; 0 while Stores are refused (disk full or a failed write)";
        family(e, "storage_writable", help, gauge, &vec![(Vec::new(), writable)])?;
        let depth = Value::Count(self.cache.embed_queue_depth() as u64);
        family(e, "embed_queue_depth", "Texts waiting for the model", gauge, &vec![(Vec::new(), depth)])
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
