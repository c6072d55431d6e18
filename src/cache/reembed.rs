//! `semcache reembed`: re-embeds the stored queries of namespaces with the loaded model, so
//! that namespaces made with another model (refused at Lookup/Store) serve again. Runs with
//! the server stopped: RocksDB's lock on the data dir refuses a second opener.
//!
//! Vectors are rewritten in synced batches and the namespace's model fingerprint is changed
//! last, so an interrupted run leaves the namespace refused (never half-served with mixed
//! vectors) and running it again finishes the job.

use super::CacheError;
use crate::embed::SentenceModel;
use crate::index::{checkpoint, ScopeId};
use crate::store::{keys, Store};
use std::collections::{BTreeMap, HashSet};

/// Namespaces to re-embed with their entry counts: the ones named, or by default every one
/// whose fingerprint differs from `model`'s.
pub fn plan(store: &Store, model: &SentenceModel, named: &[String]) -> Result<Vec<(String, u64)>, CacheError> {
    let records = store.namespaces()?;
    let known: HashSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
    if let Some(missing) = named.iter().find(|n| !known.contains(n.as_str())) {
        return Err(CacheError::NamespaceNotFound(missing.clone()));
    }
    let chosen: Vec<String> = records
        .iter()
        .filter(|r| if named.is_empty() { !model.info().matches(&r.embedding_model) } else { named.contains(&r.name) })
        .map(|r| r.name.clone())
        .collect();
    let mut counts: BTreeMap<String, u64> = chosen.into_iter().map(|n| (n, 0)).collect();
    for row in store.scan_catalog() {
        let (namespace, _, _) = row?;
        if let Some(c) = counts.get_mut(&namespace) {
            *c += 1;
        }
    }
    Ok(counts.into_iter().collect())
}

/// Re-embeds every entry of `namespace` in batches of `batch`, calling `progress` with the
/// number of entries done after each batch. Returns how many were re-embedded.
pub fn run(
    store: &Store,
    model: &SentenceModel,
    namespace: &str,
    batch: usize,
    mut progress: impl FnMut(u64),
) -> Result<u64, CacheError> {
    let mut done = 0;
    let mut scopes: HashSet<ScopeId> = HashSet::new();
    let mut pending = Vec::with_capacity(batch);
    // The iterator reads a consistent view; rewriting the entries under it is safe.
    let mut entries = store.scan_namespace(namespace).peekable();
    while entries.peek().is_some() {
        pending.clear();
        for entry in entries.by_ref().take(batch.max(1)) {
            pending.push(entry?);
        }
        let texts: Vec<&str> = pending.iter().map(|e| e.query.as_str()).collect();
        let vectors = model.embed(&texts)?;
        let mut write = store.batch();
        for (entry, vector) in pending.iter_mut().zip(vectors) {
            entry.vector = vector;
            scopes.insert(keys::scope_id(&entry.scope));
            write.replace_entry(entry);
        }
        store.write(write)?;
        done += pending.len() as u64;
        progress(done);
    }
    let Some(mut record) = store.namespaces()?.into_iter().find(|r| r.name == namespace) else {
        return Err(CacheError::NamespaceNotFound(namespace.to_owned()));
    };
    record.embedding_model = model.info().fingerprint.clone();
    let mut write = store.batch();
    write.put_namespace(&record);
    store.write(write)?;
    // Checkpoints hold the old vectors; the server would refuse them by fingerprint anyway,
    // but they are dead weight.
    for scope in &scopes {
        if let Err(e) = checkpoint::remove(&store.graphs_dir(), namespace, scope) {
            tracing::warn!(namespace, error = %e, "could not remove an old checkpoint");
        }
    }
    Ok(done)
}
