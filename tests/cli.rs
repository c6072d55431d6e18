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
