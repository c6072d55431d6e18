//! The `semcache` binary as a user starts it.

use crate::harness as common;
use common::process::semcache;

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

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/eval_sample/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn run(args: Vec<String>) -> (bool, String, String) {
    common::process::run(&args).await
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The numbers of a summary line such as
/// "  guards on  at 0.80: precision 1.000  recall 1.000  false-hit rate 0.000  (...)".
fn summary(stdout: &str, guards: &str) -> (f64, f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(guards) && l.contains("precision"))
        .unwrap_or_else(|| panic!("no {guards} line in {stdout}"));
    let after = |key: &str| -> f64 {
        let rest = &line[line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap_or(f64::NAN)
    };
    (after("precision "), after("recall "), after("false-hit rate "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_scores_pairs_with_known_answers_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path()).await;
    let addr = format!("http://{}", server.addr);
    let plot = dir.path().join("curve.svg");
    let lookups = dir.path().join("lookups.jsonl");
    let (ok, stdout, stderr) = run(args(&[
        "eval",
        "--addr",
        &addr,
        "--pairs",
        &fixture("known.csv"),
        "--threshold",
        "0.8",
        "--scratch-namespace",
        "eval-known",
        "--plot",
        plot.to_str().unwrap(),
        "--lookups",
        lookups.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("5 lookups, 1 duplicate pairs"), "{stdout}");
    // A bare threshold serves the antonym, the number change and the dropped negation: 3
    // false hits in 5 lookups, next to the one right answer. The guards refuse all three.
    assert_eq!(summary(&stdout, "guards off"), (0.25, 1.0, 0.6), "{stdout}");
    assert_eq!(summary(&stdout, "guards on"), (1.0, 1.0, 0.0), "{stdout}");
    assert!(stdout.contains("| threshold |"), "the curve table: {stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("known.csv"));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&lookups).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    let swap = lines.iter().find(|l| l["b"] == "Convert 50 miles to kilometers").unwrap();
    assert_eq!(swap["veto"], "number: 50 vs 5");

    // The scratch namespace is gone; a second run may reuse its name.
    let mut c = server.client.clone();
    let gone = c.get_namespace(semcache::proto::GetNamespaceRequest { name: "eval-known".into() }).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);

    // Every format of ../shared/data, on its committed sample.
    for (file, pairs) in
        [("meancache_test_80.csv", 80), ("qqp_40.json", 40), ("mock_30.json", 30), ("contextual_20.json", 20)]
    {
        let (ok, stdout, stderr) = run(args(&["eval", "--addr", &addr, "--pairs", &fixture(file)])).await;
        assert!(ok, "{file}: {stdout}\n{stderr}");
        assert!(stdout.contains(&format!("{file}: {pairs} lookups")), "{stdout}");
        let (precision, _, fhr) = summary(&stdout, "guards on");
        assert!((0.0..=1.0).contains(&precision) && (0.0..=1.0).contains(&fhr), "{stdout}");
    }
    // A follow-up sent with its conversation never reaches the standalone main question.
    let (ok, stdout, _) =
        run(args(&["eval", "--addr", &addr, "--pairs", &fixture("contextual_20.json"), "--follow-up-context"])).await;
    assert!(ok);
    assert_eq!(summary(&stdout, "guards off").2, 0.0, "{stdout}");
    assert_eq!(
        c.list_namespaces(semcache::proto::ListNamespacesRequest {}).await.unwrap().into_inner().namespaces.len(),
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calibrate_picks_and_applies_the_lowest_threshold_meeting_the_precision() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path()).await;
    let addr = format!("http://{}", server.addr);
    let mut c = server.client.clone();
    let configure = |guards: bool| semcache::proto::ConfigureNamespaceRequest {
        name: "support".into(),
        hit_guards: Some(guards),
        ..Default::default()
    };
    let calibrate = |extra: &[&str]| {
        let mut a = args(&["calibrate", "--addr", &addr, "--namespace", "support", "--pairs", &fixture("known.csv")]);
        a.extend(args(extra));
        a
    };
    // Without guards the antonym outranks the paraphrase: no threshold is precise.
    c.configure_namespace(configure(false)).await.unwrap();
    let (ok, _, stderr) = run(calibrate(&["--target-precision", "0.9"])).await;
    assert!(!ok && stderr.contains("no threshold") && stderr.contains("guards off"), "{stderr}");

    // With guards, the lowest threshold above the one unrelated near miss.
    c.configure_namespace(configure(true)).await.unwrap();
    let (ok, stdout, stderr) = run(calibrate(&["--target-precision", "0.9"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("with guards on reaches precision 1.000"), "{stdout}");
    assert!(stdout.contains("not applied"), "{stdout}");
    let ns = c.get_namespace(semcache::proto::GetNamespaceRequest { name: "support".into() }).await.unwrap();
    assert_eq!(ns.into_inner().similarity_threshold, semcache::cache::DEFAULT_THRESHOLD, "untouched without --apply");

    let (ok, stdout, stderr) = run(calibrate(&["--target-precision", "0.9", "--apply"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    let chosen: f32 = stdout
        .split("threshold ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    let ns =
        c.get_namespace(semcache::proto::GetNamespaceRequest { name: "support".into() }).await.unwrap().into_inner();
    assert_eq!(ns.similarity_threshold, chosen);
    assert_eq!(ns.entries, 0, "the pairs went to a scratch namespace");
    // "How do I change my account username?" lands on the password question at about 0.54;
    // the paraphrase scores about 0.94.
    assert!(chosen > 0.5 && chosen < 0.9, "{stdout}");

    let (ok, _, stderr) = run(calibrate(&["--target-precision", "1.5"])).await;
    assert!(!ok && stderr.contains("not a ratio"), "{stderr}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_round_trips_entries_between_servers() {
    use semcache::proto::{StoreRequest, Usage};
    let dir = tempfile::tempdir().unwrap();
    let a = common::TestServer::start(&dir.path().join("a")).await;
    let mut c = a.client.clone();
    let stored = [
        StoreRequest {
            scope: common::scope(&[("tenant", "acme")]),
            metadata: common::scope(&[("source", "gpt-4o")]),
            usage: Some(Usage { input_tokens: 120, output_tokens: 30, cost_usd: 0.002 }),
            ..common::store_req("support", "How do I reset my password?", "Settings > Security")
        },
        StoreRequest {
            context: vec!["What are derivatives in finance?".into()],
            ttl_seconds: Some(3600),
            ..common::store_req("chat", "Give me an example", "Futures on wheat.")
        },
        common::store_req("chat", "What is the capital of France?", "Paris"),
    ];
    for s in stored {
        common::store(&mut c, s).await;
    }
    let exported = dir.path().join("entries.jsonl");
    let addr_a = format!("http://{}", a.addr);
    let (ok, stdout, stderr) = run(args(&["export", "--addr", &addr_a, "--output", exported.to_str().unwrap()])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("exported 3 entries"), "{stdout}");
    a.stop().await;

    let b = common::TestServer::start(&dir.path().join("b")).await;
    let addr_b = format!("http://{}", b.addr);
    let (ok, stdout, stderr) = run(args(&["import", exported.to_str().unwrap(), "--addr", &addr_b])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("imported 3 entries") && stdout.contains("lines/s"), "{stdout}");

    // What B exports is what A exported (the TTL may have lost a second in between).
    let (ok, again, _) = run(args(&["export", "--addr", &addr_b])).await;
    assert!(ok);
    let normalise = |text: &str| -> Vec<serde_json::Value> {
        let mut lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(ttl) = v.get_mut("ttl_seconds").filter(|t| t.as_u64() != Some(0)) {
                    assert!((3590..=3600).contains(&ttl.as_u64().unwrap()), "{ttl}");
                    *ttl = 1.into();
                }
                v
            })
            .collect();
        lines.sort_by_key(|v| v["query"].as_str().unwrap().to_owned());
        lines
    };
    let before = normalise(&std::fs::read_to_string(&exported).unwrap());
    assert_eq!(before, normalise(&again));
    let reset = before.iter().find(|v| v["query"] == "How do I reset my password?").unwrap();
    assert_eq!(reset["usage"]["input_tokens"], 120);
    assert_eq!(reset["scope"]["tenant"], "acme");
    let example = before.iter().find(|v| v["query"] == "Give me an example").unwrap();
    assert_eq!(example["context_key"].as_str().unwrap().len(), 32);

    // And the imported entries serve: the follow-up in its conversation, a paraphrase.
    let mut c = b.client.clone();
    let r = common::lookup(
        &mut c,
        semcache::proto::LookupRequest {
            context: vec!["what are derivatives in finance?".into()],
            ..common::lookup_req("chat", "Give me an example")
        },
    )
    .await;
    assert!(r.hit);
    let mut l = common::lookup_req("support", "I forgot my password, how can I change it?");
    l.scope = common::scope(&[("tenant", "acme")]);
    assert!(common::lookup(&mut c, l).await.hit);

    // A malformed line stops the import and is named; a refused one is reported.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"namespace\":\"x\",\"query\":\"q\",\"response\":\"\"}\n{\"namespace\":\"x\",\"query\":\"q2\",\"respons\":\"r\"}\n").unwrap();
    let (ok, stdout, stderr) = run(args(&["import", bad.to_str().unwrap(), "--addr", &addr_b])).await;
    assert!(!ok);
    assert!(stderr.contains("bad.jsonl:2:") && stderr.contains("respons"), "{stdout}\n{stderr}");
    let refused = dir.path().join("refused.jsonl");
    std::fs::write(&refused, "{\"query\":\"q\",\"response\":\"\"}\n{\"query\":\"q2\",\"response\":\"r\"}\n").unwrap();
    let (ok, stdout, stderr) =
        run(args(&["import", refused.to_str().unwrap(), "--addr", &addr_b, "--namespace", "y"])).await;
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("imported 1 entries") && stdout.contains("refused.jsonl:1: refused"), "{stdout}");
    assert!(stderr.contains("refused 1 of the lines"), "{stderr}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_lookup_one_entry_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(dir.path()).await;
    let addr = format!("http://{}", server.addr);
    let cmd = |sub: &str, rest: &[&str]| {
        let mut a = args(&[sub, "--addr", &addr]);
        a.extend(args(rest));
        a
    };
    let json = |stdout: &str| -> serde_json::Value {
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
    };

    let (ok, stdout, stderr) = run(cmd(
        "store",
        &[
            "--namespace",
            "support",
            "--scope",
            "tenant=acme",
            "--ttl-seconds",
            "3600",
            "How do I reset my password?",
            "Settings > Security > Reset password",
        ],
    ))
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    let id = stdout.trim().strip_prefix("id: ").unwrap_or_else(|| panic!("no id in {stdout}")).to_owned();
    let (ok, stdout, stderr) =
        run(cmd("store", &["--json", "--namespace", "support", "What is the capital of France?", "Paris"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    let other = json(&stdout)["id"].as_str().unwrap().to_owned();
    assert!(!other.is_empty() && other != id, "{stdout}");

    // A paraphrase in the entry's scope is served that entry.
    let paraphrase = "I forgot my password, how can I change it?";
    let in_scope = |extra: &[&str]| {
        let mut a = vec!["--namespace", "support", "--scope", "tenant=acme"];
        a.extend(extra);
        a.push(paraphrase);
        cmd("lookup", &a)
    };
    let (ok, stdout, stderr) = run(in_scope(&[])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().next(), Some("hit"), "{stdout}");
    assert!(stdout.contains("\nsimilarity: ") && stdout.contains("\nthreshold: "), "{stdout}");
    assert!(stdout.contains(&format!("\nid: {id}\n")), "{stdout}");
    assert!(stdout.contains("\nquery: How do I reset my password?\n"), "{stdout}");
    assert!(stdout.ends_with("\nresponse: Settings > Security > Reset password\n"), "{stdout}");

    let (ok, stdout, stderr) = run(in_scope(&["--json"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    let v = json(&stdout);
    assert_eq!(v["hit"], true, "{v}");
    assert_eq!(v["entry"]["id"], id.as_str(), "{v}");
    assert_eq!(v["entry"]["response"], "Settings > Security > Reset password", "{v}");
    assert_eq!(v["entry"]["scope"]["tenant"], "acme", "{v}");
    assert_eq!(v["nearest_id"], id.as_str(), "{v}");
    assert_eq!(v["miss_reason"], "MISS_REASON_UNSPECIFIED", "{v}");
    assert!(v["veto"].is_null(), "{v}");
    let (similarity, threshold) = (v["similarity"].as_f64().unwrap(), v["threshold"].as_f64().unwrap());
    assert!(similarity >= threshold && similarity < 1.0, "a paraphrase, not the stored text: {v}");
    let lifetime =
        v["entry"]["expires_at_unix_ms"].as_i64().unwrap() - v["entry"]["created_at_unix_ms"].as_i64().unwrap();
    assert!((3_599_000..=3_601_000).contains(&lifetime), "--ttl-seconds 3600: {v}");

    // Misses are answers: exit 0, with the reason.
    let (ok, stdout, stderr) =
        run(cmd("lookup", &["--namespace", "support", "--scope", "tenant=globex", paraphrase])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().next(), Some("miss (empty)"), "{stdout}");
    let (ok, stdout, stderr) = run(in_scope(&["--threshold", "0.999"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().next(), Some("miss (below threshold)"), "{stdout}");
    assert!(stdout.contains("\nthreshold: 0.999\n") && stdout.contains(&format!("\nnearest: {id}\n")), "{stdout}");
    let (ok, stdout, stderr) = run(in_scope(&["--threshold", "0.999", "--json"])).await;
    assert!(ok, "{stdout}\n{stderr}");
    let v = json(&stdout);
    assert_eq!((v["hit"].as_bool(), v["miss_reason"].as_str()), (Some(false), Some("MISS_REASON_BELOW_THRESHOLD")));
    assert!(v["entry"].is_null(), "{v}");

    // Failures exit non-zero and say what failed.
    for sub in ["lookup", "store"] {
        let mut rest = vec!["--namespace", "no spaces allowed", "a question"];
        if sub == "store" {
            rest.push("an answer");
        }
        let (ok, stdout, stderr) = run(cmd(sub, &rest)).await;
        assert!(!ok, "{sub}: {stdout}");
        assert!(stderr.contains("INVALID_ARGUMENT") && stderr.contains("namespace"), "{sub}: {stderr}");
    }
    let (ok, _, stderr) = run(cmd("store", &["--namespace", "support", "--scope", "novalue", "q", "r"])).await;
    assert!(!ok && stderr.contains("novalue") && stderr.contains("KEY=VALUE"), "{stderr}");
    let (ok, _, stderr) =
        run(cmd("lookup", &["--namespace", "support", "--scope", "a=1", "--scope", "a=2", "q"])).await;
    assert!(!ok && stderr.contains("twice"), "{stderr}");
    let (ok, _, stderr) = run(cmd("lookup", &["--namespace", "support", "--threshold", "1.5", "q"])).await;
    assert!(!ok && stderr.contains("not a similarity threshold"), "{stderr}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (ok, _, stderr) =
        run(args(&["lookup", "--addr", &format!("http://{closed}"), "--namespace", "support", "q"])).await;
    assert!(!ok && stderr.contains(&format!("cannot connect to http://{closed}")), "{stderr}");

    // Nothing else was stored on the way.
    let mut c = server.client.clone();
    let stats = c.stats(semcache::proto::StatsRequest { namespace: "support".into() }).await.unwrap().into_inner();
    assert_eq!(stats.entries, 2);
    server.stop().await;
}
