//! `semcache serve --config`, `--print-config` and `--log-format` through the binary. Refusals
//! need no model: the file is checked before anything starts.

use crate::harness::process::semcache;
use std::path::{Path, PathBuf};
use std::process::Output;

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("semcache.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure:\n{}\n{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1));
    text(&out.stderr)
}

#[test]
fn an_invalid_config_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config =
        write(dir.path(), &format!("[server]\ndata_dir = {:?}\nmax_queue = \"abc\"\n", data.display().to_string()));
    let out = semcache().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains(&config.display().to_string()), "{stderr}");
    assert!(stderr.contains("server.max_queue: expected an integer, found string"), "{stderr}");
    assert!(!data.exists(), "the data dir was created");

    let config = write(dir.path(), "[namespaces.support]\nsimilarity_threshold = 1.5\n");
    let out = semcache().args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("namespaces.support.similarity_threshold: invalid value 1.5"), "{stderr}");

    let config = write(dir.path(), "[server]\nmax_qeue = 5\n");
    let out = semcache().args(["serve"]).env("SEMCACHE_CONFIG", &config).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("unknown key server.max_qeue (did you mean max_queue?)"), "{stderr}");

    let config = write(dir.path(), "[server\nmax_queue = 5\n");
    let out = semcache().args(["serve", "--config"]).arg(&config).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("TOML syntax error at line 1"), "{stderr}");

    let out = semcache().args(["serve", "--config"]).arg(dir.path().join("missing.toml")).output().unwrap();
    let stderr = failed(&out);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "[server]\nlisten = \"0.0.0.0:7000\"\nmax_queue = 2048\nmax_batch = 8\nmodel_dir = \"/models/x\"\n\
         [namespaces.support]\nsimilarity_threshold = 0.9\nttl_seconds = 3600\n",
    );
    let out = semcache()
        .args(["serve", "--print-config", "--listen", "127.0.0.1:9000", "--config"])
        .arg(&config)
        .env("SEMCACHE_MAX_BATCH", "16")
        .env("SEMCACHE_LISTEN", "127.0.0.1:8000")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let line = |key: &str| {
        stdout.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("{key}:\n{stdout}"))
    };
    assert!(line("listen").contains("\"127.0.0.1:9000\"") && line("listen").contains("# command line"), "{stdout}");
    assert!(line("max_batch").contains("16") && line("max_batch").contains("environment"), "{stdout}");
    assert!(line("max_queue").contains("2048") && line("max_queue").contains("# config file"), "{stdout}");
    assert!(line("model_dir").contains("/models/x"), "{stdout}");
    assert!(line("ef_search").contains("128") && line("ef_search").contains("# default"), "{stdout}");
    assert!(stdout.contains("[namespaces.support]\nsimilarity_threshold = 0.9\nttl_seconds = 3600"), "{stdout}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "[server]\nlog_format = \"human\"\nmax_queue = -5\n");
    // The flag chooses the format even when the file that would set it is refused.
    for (flag, env) in [(Some("--log-format=json"), None), (None, Some("json"))] {
        let mut cmd = semcache();
        cmd.arg("serve").args(flag).arg("--config").arg(&config);
        if let Some(env) = env {
            cmd.env("SEMCACHE_LOG_FORMAT", env);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = text(&out.stdout);
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} is not JSON")))
            .collect();
        let error = lines.iter().find(|l| l["level"] == "ERROR").unwrap_or_else(|| panic!("no error in {stdout}"));
        let message = error["fields"]["error"].as_str().unwrap();
        assert!(message.contains("server.max_queue: invalid value -5"), "{message}");
    }
}

#[test]
fn the_file_can_choose_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        &format!(
            "[server]\nlog_format = \"json\"\nmodel_dir = \"/no/such/model\"\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let out = semcache().args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout:?}"));
    assert_eq!(last["level"], "ERROR", "{stdout}");
    assert!(last["fields"]["error"].as_str().unwrap().contains("models/fetch.sh"), "{stdout}");
}
