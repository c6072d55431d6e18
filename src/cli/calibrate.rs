//! `semcache calibrate`: the lowest threshold that reaches a precision on a labelled pair file,
//! judged with the namespace's own guard setting, and optionally set on the namespace.

use super::eval::{evaluate, PairsArgs};
use super::values::ratio;
use clap::Args;
use semcache::client;
use semcache::client::routed;
use semcache::eval;
use semcache::proto::{ConfigureNamespaceRequest, GetNamespaceRequest};

/// Settings of `semcache calibrate`.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub pairs: PairsArgs,

    /// The namespace to calibrate; its guard setting is used, its entries are not touched.
    #[arg(long)]
    pub namespace: String,

    /// The precision the threshold must reach on the pairs.
    #[arg(long, value_parser = ratio)]
    pub target_precision: f64,

    /// Set the chosen threshold on the namespace.
    #[arg(long)]
    pub apply: bool,
}

pub async fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let mut client = client::connect(&args.pairs.server).await?;
    let namespace = client.get_namespace(routed(GetNamespaceRequest { name: args.namespace.clone() })).await;
    let (guards, floor) = match namespace {
        Ok(ns) => (ns.get_ref().hit_guards, ns.get_ref().threshold_floor),
        // Not created yet: judged as a new namespace starts by default (guards on, no floor).
        Err(status) if status.code() == tonic::Code::NotFound => (true, 0.0),
        Err(status) => return Err(client::ClientError::from(status).into()),
    };
    let (name, result) = evaluate(&args.pairs).await?;
    let (off, on) = eval::curves(&result, args.pairs.from);
    let curve = if guards { &on } else { &off };
    let guards_said = if guards { "on" } else { "off" };
    let Some(chosen) = eval::lowest_meeting_precision(curve, args.target_precision) else {
        anyhow::bail!(
            "no threshold in [{:.2}, 0.99] reaches precision {} on {name} with guards {guards_said}; \
             check the labels, or accept a lower precision",
            args.pairs.from,
            args.target_precision
        );
    };
    println!(
        "{}: threshold {:.2} with guards {guards_said} reaches precision {:.3} on {name} \
         (recall {:.3}, false-hit rate {:.3}, {} hits); precision stays >= {} above it",
        args.namespace,
        chosen.threshold,
        chosen.precision,
        chosen.recall,
        chosen.false_hit_rate,
        chosen.hits,
        args.target_precision
    );
    if args.apply && chosen.threshold < floor {
        anyhow::bail!(
            "not applied: {:.2} is below namespace {}'s threshold_floor {floor}; lower the floor first if this \
             data is representative",
            chosen.threshold,
            args.namespace
        );
    }
    if args.apply {
        let ns = client
            .configure_namespace(routed(ConfigureNamespaceRequest {
                name: args.namespace.clone(),
                similarity_threshold: Some(chosen.threshold),
                ..Default::default()
            }))
            .await
            .map_err(client::ClientError::from)?
            .into_inner();
        println!("applied: namespace {} now has similarity_threshold {}", ns.name, ns.similarity_threshold);
    } else {
        println!("not applied (pass --apply to set it)");
    }
    Ok(())
}
