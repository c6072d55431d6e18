//! `semcache import` and `semcache export`: entries as JSON lines, through the public API of
//! a running server. Import goes through Store, so every line is embedded by the server's
//! batching queue exactly like live traffic (concurrent requests become full batches) and
//! lands durably with its namespace's capacity and TTL rules; export streams the Export RPC.
//! The line format is the same both ways, so an export imports as is.

use crate::client::routed;
use crate::client::{self, Client, ClientArgs, ClientError};
use crate::proto::{Evidence, ExportRequest, Observation, ObservationSource, StatsRequest, StoreRequest, Usage};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};
use tonic::Code;

/// One entry as a JSON line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// May be left out when `semcache import --namespace` names it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub query: String,
    pub response: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scope: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Lifetime from the import (absent: the namespace's default; 0: forever). An export
    /// writes what is left of it.
    #[serde(default, alias = "ttl", skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<LineUsage>,
    /// Earlier turns of the conversation (hashed by the server) ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context: Vec<String>,
    /// ... or the context key itself, as an export writes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_key: String,
    /// What verified mode learned about the entry, so a move keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<LineEvidence>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineEvidence {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observations: Vec<LineObservation>,
    /// Ids of the normalised queries the entry must never answer (see the proto's `Evidence`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_queries: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineObservation {
    pub similarity: f32,
    pub margin: f32,
    pub agreeing: u32,
    pub correct: bool,
    /// "probe" or "feedback".
    pub source: LineSource,
    /// Set on an audit: the P(wrong) the model gave it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audit_p_wrong: f32,
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineSource {
    #[default]
    Probe,
    Feedback,
}

impl LineEvidence {
    fn to_pb(&self) -> Evidence {
        Evidence {
            observations: self
                .observations
                .iter()
                .map(|o| Observation {
                    similarity: o.similarity,
                    margin: o.margin,
                    agreeing: o.agreeing,
                    correct: o.correct,
                    source: match o.source {
                        LineSource::Probe => ObservationSource::Probe,
                        LineSource::Feedback => ObservationSource::Feedback,
                    }
                    .into(),
                    audit_p_wrong: o.audit_p_wrong,
                })
                .collect(),
            refused_queries: self.refused_queries.clone(),
        }
    }

    fn from_pb(e: Evidence) -> Self {
        Self {
            observations: e
                .observations
                .iter()
                .map(|o| LineObservation {
                    similarity: o.similarity,
                    margin: o.margin,
                    agreeing: o.agreeing,
                    correct: o.correct,
                    source: match o.source() {
                        ObservationSource::Feedback => LineSource::Feedback,
                        _ => LineSource::Probe,
                    },
                    audit_p_wrong: o.audit_p_wrong,
                })
                .collect(),
            refused_queries: e.refused_queries,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cost_usd: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: String, line: u64, reason: String },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl From<tonic::Status> for TransferError {
    fn from(status: tonic::Status) -> Self {
        Self::Client(status.into())
    }
}

/// Parses one line; `namespace` fills in a line without one.
pub fn parse(text: &str, namespace: &str) -> Result<StoreRequest, String> {
    let mut line: Line = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if line.namespace.is_empty() {
        if namespace.is_empty() {
            return Err("no \"namespace\" (give one per line or pass --namespace)".into());
        }
        line.namespace = namespace.to_owned();
    }
    Ok(StoreRequest {
        namespace: line.namespace,
        query: line.query,
        response: line.response,
        scope: line.scope,
        metadata: line.metadata,
        ttl_seconds: line.ttl_seconds,
        usage: line.usage.map(|u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd,
        }),
        context: line.context,
        context_key: line.context_key,
        evidence: line.evidence.as_ref().map(LineEvidence::to_pb),
        ..Default::default()
    })
}

#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Stores in flight at once: enough to fill the server's batches.
    pub clients: usize,
    /// Namespace of lines that name none.
    pub namespace: String,
}

#[derive(Debug, Default)]
pub struct ImportReport {
    pub imported: u64,
    /// Lines the server refused, with the reason (INVALID_ARGUMENT and the like); the rest
    /// were imported.
    pub refused: Vec<(u64, String)>,
    pub elapsed: Duration,
}

impl ImportReport {
    pub fn lines_per_second(&self) -> f64 {
        self.imported as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Lines a reader holds ahead of the senders.
const READ_AHEAD: usize = 1024;

/// Imports JSON lines from `reader`. A line that is not valid JSON of the format stops the
/// import (after the lines in flight) with its number; nothing after it is sent. A line the
/// server refuses is reported and skipped. A full server queue is waited out, not skipped.
pub async fn import(
    server: &ClientArgs,
    path: &str,
    reader: impl BufRead + Send + 'static,
    config: &ImportConfig,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ImportReport, TransferError> {
    let client = client::connect(server).await?;
    let started = Instant::now();
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, StoreRequest)>(READ_AHEAD);
    let namespace = config.namespace.clone();
    let path_owned = path.to_owned();
    // Reading and parsing are blocking; they run beside the senders.
    let reader = tokio::task::spawn_blocking(move || -> Result<(), TransferError> {
        for (i, text) in reader.lines().enumerate() {
            let line = i as u64 + 1;
            let text = text.map_err(|source| TransferError::Io { path: path_owned.clone(), source })?;
            if text.trim().is_empty() {
                continue;
            }
            let req = parse(&text, &namespace).map_err(|reason| TransferError::Line {
                path: path_owned.clone(),
                line,
                reason,
            })?;
            if tx.blocking_send((line, req)).is_err() {
                break;
            }
        }
        Ok(())
    });
    // `send` owns the receiver, so when it stops early the reader's next send fails and the
    // reader ends instead of waiting for room that never comes.
    let sent = send(client, rx, config.clients.max(1), progress).await;
    let read = reader.await.expect("import reader panicked");
    let (imported, mut refused) = sent?;
    read?;
    refused.sort_unstable();
    Ok(ImportReport { imported, refused, elapsed: started.elapsed() })
}

/// Elements of one BatchStore of an import, and the bytes they may add up to (well under the
/// server's default 4 MiB message limit).
const BATCH: usize = 32;
const BATCH_BYTES: usize = 1 << 20;

/// Stores what the reader sends as BatchStores of one namespace each, `clients` batches at a
/// time, until it stops or the server fails in a way that no retry or skip answers (the first
/// such error wins; the batches still in flight are dropped). Returns the stores made and the
/// lines refused.
async fn send(
    client: Client,
    lines: tokio::sync::mpsc::Receiver<(u64, StoreRequest)>,
    clients: usize,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(u64, Vec<(u64, String)>), TransferError> {
    let mut batches = tokio_stream::wrappers::ReceiverStream::new(lines)
        .ready_chunks(BATCH)
        .flat_map(|lines| futures_util::stream::iter(batches_of(lines)))
        .map(|batch| {
            let client = client.clone();
            async move { store_batch(&client, batch).await }
        })
        .buffer_unordered(clients);
    let (mut imported, mut refused) = (0, Vec::new());
    while let Some(stored) = batches.next().await {
        let (stored, skipped) = stored?;
        imported += stored;
        refused.extend(skipped);
        progress(imported);
    }
    Ok((imported, refused))
}

/// Splits lines read together into batches of one namespace (behind a proxy, a batch goes to
/// the node of its namespace) and of bounded size, in line order within each namespace.
fn batches_of(lines: Vec<(u64, StoreRequest)>) -> Vec<Vec<(u64, StoreRequest)>> {
    let mut by_namespace: BTreeMap<String, Vec<Vec<(u64, StoreRequest)>>> = BTreeMap::new();
    for (line, req) in lines {
        let batches = by_namespace.entry(req.namespace.clone()).or_default();
        let size = |b: &Vec<(u64, StoreRequest)>| b.iter().map(|(_, r)| prost::Message::encoded_len(r)).sum::<usize>();
        match batches.last_mut() {
            Some(last) if last.len() < BATCH && size(last) + prost::Message::encoded_len(&req) <= BATCH_BYTES => {
                last.push((line, req))
            }
            _ => batches.push(vec![(line, req)]),
        }
    }
    by_namespace.into_values().flatten().collect()
}

/// A refusal of what was sent, as opposed to of the server's state: the line is skipped.
fn refuses_the_line(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::InvalidArgument | Code::FailedPrecondition)
}

/// One BatchStore. A batch refused for one of its lines is stored line by line instead, so
/// that only the refused lines are skipped (the server checks every element before storing
/// any, so nothing is stored twice).
async fn store_batch(
    client: &Client,
    batch: Vec<(u64, StoreRequest)>,
) -> Result<(u64, Vec<(u64, String)>), tonic::Status> {
    let request = crate::proto::BatchStoreRequest { requests: batch.iter().map(|(_, r)| r.clone()).collect() };
    let batch_store = || {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.batch_store(routed(request)).await }
    };
    match retrying(batch_store).await {
        Ok(_) => Ok((batch.len() as u64, Vec::new())),
        Err(status) if refuses_the_line(&status) => {
            let (mut stored, mut refused) = (0, Vec::new());
            for (line, req) in batch {
                let store = || {
                    let (mut client, req) = (client.clone(), req.clone());
                    async move { client.store(routed(req)).await }
                };
                match retrying(store).await {
                    Ok(_) => stored += 1,
                    Err(status) if refuses_the_line(&status) => refused.push((line, status.message().to_owned())),
                    Err(status) => return Err(status),
                }
            }
            Ok((stored, refused))
        }
        Err(status) => Err(status),
    }
}

/// A call, retried with a growing pause while the server refuses it for load (a refusal that
/// says when to retry: a full queue, too many calls in flight). A full disk or a limit is not
/// retried: waiting does not change it.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut pause = Duration::from_millis(5);
    loop {
        match call().await {
            Err(status)
                if status.code() == Code::ResourceExhausted && status.metadata().get("retry-after").is_some() =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Entries the server holds for an export of `namespace` ("" = all), for a progress bar.
pub async fn count(server: &ClientArgs, namespace: &str) -> Result<u64, TransferError> {
    let mut client = client::connect(server).await?;
    Ok(client.stats(routed(StatsRequest { namespace: namespace.to_owned() })).await?.into_inner().entries)
}

/// Writes every live entry of `namespace` ("" = all) to `out` as JSON lines.
pub async fn export(
    server: &ClientArgs,
    namespace: &str,
    out: &mut (dyn Write + Send),
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, TransferError> {
    let mut client = client::connect(server).await?;
    let mut stream = client.export(routed(ExportRequest { namespace: namespace.to_owned() })).await?.into_inner();
    let io = |source| TransferError::Io { path: "output".into(), source };
    let mut written = 0;
    while let Some(entry) = stream.message().await? {
        let now = crate::clock::now_unix_ms();
        let ttl_seconds = match entry.expires_at_unix_ms {
            0 => Some(0),
            // Rounded up: the imported entry expires at most a second after the original,
            // never before it.
            at => Some(((at - now).max(1) as u64).div_ceil(1000)),
        };
        let line = Line {
            namespace: entry.namespace,
            query: entry.query,
            response: entry.response,
            scope: entry.scope,
            metadata: entry.metadata,
            ttl_seconds,
            usage: entry.usage.map(|u| LineUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost_usd: u.cost_usd,
            }),
            context: Vec::new(),
            context_key: entry.context_key,
            evidence: entry.evidence.map(LineEvidence::from_pb),
        };
        serde_json::to_writer(&mut *out, &line).map_err(|e| io(e.into()))?;
        out.write_all(b"\n").map_err(io)?;
        written += 1;
        progress(written);
    }
    out.flush().map_err(io)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_batches_hold_one_namespace_a_bounded_size_and_the_line_order() {
        let req = |ns: &str, bytes: usize| StoreRequest {
            namespace: ns.into(),
            query: "q".into(),
            response: "r".repeat(bytes),
            ..Default::default()
        };
        let mut lines: Vec<(u64, StoreRequest)> =
            (1..=40).map(|l| (l, req(if l % 2 == 0 { "a" } else { "b" }, 10))).collect();
        lines.extend((41..=44).map(|l| (l, req("c", BATCH_BYTES / 3))));
        let batches = batches_of(lines);
        for b in &batches {
            assert!(b.iter().all(|(_, r)| r.namespace == b[0].1.namespace), "one namespace per batch");
            assert!(b.len() <= BATCH);
            assert!(
                b.len() == 1 || b.iter().map(|(_, r)| prost::Message::encoded_len(r)).sum::<usize>() <= BATCH_BYTES
            );
            assert!(b.windows(2).all(|w| w[0].0 < w[1].0), "line order kept");
        }
        let count = |ns: &str| batches.iter().filter(|b| b[0].1.namespace == ns).count();
        assert_eq!((count("a"), count("b"), count("c")), (1, 1, 2));
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 44);
    }

    #[test]
    fn lines_parse_with_defaults_and_refuse_typos() {
        let req = parse(r#"{"query":"q","response":"r"}"#, "support").unwrap();
        assert_eq!((req.namespace.as_str(), req.ttl_seconds, req.usage), ("support", None, None));
        let req = parse(
            r#"{"namespace":"a","query":"q","response":"r","scope":{"model":"m"},"ttl":60,"usage":{"input_tokens":3},"context":["hi"]}"#,
            "",
        )
        .unwrap();
        assert_eq!(
            (req.namespace.as_str(), req.ttl_seconds, req.scope.len(), req.context.len()),
            ("a", Some(60), 1, 1)
        );
        assert_eq!(req.usage.unwrap().input_tokens, 3);
        assert!(parse(r#"{"query":"q","respone":"r"}"#, "a").unwrap_err().contains("respone"));
        assert!(parse(r#"{"query":"q","response":"r"}"#, "").unwrap_err().contains("--namespace"));
        assert!(parse("not json", "a").is_err());
    }

    #[test]
    fn an_exported_line_reads_back_the_same() {
        let line = Line {
            namespace: "a".into(),
            query: "q".into(),
            response: "r".into(),
            scope: [("tenant".to_string(), "t".to_string())].into(),
            ttl_seconds: Some(0),
            usage: Some(LineUsage { input_tokens: 1, output_tokens: 2, cost_usd: 0.5 }),
            context_key: "k".into(),
            evidence: Some(LineEvidence {
                observations: vec![LineObservation {
                    similarity: 0.9,
                    margin: 0.1,
                    agreeing: 2,
                    correct: false,
                    source: LineSource::Feedback,
                    audit_p_wrong: 0.0,
                }],
                refused_queries: vec![u64::MAX],
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(!text.contains("metadata") && !text.contains("\"context\""), "empty fields are left out: {text}");
        assert!(text.contains("\"source\":\"feedback\""), "{text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), line);
        let evidence = line.evidence.clone().unwrap();
        assert_eq!(LineEvidence::from_pb(evidence.to_pb()), evidence, "through the wire and back");
    }
}
