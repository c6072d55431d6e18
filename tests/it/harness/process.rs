//! `semcache serve` as a child process, for tests that need the real binary (signals, its
//! own memory, its own address space).

use super::model_dir;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The `semcache` binary, without a developer's own settings (`SEMCACHE_*`) or backtraces in
/// what it prints.
pub fn semcache() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semcache"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SEMCACHE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    cmd
}

/// Runs `semcache ARGS` to completion off the async threads (a server under test may share the
/// runtime): whether it succeeded, its stdout and its stderr.
pub async fn run<S: AsRef<str>>(args: &[S]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || semcache().args(&args).output().unwrap()).await.unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A running `semcache serve`. Dropping it kills the process, so a failing assertion never
/// leaves a server running behind the test.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the binary on `data_dir` with `args` and waits until health says SERVING.
    pub async fn start(data_dir: &Path, log: PathBuf, args: &[&str]) -> (Self, Channel) {
        for _ in 0..3 {
            let mut server = Self::spawn(data_dir, log.clone(), args);
            match server.wait_serving().await {
                Ok(channel) => return (server, channel),
                // Another process took the probed port before the server bound it.
                Err(output) if output.contains("cannot listen") => continue,
                Err(output) => panic!("{output}"),
            }
        }
        panic!("semcache could not bind a free port in 3 attempts");
    }

    pub fn spawn(data_dir: &Path, log: PathBuf, args: &[&str]) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        // A file rather than a pipe: nobody drains a pipe while the test is busy, and a full one
        // would stall the server's logging.
        let out = std::fs::File::create(&log).unwrap();
        let child = semcache()
            .args(["serve", "--warmup-rounds", "1", "--listen", &addr.to_string()])
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--model-dir")
            .arg(model_dir())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn semcache");
        Self { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's log if it exits first.
    pub async fn wait_serving(&mut self) -> Result<Channel, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = Endpoint::from_shared(self.url()).unwrap().connect_timeout(Duration::from_secs(1));
        let mut channel = None;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("semcache exited with {status} before SERVING:\n{}", self.output()));
            }
            assert!(Instant::now() < deadline, "semcache did not become SERVING within 60 s:\n{}", self.output());
            if channel.is_none() {
                channel = endpoint.connect().await.ok();
            }
            if let Some(ch) = &channel {
                let check = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await;
                if check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return Ok(ch.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn sigkill(mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "semcache died on its own before the kill:\n{}",
            self.output()
        );
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "semcache exited with {status} instead of dying by SIGKILL");
    }

    /// SIGTERM and wait for a clean exit, as an operator stops it.
    pub async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "semcache did not stop within 30 s of SIGTERM:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "semcache exited with {status} after SIGTERM:\n{}", self.output());
    }
}

/// Resident memory of process `pid`, from /proc (0 once it is gone).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
