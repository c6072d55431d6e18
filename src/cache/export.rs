//! Export: every live entry of a namespace, streamed from RocksDB in bounded chunks.

use super::{validate, Cache, CacheError, Entry, DELETE_CHUNK};

impl Cache {
    /// Hands every live entry of a namespace (all when empty), oldest use first, to `out`,
    /// reading RocksDB in bounded chunks; stops early when `out` returns false. Blocking.
    /// Returns how many were handed over.
    pub fn export(&self, namespace: &str, mut out: impl FnMut(Entry) -> bool) -> Result<u64, CacheError> {
        let names: Vec<String> = if namespace.is_empty() {
            self.list_namespaces().into_iter().map(|v| v.settings.name).collect()
        } else {
            validate::namespace(namespace)?;
            if self.namespace(namespace).is_none() {
                return Err(CacheError::NamespaceNotFound(namespace.to_owned()));
            }
            vec![namespace.to_owned()]
        };
        let mut sent = 0;
        for name in names {
            for chunk in self.ledger.ids(&name, None).chunks(DELETE_CHUNK) {
                let now = self.now();
                for entry in self.store.get_entries(&name, chunk)?.into_iter().flatten().filter(|e| e.is_live(now)) {
                    let hits = self.ledger.hit_count(entry.id).unwrap_or(0);
                    let evidence = self.learning.evidence(entry.id);
                    if !out(Entry { evidence, ..Entry::from_record(entry, hits) }) {
                        return Ok(sent);
                    }
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }
}
