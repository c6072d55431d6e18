//! The vector index: one partition per (namespace, exact scope). Partitioning by scope rather
//! than filtering one big graph keeps every search exact about scope and as fast as the
//! partition is small. The index is derived data: it is restored at start from graph
//! checkpoints plus RocksDB, or rebuilt from RocksDB alone.

pub mod checkpoint;
pub mod compact;
mod partition;
pub mod quant;

pub use partition::{dot, Candidate, IndexParams, Partition};

use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A scope map's identity (see `store::keys::scope_id`).
pub type ScopeId = [u8; 16];

/// Vectors of one partition, by entry id.
pub type Items = Vec<(u64, Vec<f32>)>;

type Partitions = HashMap<Arc<str>, HashMap<ScopeId, Arc<Partition>>>;

pub struct Index {
    dim: usize,
    params: IndexParams,
    /// Where checkpoints are written; `None` keeps the index in memory only.
    graphs: Option<PathBuf>,
    /// Fingerprint of the model the vectors come from, recorded in every checkpoint.
    model: String,
    namespaces: RwLock<Partitions>,
}

/// How the index came back at start, for the log and for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    pub partitions: usize,
    pub vectors: usize,
    /// Graph partitions reloaded from a checkpoint...
    pub from_checkpoint: usize,
    /// ...with this many vectors inserted since it was written...
    pub caught_up: usize,
    /// ...and graph partitions built from RocksDB because no usable checkpoint existed.
    pub rebuilt: usize,
}

