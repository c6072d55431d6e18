//! `semcache stats`: one server's counters, or a cluster's, node by node and summed. Each
//! node counts only the namespaces it owns, so a cluster's figures are the sum of its nodes'.

use anyhow::Context;
use clap::Args;
use semcache::client::{self, routed, ClientArgs, ClientError};
use semcache::grpc::routing::NODE_HEADER;
use semcache::proto::{StatsRequest, StatsResponse};
use serde::Serialize;
use tonic::Code;

/// Settings of `semcache stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// One namespace's counters (default: all of each node's).
    #[arg(long, default_value = "")]
    pub namespace: String,

    /// Ask these nodes directly (URLs, comma-separated) instead of --addr, and sum them.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub cluster: Vec<String>,

    /// Ask these nodes (ids, comma-separated) through the proxy at --addr, each addressed with
    /// the `x-semcache-node` header, and sum them.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "cluster")]
    pub nodes: Vec<String>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Counts {
    node: String,
    entries: u64,
    lookups: u64,
    hits: u64,
    misses: u64,
    stores: u64,
    evictions: u64,
    expirations: u64,
    saved_cost_usd: f64,
}

impl Counts {
    fn of(node: String, s: &StatsResponse) -> Self {
        Self {
            node,
            entries: s.entries,
            lookups: s.lookups,
            hits: s.hits,
            misses: s.misses,
            stores: s.stores,
            evictions: s.evictions,
            expirations: s.expirations,
            saved_cost_usd: s.saved_cost_usd,
        }
    }

    fn add(&mut self, o: &Counts) {
        self.entries += o.entries;
        self.lookups += o.lookups;
        self.hits += o.hits;
        self.misses += o.misses;
        self.stores += o.stores;
        self.evictions += o.evictions;
        self.expirations += o.expirations;
        self.saved_cost_usd += o.saved_cost_usd;
    }
}

#[derive(Serialize)]
struct Report {
    nodes: Vec<Counts>,
    total: Counts,
}

/// One node's answer; `None` when it does not hold the namespace asked for.
async fn ask(server: &ClientArgs, namespace: &str, node: Option<&str>) -> anyhow::Result<Option<Counts>> {
    let mut client = client::connect(server).await?;
    let mut request = routed(StatsRequest { namespace: namespace.to_owned() });
    if let Some(node) = node {
        request.metadata_mut().insert(NODE_HEADER, node.parse().context("a node id must be printable ASCII")?);
    }
    match client.stats(request).await {
        Ok(r) => {
            let r = r.into_inner();
            let name = match (node, r.node_id.as_str()) {
                (_, id) if !id.is_empty() => id.to_owned(),
                (Some(node), _) => node.to_owned(),
                (None, _) => server.addr.clone(),
            };
            Ok(Some(Counts::of(name, &r)))
        }
        Err(status) if status.code() == Code::NotFound && !namespace.is_empty() => Ok(None),
        Err(status) => Err(ClientError::from(status)).with_context(|| match node {
            Some(node) => format!("node {node} through {}", server.addr),
            None => server.addr.clone(),
        }),
    }
}

pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    if !args.cluster.is_empty() {
        for addr in &args.cluster {
            let server = ClientArgs { addr: addr.clone(), ..args.server.clone() };
            nodes.extend(ask(&server, &args.namespace, None).await?);
        }
    } else if !args.nodes.is_empty() {
        for node in &args.nodes {
            nodes.extend(ask(&args.server, &args.namespace, Some(node)).await?);
        }
    } else {
        nodes.extend(ask(&args.server, &args.namespace, None).await?);
    }
    let mut total = Counts { node: "total".into(), ..Default::default() };
    for n in &nodes {
        total.add(n);
    }
    if args.json {
        println!("{}", serde_json::to_string(&Report { nodes, total })?);
        return Ok(());
    }
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "node", "entries", "lookups", "hits", "misses", "stores", "hit rate"
    );
    let several = nodes.len() > 1;
    for n in nodes.iter().chain(several.then_some(&total)) {
        let rate = if n.lookups == 0 { 0.0 } else { 100.0 * n.hits as f64 / n.lookups as f64 };
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.1}%",
            n.node, n.entries, n.lookups, n.hits, n.misses, n.stores, rate
        );
    }
    Ok(())
}
