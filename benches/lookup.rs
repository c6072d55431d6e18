//! End to end over loopback gRPC, against the real server in this process (real model, real
//! RocksDB): the three lookup paths and 32-client throughput, each next to the in-process
//! figure it should approach, all measured in one run so that the ratios hold on any machine.
//!
//! `cargo bench --bench lookup`. Needs the model (`models/fetch.sh`).
//! `SEMCACHE_LOOKUP_SAMPLES` (default 300) sets requests per latency figure,
//! `SEMCACHE_LOOKUP_LOAD` (default 2000) the lookups of the throughput run.
//!
//! Not criterion: the targets are percentiles (p50) and ratios between figures of one run.

use semcache::client::{self, Client, ClientArgs};
use semcache::config::ServeArgs;
use semcache::embed::{ModelInfo, SentenceModel};
use semcache::index::{IndexParams, Partition};
use semcache::loadgen::{self, Latencies, LoadConfig};
use semcache::proto::{ConfigureNamespaceRequest, LookupRequest, StoreRequest};
use semcache::store::keys;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "bench";
/// The same entries in verified mode (error bound 0.01).
const VERIFIED: &str = "bench-verified";
const STORED: &str = "How do I reset my password?";
const PARAPHRASE: &str = "I forgot my password, how can I change it?";
/// Unrelated to everything stored: a miss, embedded anew every time (misses are not cached).
const MISS: &str = "What is the boiling point of water at high altitude in the mountains?";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A quantile in milliseconds.
fn ms(l: &Latencies, p: f64) -> f64 {
    l.quantile(p).expect("samples").as_secs_f64() * 1e3
}

fn row(name: &str, l: &Latencies) -> String {
    format!("{name:<34} {:>9.3} {:>9.3} {:>9.3}", ms(l, 0.5), ms(l, 0.95), ms(l, 0.99))
}

fn time_each(n: u64, mut f: impl FnMut()) -> Latencies {
    for _ in 0..n.div_ceil(10) {
        f(); // warm-up
    }
    Latencies::new(
        (0..n)
            .map(|_| {
                let started = Instant::now();
                f();
                started.elapsed()
            })
            .collect(),
    )
}

fn lookup(rt: &tokio::runtime::Runtime, client: &Client, query: &str) -> bool {
    lookup_in(rt, client, NAMESPACE, query).hit
}

