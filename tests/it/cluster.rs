//! Three nodes behind nginx's consistent-hash ring, started by `scripts/cluster.sh` as an
//! operator would: namespaces land on exactly one node each, a misrouted call is refused, a
//! dead node's namespaces are UNAVAILABLE (and never moved), and `cluster.sh up` brings the node
//! back with its namespaces served from RocksDB.

use crate::harness as common;

use common::{lookup_req, model_dir, store_req};
use semcache::client::routed;
use semcache::grpc::routing::{NAMESPACE_HEADER, NODE_HEADER};
use semcache::proto::semantic_cache_client::SemanticCacheClient;
use semcache::proto::{ListNamespacesRequest, StatsRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request};

const NODES: usize = 3;
const NAMESPACES: usize = 24;
const TOPICS: [&str; 6] = ["password", "invoice", "refund", "parcel", "subscription", "address"];

fn cluster(args: &[&str]) -> String {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
        .args(args)
        .env("SEMCACHE_BIN", env!("CARGO_BIN_EXE_semcache"))
        .env("SEMCACHE_MODEL_DIR", model_dir())
        .env("SEMCACHE_NODE_ARGS", "--warmup-rounds 1")
        .output()
        .expect("run scripts/cluster.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cluster.sh {args:?} failed:\n{text}");
    text
}

/// A base port with the next `NODES` free too.
fn free_base_port() -> u16 {
    for _ in 0..100 {
        let base = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if base > 60000 {
            continue;
        }
        if (0..=NODES as u16).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {} free ports", NODES + 1);
}

async fn connect(port: u16) -> SemanticCacheClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    SemanticCacheClient::new(channel)
}

fn ns(i: usize) -> String {
    format!("tenant-{i:02}")
}

fn question(i: usize) -> String {
    format!("How do I change the {} on account {i}?", TOPICS[i % TOPICS.len()])
}

fn paraphrase(i: usize) -> String {
    format!("How can I change the {} on account {i}?", TOPICS[i % TOPICS.len()])
}

fn answer(i: usize) -> String {
    format!("Answer for tenant {i}: open Settings and edit the {}.", TOPICS[i % TOPICS.len()])
}

/// A request addressed to one node (a call that spans namespaces, through the proxy or not).
fn to_node<T>(message: T, node: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert(NODE_HEADER, node.parse().unwrap());
    r
}

