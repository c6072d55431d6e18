//! Faults beyond kill -9, on the real binary: a full disk (before and during a run), a failing
//! fsync and a failing write, a damaged SST, a torn WAL tail and a read-only data dir.
//!
//! A full disk is real: the data dir sits on a small tmpfs (CI runs as root; elsewhere the
//! test says it skipped). Failing fsyncs and writes are injected into the running server by
//! `strace --inject` attached from outside, so neither the binary nor RocksDB is changed for
//! the test: the server meets the very errors a failing disk returns.
//!
//! Every test ends the same way: the server stopped, RocksDB opened directly, and every
//! acknowledged Store found there, with the index the server rebuilt at start as large as
//! RocksDB.

use crate::harness as common;

use common::process::Server;
use common::{http_get, lookup_req, sample, store_req};
use semcache::proto::semantic_cache_client::SemanticCacheClient;
use semcache::proto::StatsRequest;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

const NS: &str = "faults";

/// A tmpfs mounted at `dir` for the test's lifetime.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` where mounting is not allowed (not root, or no CAP_SYS_ADMIN in a container).
    fn mount(dir: &Path, mib: u64) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self { dir: dir.to_owned() })
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.dir).status().unwrap();
        assert!(status.success(), "mount -o remount,{options} {}", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// Text that lz4 cannot shrink, so that bytes stored are bytes on disk.
fn noise(seed: u64, len: usize) -> String {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b"abcdefghijklmnopqrstuvwxyz0123456789 "[(state % 37) as usize])
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Ack {
    id: String,
    query: String,
    response: String,
}

fn question(i: usize) -> String {
    format!("ticket {i}: how do I move invoice {i} to another billing account?")
}

/// Stores entry `i` with a response of `bytes`; `Ok` is an acknowledgement.
async fn store_one(client: &mut SemanticCacheClient<Channel>, i: usize, bytes: usize) -> Result<Ack, tonic::Status> {
    let (query, response) = (question(i), format!("answer {i}: {}", noise(i as u64, bytes)));
    let id = client.store(store_req(NS, &query, &response)).await?.into_inner().id;
    Ok(Ack { id, query, response })
}

/// Every acknowledged entry must come back as an exact hit with its own id and response.
async fn assert_all_hit(client: &mut SemanticCacheClient<Channel>, acked: &[Ack], when: &str) {
    for ack in acked {
        let r = client.lookup(lookup_req(NS, &ack.query)).await.unwrap_or_else(|s| panic!("{when}: lookup: {s}"));
        let r = r.into_inner();
        let entry = r.entry.unwrap_or_else(|| panic!("{when}: {} missed (similarity {})", ack.query, r.similarity));
        assert_eq!((&entry.id, &entry.response), (&ack.id, &ack.response), "{when}: {}", ack.query);
    }
}

async fn entries(client: &mut SemanticCacheClient<Channel>) -> u64 {
    client.stats(StatsRequest { namespace: String::new() }).await.unwrap().into_inner().entries
}

/// After the server stopped: RocksDB holds every acknowledged Store, and exactly as many entries
/// as the server counted (the index and ledger are rebuilt from it).
fn assert_on_disk(data: &Path, acked: &[Ack], served: u64) {
    let store = semcache::store::Store::open(data).expect("open the data dir after the server stopped");
    let on_disk: HashMap<String, semcache::store::EntryRecord> =
        store.scan_all().map(|e| e.expect("decode entry")).map(|e| (e.id.to_string(), e)).collect();
    for ack in acked {
        let entry = on_disk.get(&ack.id).unwrap_or_else(|| panic!("acknowledged entry {} is not in RocksDB", ack.id));
        assert_eq!(entry.response, ack.response);
    }
    assert_eq!(on_disk.len() as u64, served, "RocksDB and the server disagree on the number of entries");
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn writable_metric(metrics: SocketAddr) -> f64 {
    sample(&http_get(metrics, "/metrics").await, "semcache_storage_writable")
}

/// Fills the file system of `path` to the last byte with one file there.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 1 << 16];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
}

/// What RocksDB's own log says about errors and recovery, for a failure message.
fn rocksdb_log(data: &Path) -> String {
    let log = std::fs::read_to_string(data.join("LOG")).unwrap_or_default();
    let lines: Vec<&str> =
        log.lines().filter(|l| l.contains("rror") || l.contains("ecover") || l.contains("space")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Retries a Store every 200 ms until one is acknowledged; how long that took.
async fn until_stored(
    client: &mut SemanticCacheClient<Channel>,
    data: &Path,
    i: usize,
    within: Duration,
) -> (Ack, Duration) {
    let started = Instant::now();
    loop {
        match store_one(client, i, 1000).await {
            Ok(ack) => return (ack, started.elapsed()),
            Err(s) => assert!(
                started.elapsed() < within,
                "Stores still refused {within:?} after space was freed: {s}\nRocksDB's log:\n{}",
                rocksdb_log(data)
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_stores_serves_lookups_and_takes_writes_again_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), 64) else {
        return skipped("full disk", "cannot mount a tmpfs here (needs root)");
    };
    let data = disk.dir.join("data");
    // Something else on the same disk that an operator can delete to make room.
    let operators_file = disk.dir.join("old-logs");
    std::fs::write(&operators_file, noise(7, 24 << 20)).unwrap();
    let metrics = free_port();
    let metrics_arg = metrics.to_string();
    let args = ["--metrics-listen", &metrics_arg, "--sweep-interval-ms", "100"];
    let log = tmp.path().join("full.log");
    let (server, channel) = Server::start(&data, log.clone(), &args).await;
    let mut client = SemanticCacheClient::new(channel);

    let mut acked = Vec::new();
    let refused = loop {
        match store_one(&mut client, acked.len(), 200 << 10).await {
            Ok(ack) => acked.push(ack),
            Err(status) => break status,
        }
        assert!(acked.len() < 1000, "a 64 MiB disk took 200 MB");
    };
    println!("disk full after {} acknowledged Stores of 200 KiB", acked.len());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("is full"), "{}", refused.message());
    assert!(refused.message().contains(&data.display().to_string()), "{}", refused.message());

    let held = entries(&mut client).await;
    assert_eq!(held, acked.len() as u64, "a refused Store left nothing behind");
    for i in 0..5 {
        let again = store_one(&mut client, 5000 + i, 1000).await.expect_err("still full");
        assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    }
    assert_eq!(entries(&mut client).await, held);
    assert_all_hit(&mut client, &acked, "disk full").await;
    assert_eq!(writable_metric(metrics).await, 0.0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&server.output(), "data dir is full"), 1, "logged once, not per request:\n{}", server.output());

    // An operator frees space; no restart.
    std::fs::remove_file(&operators_file).unwrap();
    let (ack, took) = until_stored(&mut client, &data, 9000, Duration::from_secs(60)).await;
    println!("Stores accepted again {:.1} s after space was freed", took.as_secs_f64());
    acked.push(ack);
    assert_eq!(writable_metric(metrics).await, 1.0);
    assert!(server.output().contains("data dir takes writes again"), "{}", server.output());

    // The disk fills to the last byte, and the server restarts on it.
    fill(&disk.dir.join("filler"));
    server.sigkill();
    let log = tmp.path().join("restart-full.log");
    let (server, channel) = Server::start(&data, log, &args).await;
    let mut client = SemanticCacheClient::new(channel);
    assert_all_hit(&mut client, &acked, "restarted on a full disk").await;
    let refused = store_one(&mut client, 9001, 1000).await.expect_err("read-only");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("read-only"), "{}", refused.message());
    assert_eq!(writable_metric(metrics).await, 0.0);

    std::fs::remove_file(disk.dir.join("filler")).unwrap();
    let (ack, took) = until_stored(&mut client, &data, 9002, Duration::from_secs(30)).await;
    println!("a server started on a full disk took Stores {:.1} s after space was freed", took.as_secs_f64());
    acked.push(ack);
    assert_all_hit(&mut client, &acked, "after the reopen").await;
    let served = entries(&mut client).await;
    server.terminate().await;
    assert_on_disk(&data, &acked, served);
}
