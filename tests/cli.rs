//! The `semcache` binary as a user starts it.

mod common;

use std::process::Command;

fn semcache() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semcache"));
    // Keep a developer's own settings out of these runs.
    for (k, _) in std::env::vars() {
        if k.starts_with("SEMCACHE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn serve_without_a_model_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = semcache()
        .args(["serve", "--listen", "127.0.0.1:0", "--model-dir"])
        .arg(dir.path().join("no-model"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("models/fetch.sh"), "{stderr}");
    assert!(stderr.contains("model.safetensors"), "{stderr}");
}

#[test]
fn flags_are_documented_with_their_env_vars() {
    let out = semcache().args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--listen", "--data-dir", "--model-dir", "--device", "--max-queue"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    for env in ["SEMCACHE_LISTEN", "SEMCACHE_DATA_DIR", "SEMCACHE_MODEL_DIR", "SEMCACHE_DEVICE"] {
        assert!(help.contains(env), "{env} missing from:\n{help}");
    }
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_the_feature_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = semcache()
        .args(["serve", "--listen", "127.0.0.1:0", "--device", "cuda", "--model-dir"])
        .arg(common::model_dir())
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features cuda"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_a_server_and_reports_percentiles() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path()).await;
    let addr = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        semcache()
            .args(["bench", "--addr", &addr, "--clients", "4", "--requests", "40", "--entries", "5"])
            .args(["--hit-ratio", "0.5", "--namespace", "bench-test"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("40 lookups answered"), "{stdout}");
    assert!(stdout.contains("lookups/s") && stdout.contains("p99 ms"), "{stdout}");
    // Half the lookups repeat a stored query word for word, so at least those hit.
    let hits: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("hit "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no hit row in {stdout}"));
    assert!(hits >= 20, "{stdout}");
    assert!(stdout.contains("refused (RESOURCE_EXHAUSTED): 0"), "{stdout}");
    // The run cleans up after itself.
    let mut c = server.client.clone();
    let gone = c.get_namespace(semcache::proto::GetNamespaceRequest { name: "bench-test".into() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    server.stop().await;
}

#[test]
fn bench_refuses_a_hit_ratio_outside_0_to_1() {
    let out = semcache().args(["bench", "--hit-ratio", "1.5"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a ratio between 0 and 1"), "{stderr}");
}
