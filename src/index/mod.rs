//! The vector index: one partition per (namespace, exact scope). Partitioning by scope rather
//! than filtering one big graph keeps every search exact about scope and as fast as the
//! partition is small. The index is derived data: it is rebuilt from the store.

mod partition;

pub use partition::{dot, Candidate, IndexParams, Partition};

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// A scope map's identity (see `store::keys::scope_id`).
pub type ScopeId = [u8; 16];

/// Vectors of one partition, by entry id.
type Items = Vec<(u64, Vec<f32>)>;

pub struct Index {
    dim: usize,
    params: IndexParams,
    namespaces: RwLock<HashMap<String, HashMap<ScopeId, Arc<Partition>>>>,
}

impl Index {
    pub fn new(dim: usize, params: IndexParams) -> Self {
        Self { dim, params, namespaces: RwLock::default() }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Builds the whole index from `(namespace, scope, id, vector)` rows, one bulk build per
    /// partition.
    pub fn build(
        dim: usize,
        params: IndexParams,
        rows: impl IntoIterator<Item = (String, ScopeId, u64, Vec<f32>)>,
    ) -> Self {
        let mut grouped: HashMap<String, HashMap<ScopeId, Items>> = HashMap::new();
        for (ns, scope, id, v) in rows {
            grouped.entry(ns).or_default().entry(scope).or_default().push((id, v));
        }
        let namespaces = grouped
            .into_iter()
            .map(|(ns, parts)| {
                let parts = parts
                    .into_iter()
                    .map(|(scope, items)| (scope, Arc::new(Partition::from_vectors(dim, params, items))))
                    .collect();
                (ns, parts)
            })
            .collect();
        Self { dim, params, namespaces: RwLock::new(namespaces) }
    }

    pub fn partition(&self, namespace: &str, scope: &ScopeId) -> Option<Arc<Partition>> {
        self.namespaces.read().expect("index lock").get(namespace)?.get(scope).cloned()
    }

    pub fn insert(&self, namespace: &str, scope: &ScopeId, id: u64, vector: &[f32]) {
        let partition = match self.partition(namespace, scope) {
            Some(p) => p,
            None => {
                let mut map = self.namespaces.write().expect("index lock");
                let parts = map.entry(namespace.to_owned()).or_default();
                parts.entry(*scope).or_insert_with(|| Arc::new(Partition::new(self.dim, self.params))).clone()
            }
        };
        partition.insert(id, vector);
    }

    pub fn remove(&self, namespace: &str, scope: &ScopeId, id: u64) -> bool {
        self.partition(namespace, scope).is_some_and(|p| p.remove(id))
    }

    /// Live vectors in a namespace, over all its scopes.
    pub fn len(&self, namespace: &str) -> usize {
        self.namespaces
            .read()
            .expect("index lock")
            .get(namespace)
            .map_or(0, |parts| parts.values().map(|p| p.len()).sum())
    }

    pub fn total(&self) -> usize {
        let map = self.namespaces.read().expect("index lock");
        map.values().flat_map(|parts| parts.values()).map(|p| p.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_never_mix() {
        let index = Index::new(2, IndexParams::default());
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
}
