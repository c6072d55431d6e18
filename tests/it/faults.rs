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
use std::process::{Child, Command, Stdio};
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

/// `strace` attached to a running server, failing `syscalls` with EIO (only those on `path`,
/// if given) until dropped, when it detaches and the syscalls work again.
struct Injector {
    child: Child,
}

impl Injector {
    /// `None` where strace is missing or may not attach (ptrace not allowed).
    fn attach(pid: u32, syscalls: &str, path: Option<&Path>, log: &Path) -> Option<Self> {
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-p", &pid.to_string(), "-e"])
            .arg(format!("trace={syscalls}"))
            .arg("-e")
            .arg(format!("inject={syscalls}:error=EIO"))
            .args(["-o", "/dev/null"]);
        if let Some(path) = path {
            cmd.arg("-P").arg(path);
        }
        let out = std::fs::File::create(log).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(out).spawn().ok()?;
        let mut injector = Self { child };
        // strace says "Process N attached with M threads" once it holds every thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(log).unwrap_or_default().contains("attached") {
            if injector.child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(injector)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// The WAL RocksDB is appending to now.
fn current_wal(data: &Path) -> PathBuf {
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .expect("a WAL in the data dir")
}

/// Stores that meet failing syscalls are refused as UNAVAILABLE and never acknowledged;
/// Lookups keep hitting; a restart recovers with every acknowledged Store and takes writes.
async fn failing_syscalls_refuse_stores(test: &str, syscalls: &str, only_the_wal: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let metrics = free_port();
    let metrics_arg = metrics.to_string();
    let args = ["--metrics-listen", &metrics_arg, "--sweep-interval-ms", "100"];
    let (mut server, channel) = Server::start(&data, tmp.path().join("server.log"), &args).await;
    let mut client = SemanticCacheClient::new(channel);
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(store_one(&mut client, i, 500).await.unwrap());
    }
    let wal = only_the_wal.then(|| current_wal(&data));
    let Some(injector) = Injector::attach(server.child.id(), syscalls, wal.as_deref(), &tmp.path().join("strace.log"))
    else {
        return skipped(test, "strace is missing or may not attach here");
    };
    let refused = store_one(&mut client, 100, 500).await.expect_err("a Store whose write failed");
    println!("{test}: the client saw {:?}: {}", refused.code(), refused.message());
    assert_eq!(refused.code(), Code::Unavailable, "{test}: {refused:?}");
    assert!(refused.message().contains("nothing of it was acknowledged"), "{test}: {}", refused.message());
    let held = entries(&mut client).await;
    assert_eq!(held, acked.len() as u64, "{test}: the refused Store is not half-visible");
    assert_all_hit(&mut client, &acked, test).await;
    assert_eq!(writable_metric(metrics).await, 0.0);
    drop(injector);

    // The disk works again, but RocksDB no longer trusts its log: still refused, still served.
    let after = store_one(&mut client, 101, 500).await.expect_err("refused until a restart");
    assert_eq!(after.code(), Code::Unavailable, "{test}: {after:?}");
    assert_all_hit(&mut client, &acked, test).await;
    let output = server.output();
    assert_eq!(count(&output, "a write to the data dir failed"), 1, "{test}: logged once:\n{output}");
    assert!(!output.contains("panicked"), "{output}");
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let (server, channel) = Server::start(&data, tmp.path().join("restart.log"), &args).await;
    let mut client = SemanticCacheClient::new(channel);
    assert_all_hit(&mut client, &acked, "after the restart").await;
    // The refused Store's record may have reached the disk before its fsync failed; if so the
    // restart replays it (it was never acknowledged, so either outcome is allowed).
    println!("{test}: {} entries after the restart for {} acknowledged", entries(&mut client).await, acked.len());
    acked.push(store_one(&mut client, 102, 500).await.expect("a restart takes writes again"));
    assert_eq!(writable_metric(metrics).await, 1.0);
    let served = entries(&mut client).await;
    server.terminate().await;
    assert_on_disk(&data, &acked, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_refuses_the_store_and_loses_nothing_acknowledged() {
    failing_syscalls_refuse_stores("failing fsync", "fsync,fdatasync", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_wal_write_refuses_the_store_and_loses_nothing_acknowledged() {
    failing_syscalls_refuse_stores("failing write", "write,pwrite64,writev,pwritev", true).await;
}

/// The server must refuse to start: its output (the reason) once it exited.
async fn refused_start(data: &Path, log: PathBuf) -> String {
    let mut server = Server::spawn(data, log, &[]);
    let output = server.wait_serving().await.expect_err("semcache must refuse to start");
    assert!(!output.contains("panicked"), "a refusal, not a panic:\n{output}");
    output
}

fn sst_files(data: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect();
    files.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sst_refuses_the_start_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (server, channel) = Server::start(&data, tmp.path().join("server.log"), &[]).await;
    let mut client = SemanticCacheClient::new(channel);
    // More than one 16 MiB memtable of entries, so that RocksDB writes an SST of them.
    for i in 0..100 {
        store_one(&mut client, i, 200 << 10).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while sst_files(&data).first().is_none_or(|(_, len)| *len < 8 << 20) {
        assert!(Instant::now() < deadline, "RocksDB wrote no SST of the entries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.terminate().await;

    // A few bytes in the middle of the biggest SST go bad, as a failing disk would return them.
    let (sst, len) = sst_files(&data).remove(0);
    let mut bytes = std::fs::read(&sst).unwrap();
    let middle = (len / 2) as usize;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0xFF;
    }
    std::fs::write(&sst, bytes).unwrap();

    let output = refused_start(&data, tmp.path().join("damaged.log")).await;
    let name = sst.file_name().unwrap().to_string_lossy().into_owned();
    assert!(output.contains(&name), "the refusal names the damaged file {name}:\n{output}");
    assert!(output.contains("is damaged") && output.contains("Restore the data dir"), "{output}");
    println!("damaged SST: {}", output.lines().rev().find(|l| l.contains("damaged")).unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_costs_only_the_torn_record_and_the_index_follows_rocksdb() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Small graphs checkpointed every second, so the checkpoint holds the entry that is torn.
    let args = ["--exact-scan-limit", "4", "--checkpoint-interval-seconds", "1", "--sweep-interval-ms", "100"];
    let (server, channel) = Server::start(&data, tmp.path().join("server.log"), &args).await;
    let mut client = SemanticCacheClient::new(channel);
    let mut acked = Vec::new();
    for i in 0..30 {
        acked.push(store_one(&mut client, i, 300).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(server.output().contains("graph checkpoint written"), "{}", server.output());
    server.sigkill();

    // Power lost mid-write: the WAL's last bytes never reached the disk.
    let wal = current_wal(&data);
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&wal).unwrap().set_len(len - 100).unwrap();

    let (server, channel) = Server::start(&data, tmp.path().join("restart.log"), &args).await;
    let mut client = SemanticCacheClient::new(channel);
    let torn = acked.pop().unwrap();
    assert_all_hit(&mut client, &acked, "after a torn WAL tail").await;
    let r = client.lookup(lookup_req(NS, &torn.query)).await.unwrap().into_inner();
    assert!(r.entry.as_ref().is_none_or(|e| e.id != torn.id), "the torn entry is gone from the index too: {r:?}");
    let next = store_one(&mut client, 31, 300).await.unwrap();
    let highest: u64 = acked.iter().chain([&torn]).map(|a| a.id.parse::<u64>().unwrap()).max().unwrap();
    assert!(next.id.parse::<u64>().unwrap() > highest, "ids are never handed out twice");
    acked.push(next);
    let served = entries(&mut client).await;
    assert_eq!(served, acked.len() as u64);
    server.terminate().await;
    assert_on_disk(&data, &acked, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_refused_at_start_with_its_path_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let root = is_root();
    // Root writes through file modes, so for root the directory is a read-only mount.
    let disk = if root {
        match Tmpfs::mount(&tmp.path().join("disk"), 16) {
            Some(disk) => Some(disk),
            None => return skipped("read-only data dir", "running as root but cannot mount a tmpfs"),
        }
    } else {
        None
    };
    let data = disk.as_ref().map_or_else(|| tmp.path().join("data"), |d| d.dir.join("data"));
    let (server, channel) = Server::start(&data, tmp.path().join("server.log"), &[]).await;
    let mut client = SemanticCacheClient::new(channel);
    let acked = vec![store_one(&mut client, 1, 300).await.unwrap()];
    server.terminate().await;

    let set_read_only = |read_only: bool| match &disk {
        Some(disk) => disk.remount(if read_only { "ro" } else { "rw" }),
        None => {
            use std::os::unix::fs::PermissionsExt;
            let mode = if read_only { 0o555 } else { 0o755 };
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    };
    set_read_only(true);
    let output = refused_start(&data, tmp.path().join("read-only.log")).await;
    set_read_only(false);
    assert!(output.contains(&data.display().to_string()), "the refusal names the data dir:\n{output}");
    let reason = if root { "Read-only file system" } else { "Permission denied" };
    assert!(output.contains(reason) && output.contains("cannot be written"), "{output}");
    println!("read-only data dir: {}", output.lines().rev().find(|l| l.contains("cannot be written")).unwrap());

    // Nothing was changed by the refused start.
    let (server, channel) = Server::start(&data, tmp.path().join("again.log"), &[]).await;
    let mut client = SemanticCacheClient::new(channel);
    assert_all_hit(&mut client, &acked, "after the read-only start").await;
    server.terminate().await;
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// What a flood of large Stores costs in memory under `--max-bytes`: the entries evicted to
/// stay within the cap, and RSS bounded by the cap-independent buffers (RocksDB's 64 MiB
/// memtable budget and 64 MiB block cache, the requests in flight) rather than by the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_large_stores_under_max_bytes_keeps_rss_bounded() {
    const CAP: u64 = 32 << 20;
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 60;
    const RESPONSE: usize = 256 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (cap, metrics) = (CAP.to_string(), free_port());
    let metrics_arg = metrics.to_string();
    let args = ["--max-bytes", &cap, "--metrics-listen", &metrics_arg, "--sweep-interval-ms", "100"];
    let (server, channel) = Server::start(&data, tmp.path().join("server.log"), &args).await;
    let pid = server.child.id();
    let mut client = SemanticCacheClient::new(channel.clone());
    store_one(&mut client, 0, 1000).await.unwrap();
    let at_start = common::process::rss_of(pid);

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(at_start));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(common::process::rss_of(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let flood: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = SemanticCacheClient::new(channel.clone());
            tokio::spawn(async move {
                for n in 0..PER_CLIENT {
                    store_one(&mut client, 1 + c * PER_CLIENT + n, RESPONSE).await.unwrap();
                }
            })
        })
        .collect();
    for task in flood {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sampling.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let stats = client.stats(StatsRequest { namespace: String::new() }).await.unwrap().into_inner();
    let held = sample(&http_get(metrics, "/metrics").await, &format!("semcache_bytes{{namespace=\"{NS}\"}}")) as u64;
    let flooded = (CLIENTS * PER_CLIENT * RESPONSE) as u64;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "flood of {:.0} MiB under a {:.0} MiB cap: {} entries, {:.1} MiB held, {} evicted; RSS {:.0} MiB at start, \
         {:.0} MiB at peak (+{:.0} MiB)",
        mib(flooded),
        mib(CAP),
        stats.entries,
        mib(held),
        stats.evictions,
        mib(at_start),
        mib(peak),
        mib(peak.saturating_sub(at_start))
    );
    assert!(held <= CAP, "the cap holds: {held} > {CAP}");
    assert!(stats.evictions > 0);
    // The README's bound: RocksDB's memtable budget and block cache (64 MiB each), plus the
    // requests in flight and the allocator's slack; nothing that grows with the flood.
    let bound = (64 + 64 + 32) << 20;
    assert!(peak.saturating_sub(at_start) <= bound, "RSS grew by {:.0} MiB", mib(peak.saturating_sub(at_start)));
    server.terminate().await;
}