impl Index {
    pub fn new(dim: usize, params: IndexParams, graphs: Option<PathBuf>, model: String) -> Self {
        Self { dim, params, graphs, model, namespaces: RwLock::default() }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Restores every partition given its live ids: a partition large enough for a graph is
    /// reloaded from its checkpoint and caught up (vectors of entries written since come from
    /// `fetch`), or built from `fetch`ed vectors when there is no usable checkpoint. Stale
    /// checkpoints of partitions that no longer exist are removed.
    pub fn restore<E>(
        &self,
        partitions: Vec<(Arc<str>, ScopeId, HashSet<u64>)>,
        mut fetch: impl FnMut(&str, &[u64]) -> Result<Items, E>,
    ) -> Result<RestoreReport, E> {
        let mut report = RestoreReport { partitions: partitions.len(), ..Default::default() };
        let total: usize = partitions.iter().map(|(_, _, ids)| ids.len()).sum();
        let mut last_log = Instant::now();
        let mut keep = HashSet::new();
        for (namespace, scope, live) in partitions {
            report.vectors += live.len();
            let partition = if live.len() > self.params.flat_limit {
                keep.insert(checkpoint::key(&namespace, &scope));
                self.restore_graph(&namespace, scope, live, &mut fetch, &mut report)?
            } else {
                let ids: Vec<u64> = live.into_iter().collect();
                Partition::from_vectors(namespace.clone(), scope, self.dim, self.params, fetch(&namespace, &ids)?)
            };
            self.namespaces.write().entry(namespace).or_default().insert(scope, Arc::new(partition));
            if last_log.elapsed().as_secs() >= 5 {
                tracing::info!(done = report.vectors, total, "restoring the index");
                last_log = Instant::now();
            }
        }
        if let Some(graphs) = &self.graphs {
            if let Err(e) = checkpoint::retain(graphs, &keep) {
                tracing::warn!(dir = %graphs.display(), error = %e, "could not remove stale checkpoints");
            }
        }
        Ok(report)
    }

    fn restore_graph<E>(
        &self,
        namespace: &Arc<str>,
        scope: ScopeId,
        live: HashSet<u64>,
        fetch: &mut impl FnMut(&str, &[u64]) -> Result<Items, E>,
        report: &mut RestoreReport,
    ) -> Result<Partition, E> {
        let loaded = match &self.graphs {
            Some(graphs) => checkpoint::load(graphs, namespace, &scope, self.dim, &self.model),
            None => Err(checkpoint::LoadError::Missing),
        };
        match loaded {
            Ok((graph, _)) => {
                let (partition, missing) =
                    Partition::from_checkpoint(namespace.clone(), scope, self.dim, self.params, graph, &live);
                let items = fetch(namespace, &missing)?;
                partition.insert_many(&items);
                report.from_checkpoint += 1;
                report.caught_up += items.len();
                Ok(partition)
            }
            Err(why) => {
                if let checkpoint::LoadError::Unusable { .. } = &why {
                    tracing::warn!(namespace = %namespace, reason = %why, "rebuilding the partition from RocksDB");
                }
                let started = Instant::now();
                let ids: Vec<u64> = live.into_iter().collect();
                let items = fetch(namespace, &ids)?;
                tracing::info!(namespace = %namespace, vectors = items.len(), "building a graph partition");
                let partition = Partition::from_vectors(namespace.clone(), scope, self.dim, self.params, items);
                tracing::info!(
                    namespace = %namespace,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "graph partition built"
                );
                report.rebuilt += 1;
                Ok(partition)
            }
        }
    }

    pub fn partition(&self, namespace: &str, scope: &ScopeId) -> Option<Arc<Partition>> {
        self.namespaces.read().get(namespace)?.get(scope).cloned()
    }

    fn all(&self) -> Vec<Arc<Partition>> {
        let map = self.namespaces.read();
        map.values().flat_map(|parts| parts.values().cloned()).collect()
    }

    pub fn insert(&self, namespace: &str, scope: &ScopeId, id: u64, vector: &[f32]) {
        let partition = match self.partition(namespace, scope) {
            Some(p) => p,
            None => {
                let mut map = self.namespaces.write();
                let namespace: Arc<str> = namespace.into();
                let parts = map.entry(namespace.clone()).or_default();
                parts
                    .entry(*scope)
                    .or_insert_with(|| Arc::new(Partition::new(namespace, *scope, self.dim, self.params)))
                    .clone()
            }
        };
        partition.insert(id, vector);
    }

    pub fn remove(&self, namespace: &str, scope: &ScopeId, id: u64) -> bool {
        self.partition(namespace, scope).is_some_and(|p| p.remove(id))
    }

    /// Forgets a namespace's partitions and their checkpoints.
    pub fn drop_namespace(&self, namespace: &str) {
        let parts = self.namespaces.write().remove(namespace);
        if let (Some(graphs), Some(parts)) = (&self.graphs, parts) {
            for scope in parts.keys() {
                if let Err(e) = checkpoint::remove(graphs, namespace, scope) {
                    tracing::warn!(namespace, error = %e, "could not remove a checkpoint");
                }
            }
        }
    }

    /// Live vectors in a namespace, over all its scopes.
    pub fn len(&self, namespace: &str) -> usize {
        self.namespaces.read().get(namespace).map_or(0, |parts| parts.values().map(|p| p.len()).sum())
    }

    /// Bytes the partitions' structures hold, summed.
    pub fn memory(&self) -> compact::Memory {
        self.all().iter().map(|p| p.memory()).sum()
    }

    pub fn total(&self) -> usize {
        self.all().iter().map(|p| p.len()).sum()
    }

    /// Rebuilds the partitions that outgrew their structure (an exact scan past its limit, a
    /// graph with too many dead points), one at a time, while they keep serving. Blocking:
    /// run it on the maintenance thread. Returns how many were rebuilt.
    pub fn rebuild_where_needed(&self) -> usize {
        let mut rebuilt = 0;
        for partition in self.all().into_iter().filter(|p| p.needs_rebuild()) {
            let started = Instant::now();
            partition.rebuild();
            rebuilt += 1;
            tracing::info!(
                namespace = partition.namespace(),
                vectors = partition.len(),
                graph = partition.is_graph(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partition rebuilt"
            );
        }
        rebuilt
    }

    /// Checkpoints every graph partition that changed since its last checkpoint. Returns how
    /// many were written; a failure is logged and retried next time (it costs start-up time,
    /// never data).
    pub fn checkpoint(&self) -> usize {
        let Some(graphs) = &self.graphs else { return 0 };
        let mut written = 0;
        for partition in self.all() {
            let started = Instant::now();
            match partition.checkpoint(graphs, &self.model) {
                Ok(true) => {
                    written += 1;
                    tracing::info!(
                        namespace = partition.namespace(),
                        vectors = partition.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "graph checkpoint written"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(namespace = partition.namespace(), error = %e, "graph checkpoint failed"),
            }
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn partitions_never_mix() {
        let index = Index::new(2, IndexParams::default(), None, "m".into());
        let (s1, s2) = ([1; 16], [2; 16]);
        index.insert("a", &s1, 1, &[1.0, 0.0]);
        index.insert("a", &s2, 2, &[1.0, 0.0]);
        index.insert("b", &s1, 3, &[1.0, 0.0]);
        let hits = index.partition("a", &s1).unwrap().search(&[1.0, 0.0], 10);
        assert_eq!(hits.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1]);
        assert!(index.partition("a", &[3; 16]).is_none());
        assert_eq!(index.len("a"), 2);
        assert_eq!(index.total(), 3);
        assert!(index.remove("a", &s2, 2));
        assert_eq!(index.len("a"), 1);
    }

    fn unit(seed: u64) -> Vec<f32> {
        crate::rng::unit_vector(seed, 8)
    }

    #[test]
    fn restore_uses_checkpoints_catches_up_and_rebuilds_without_them() {
        let dir = tempfile::tempdir().unwrap();
        let params = IndexParams { flat_limit: 16, ..IndexParams::default() };
        let graphs = Some(dir.path().to_path_buf());
        let (big, small) = ([1; 16], [2; 16]);
        let index = Index::new(8, params, graphs.clone(), "m".into());
        for id in 0..100 {
            index.insert("ns", &big, id, &unit(id));
        }
        index.insert("ns", &small, 1000, &unit(1000));
        assert_eq!(index.rebuild_where_needed(), 1, "only the big partition outgrew its scan");
        assert_eq!(index.checkpoint(), 1);
        assert_eq!(index.checkpoint(), 0, "nothing changed since");

        // Since the checkpoint: 0..5 deleted, 100..120 added.
        let live_big: HashSet<u64> = (5..120).collect();
        let fetch = |_: &str, ids: &[u64]| Ok::<_, ()>(ids.iter().map(|id| (*id, unit(*id))).collect());
        let parts = || vec![("ns".into(), big, live_big.clone()), ("ns".into(), small, HashSet::from([1000]))];
        let restored = Index::new(8, params, graphs.clone(), "m".into());
        let report = restored.restore(parts(), fetch).unwrap();
        assert_eq!(
            report,
            RestoreReport { partitions: 2, vectors: 116, from_checkpoint: 1, caught_up: 20, rebuilt: 0 }
        );
        assert_eq!(restored.len("ns"), 116);
        let p = restored.partition("ns", &big).unwrap();
        assert_eq!(p.search(&unit(110), 1)[0].id, 110);
        assert!(p.search(&unit(2), 10).iter().all(|c| c.id >= 5));

        // Another model's checkpoint is not used: the partition is built from the store.
        let other = Index::new(8, params, graphs, "other".into());
        let report = other.restore(parts(), fetch).unwrap();
        assert_eq!((report.from_checkpoint, report.rebuilt), (0, 1));
        assert_eq!(other.len("ns"), 116);
    }
}