fn lookup_in(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    namespace: &str,
    query: &str,
) -> semcache::proto::LookupResponse {
    let mut client = client.clone();
    let request = LookupRequest { namespace: namespace.into(), query: query.into(), ..Default::default() };
    rt.block_on(client.lookup(request)).expect("lookup").into_inner()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let samples = env_or("SEMCACHE_LOOKUP_SAMPLES", 300);
    let load_requests = env_or("SEMCACHE_LOOKUP_LOAD", 2000);
    let model_dir = std::env::var_os("SEMCACHE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/all-MiniLM-L6-v2")));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // The server, on its own runtime as in `semcache serve`.
    let data = tempfile::tempdir().expect("temp dir");
    let server_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("server runtime");
    let listener = server_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    let addr = ClientArgs::plain(format!("http://{}", listener.local_addr().expect("addr")));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let args = ServeArgs::with_dirs(data.path(), &model_dir);
    let server = server_rt.spawn(semcache::server::run(args, listener, async {
        let _ = stopped.await;
    }));

    // The client side on a separate runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let client = rt.block_on(async {
        for _ in 0..3000 {
            if let Ok(mut c) = client::connect(&addr).await {
                let ok = c
                    .store(StoreRequest {
                        namespace: NAMESPACE.into(),
                        query: STORED.into(),
                        response: "Use the 'Forgot password' link on the sign-in page.".into(),
                        ..Default::default()
                    })
                    .await;
                if ok.is_ok() {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the server did not start serving within 60 s");
    });
    let config = LoadConfig {
        clients: 32,
        requests: load_requests,
        hit_ratio: 0.0,
        entries: 100,
        namespace: NAMESPACE.into(),
        batch: 1,
    };
    rt.block_on(loadgen::seed(&mut client.clone(), &config)).expect("seed");
    // The verified namespace: the same entries; it has learned nothing, so the paraphrase is
    // explored (the whole decision, plus signing a probe token) where the static one hits.
    rt.block_on(async {
        let mut c = client.clone();
        let verified =
            ConfigureNamespaceRequest { name: VERIFIED.into(), error_bound: Some(0.01), ..Default::default() };
        c.configure_namespace(verified).await.expect("configure");
        loadgen::seed(&mut c, &LoadConfig { namespace: VERIFIED.into(), ..config.clone() }).await.expect("seed");
        let stored = StoreRequest {
            namespace: VERIFIED.into(),
            query: STORED.into(),
            response: "x".into(),
            ..Default::default()
        };
        c.store(stored).await.expect("store");
    });
    assert!(lookup(&rt, &client, PARAPHRASE), "the paraphrase must hit at the default threshold");
    assert!(!lookup(&rt, &client, MISS), "the miss query must miss");

    // In-process model, on a pool of the same size as the server's, for the reference figures.
    let info = ModelInfo::read(&model_dir).expect("model");
    let model = SentenceModel::load(&model_dir, info, candle_core::Device::Cpu).expect("load model");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
    // The miss path and the in-process embed of its query, alternated so that both see the
    // same machine state.
    let (mut embed, mut miss) = (Vec::new(), Vec::new());
    for i in 0..samples + samples / 10 {
        let started = Instant::now();
        pool.install(|| model.embed(&[MISS]).expect("embed"));
        let embedded = started.elapsed();
        let started = Instant::now();
        assert!(!lookup(&rt, &client, MISS));
        if i >= samples / 10 {
            embed.push(embedded);
            miss.push(started.elapsed());
        }
    }
    let (embed, miss) = (Latencies::new(embed), Latencies::new(miss));
    // Parts of a miss, one at a time: tokenising, the forward pass, and an exact scan of a
    // partition at the exact-scan limit (the largest one not searched through a graph).
    let tokenize = time_each(samples, || {
        model.tokenize(MISS).expect("tokenize");
    });
    let tokens = model.tokenize(MISS).expect("tokenize");
    let forward = time_each(samples, || {
        pool.install(|| model.embed_tokenized(&[&tokens]).expect("forward"));
    });
    let query = model.embed(&[MISS]).expect("embed").remove(0);
    let scan_limit = IndexParams::default().flat_limit;
    let scan = Partition::from_vectors(
        Arc::from("scan"),
        keys::scope_id(&Default::default()),
        query.len(),
        IndexParams::default(),
        (1..=scan_limit as u64).map(|id| (id, semcache::rng::unit_vector(id, query.len()))).collect(),
    );
    let search = time_each(samples, || {
        scan.search(&query, 4);
    });
    // The same kind of questions the throughput run sends, 32 at a time.
    let fresh = 1_000_000;
    let questions: Vec<String> = (0..32).map(|i| loadgen::question(fresh + i)).collect();
    let batch: Vec<&str> = questions.iter().map(String::as_str).collect();
    let batch32 = time_each(20, || {
        pool.install(|| model.embed(&batch).expect("embed"));
    });
    let batched_per_s = 32.0 * 1e3 / ms(&batch32, 0.5);
    drop(model);

    let semantic = time_each(samples, || assert!(lookup(&rt, &client, PARAPHRASE)));
    // Static and verified semantic lookups, alternated so that both see the same machine state.
    let (mut static_mode, mut verified_mode) = (Vec::new(), Vec::new());
    for i in 0..samples + samples / 10 {
        let started = Instant::now();
        assert!(lookup(&rt, &client, PARAPHRASE));
        let a = started.elapsed();
        let started = Instant::now();
        let r = lookup_in(&rt, &client, VERIFIED, PARAPHRASE);
        let b = started.elapsed();
        assert!(!r.probe_token.is_empty(), "an unlearned verified namespace explores: {r:?}");
        if i >= samples / 10 {
            static_mode.push(a);
            verified_mode.push(b);
        }
    }
    let (static_mode, verified_mode) = (Latencies::new(static_mode), Latencies::new(verified_mode));
    let exact = time_each(samples * 10, || assert!(lookup(&rt, &client, STORED)));

    let report = rt.block_on(loadgen::run(&addr, &config, fresh + 10_000, &|| {})).expect("throughput run");
    assert_eq!(report.refused, 0, "the default queue must absorb 32 clients");

    println!("\nlookup over loopback gRPC, {threads} model threads; latency in ms ({samples} requests each)");
    println!("{:<34} {:>9} {:>9} {:>9}", "", "p50", "p95", "p99");
    println!("{}", row("in-process embed of the miss query", &embed));
    println!("{}", row("miss lookup (same query)", &miss));
    println!("{}", row("semantic hit lookup (paraphrase)", &semantic));
    println!("{}", row("exact-repeat hit lookup", &exact));
    println!("{}", row("semantic, static (alternated)", &static_mode));
    println!("{}", row("semantic, verified (alternated)", &verified_mode));
    println!("{}", row("in-process embed, batch of 32", &batch32));
    println!(
        "\n32 clients, {} misses: {:.1} lookups/s (p50 {:.1} ms, p99 {:.1} ms); best batched embed {:.1} texts/s",
        report.answered(),
        report.throughput(),
        ms(&report.all(), 0.5),
        ms(&report.all(), 0.99),
        batched_per_s
    );
    println!(
        "\nwhere a miss goes (p50, ms): tokenise {:.3}, forward pass {:.3}, exact scan of {scan_limit} vectors {:.3};",
        ms(&tokenize, 0.5),
        ms(&forward, 0.5),
        ms(&search, 0.5)
    );
    println!(
        "  an exact-repeat hit (gRPC round trip, validation, two RocksDB reads) {:.3}; the rest of the miss, {:.3}, is gRPC, RocksDB and waking threads around the model call",
        ms(&exact, 0.5),
        ms(&miss, 0.5) - ms(&tokenize, 0.5) - ms(&forward, 0.5) - ms(&exact, 0.5)
    );
    println!("\nratios (targets in brackets)");
    println!("miss p50 / embed p50            {:.3}  [<= 1.10]", ms(&miss, 0.5) / ms(&embed, 0.5));
    println!("32-client / batched throughput  {:.3}  [>= 0.85]", report.throughput() / batched_per_s);
    println!("exact-repeat hit p50            {:.3} ms  [<= 0.3 ms]", ms(&exact, 0.5));
    println!("verified / static lookup p50    {:.3}  [<= 1.05]", ms(&verified_mode, 0.5) / ms(&static_mode, 0.5));

    let _ = stop.send(());
    server_rt.block_on(server).expect("server task").expect("server");
}