/// Which node holds each namespace, asked of every node directly.
async fn placement(base: u16) -> BTreeMap<String, Vec<String>> {
    let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in 1..=NODES {
        let node = format!("n{k}");
        let mut c = connect(base + k as u16).await;
        let list = c.list_namespaces(to_node(ListNamespacesRequest {}, &node)).await.unwrap().into_inner();
        for n in list.namespaces.into_iter().filter(|n| n.entries > 0) {
            held.entry(n.name).or_default().push(node.clone());
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_shard_over_nodes_behind_nginx_and_a_dead_node_is_unavailable_not_moved() {
    if Command::new("nginx").arg("-v").output().is_err() && !Path::new("/usr/sbin/nginx").exists() {
        eprintln!("SKIPPED cluster: nginx is not installed (scripts/test.sh installs it)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let dir_arg = dir.to_str().unwrap();
    let base = free_base_port();
    let _down = Down(dir_arg.to_owned());
    cluster(&["up", dir_arg, &NODES.to_string(), &base.to_string()]);
    let mut proxy = connect(base).await;

    for i in 0..NAMESPACES {
        proxy.store(routed(store_req(&ns(i), &question(i), &answer(i)))).await.unwrap();
    }
    for i in 0..NAMESPACES {
        let r = proxy.lookup(routed(lookup_req(&ns(i), &paraphrase(i)))).await.unwrap().into_inner();
        assert!(r.hit, "{}: {} missed (similarity {})", ns(i), paraphrase(i), r.similarity);
        assert_eq!(r.entry.unwrap().response, answer(i));
    }
    let held = placement(base).await;
    assert_eq!(held.len(), NAMESPACES, "every namespace is on a node: {held:?}");
    assert!(held.values().all(|nodes| nodes.len() == 1), "each on exactly one node: {held:?}");
    let per_node: BTreeMap<&str, usize> = held.values().fold(BTreeMap::new(), |mut m, n| {
        *m.entry(n[0].as_str()).or_default() += 1;
        m
    });
    println!("placement of {NAMESPACES} namespaces over {NODES} nodes: {per_node:?}");
    assert_eq!(per_node.len(), NODES, "every node holds some: {per_node:?}");

    // Misrouted calls are refused, and the refused Store leaves no copy anywhere.
    let mut lying = Request::new(store_req(&ns(1), "a stray question", "a stray answer"));
    lying.metadata_mut().insert(NAMESPACE_HEADER, ns(0).parse().unwrap());
    let e = proxy.store(lying).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(&ns(0)) && e.message().contains(&ns(1)), "{}", e.message());
    let e = proxy.lookup(lookup_req(&ns(0), &question(0))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "nginx refuses a call without the header: {e:?}");
    assert!(e.message().contains("routing header"), "{}", e.message());
    let mut direct = connect(base + 1).await;
    let e = direct.lookup(lookup_req(&ns(0), &question(0))).await.unwrap_err();
    assert!(e.message().contains("--require-routing-header"), "{}", e.message());
    // nginx's ring and the nodes' (--ring, pingora-ketama) place every namespace alike: a
    // Lookup through the proxy of an unknown namespace (a miss without the model) is refused
    // by the node nginx chose if they disagreed.
    for i in 0..500 {
        let r = proxy.lookup(routed(lookup_req(&format!("probe-{i}"), "anything"))).await;
        assert!(r.is_ok_and(|r| !r.into_inner().hit), "probe-{i}: nginx and --ring disagree");
    }

    // A caller that bypasses the proxy, header and all, is refused by the node's ring check.
    let stranger = (1..=NODES).map(|k| format!("n{k}")).find(|n| *n != held[&ns(0)][0]).unwrap();
    let mut wrong_node = connect(base + stranger[1..].parse::<u16>().unwrap()).await;
    let e = wrong_node.store(routed(store_req(&ns(0), "a bypassing question", "x"))).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("--ring"), "{}", e.message());
    // Addressed by node, a namespace call is answered by that node, owner or not: how an
    // operator drops the copy a namespace left behind when a new node took it over.
    let e = proxy.stats(to_node(StatsRequest { namespace: ns(0) }, &stranger)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let after = placement(base).await;
    assert_eq!(after, held, "nothing was stored by the refused calls");

    // Stats: per node through the proxy, summed by the CLI.
    let mut total = 0;
    for k in 1..=NODES {
        let node = format!("n{k}");
        let r = proxy.stats(to_node(StatsRequest { namespace: String::new() }, &node)).await.unwrap();
        assert_eq!(r.metadata().get(NODE_HEADER).map(|v| v.to_str().unwrap()), Some(node.as_str()), "who answered");
        let s = r.into_inner();
        assert_eq!(s.node_id, node);
        total += s.entries;
    }
    assert_eq!(total, NAMESPACES as u64);
    let (ok, out, err) = common::process::run(&[
        "stats",
        "--addr",
        &format!("http://127.0.0.1:{base}"),
        "--nodes",
        "n1,n2,n3",
        "--json",
    ])
    .await;
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["total"]["entries"], NAMESPACES);
    assert_eq!(report["nodes"].as_array().unwrap().len(), NODES);
    let nodes: Vec<String> = (1..=NODES).map(|k| format!("http://127.0.0.1:{}", base + k as u16)).collect();
    let (ok, out, err) = common::process::run(&["stats", "--cluster", &nodes.join(","), "--json"]).await;
    assert!(ok, "{err}");
    let direct: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(direct["total"]["entries"], NAMESPACES, "the same sum asked of the nodes directly");

    // A node dies: its namespaces are UNAVAILABLE through the proxy; the others keep hitting.
    let victim = "n2";
    let pid = std::fs::read_to_string(dir.join(format!("{victim}.pid"))).unwrap();
    assert!(Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut unavailable = 0;
    for i in 0..NAMESPACES {
        let r = proxy.lookup(routed(lookup_req(&ns(i), &paraphrase(i)))).await;
        if held[&ns(i)][0] == victim {
            let e = r.expect_err("the dead node's namespace");
            assert_eq!(e.code(), Code::Unavailable, "{}: {e:?}", ns(i));
            unavailable += 1;
        } else {
            assert!(r.unwrap().into_inner().hit, "{} lives on a live node", ns(i));
        }
    }
    assert_eq!(unavailable, per_node[victim]);
    // Never moved: a Store to a dead node's namespace is refused too, not taken by a neighbour.
    let dead_ns = held.iter().find(|(_, n)| n[0] == victim).unwrap().0.clone();
    let e = proxy.store(routed(store_req(&dead_ns, "a question while down", "x"))).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);

    // `up` again starts only the dead node; every namespace hits again, from RocksDB.
    let out = cluster(&["up", dir_arg, &NODES.to_string(), &base.to_string()]);
    assert!(out.contains(&format!("started: {victim})")), "{out}");
    for i in 0..NAMESPACES {
        let r = proxy.lookup(routed(lookup_req(&ns(i), &paraphrase(i)))).await.unwrap().into_inner();
        assert!(r.hit && r.entry.unwrap().response == answer(i), "{} after the restart", ns(i));
    }
    assert_eq!(placement(base).await, held, "the restarted node holds what it held");
    let names: BTreeSet<String> = (0..NAMESPACES).map(ns).collect();
    assert_eq!(held.keys().cloned().collect::<BTreeSet<_>>(), names);
}

/// `cluster.sh down` when the test ends, pass or fail: no process outlives it.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh"))
            .args(["down", &self.0])
            .output();
    }
}
