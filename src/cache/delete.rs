//! Removing entries: Delete by id, scope or all, DropNamespace, the expiry sweep and
//! capacity eviction. Every removal is a bounded synced batch, then the index and ledger.

use super::ledger::Victim;
use super::{context, exact_key_of, validate, Cache, CacheError, DeleteTarget, DELETE_CHUNK};
use crate::store::EntryRecord;
use std::collections::HashSet;
use std::sync::Arc;

impl Cache {
    pub async fn delete(self: &Arc<Self>, namespace: String, target: DeleteTarget) -> Result<u64, CacheError> {
        validate::namespace(&namespace)?;
        if let DeleteTarget::Scope(scope) = &target {
            validate::map("scope", scope, self.limits.scope())?;
        }
        let id = match &target {
            DeleteTarget::Id(id) => Some(validate::entry_id(id)?),
            _ => None,
        };
        if self.namespace(&namespace).is_none() {
            return Err(CacheError::NamespaceNotFound(namespace));
        }
        self.blocking("Delete", move |this| match (target, id) {
            (_, Some(id)) => match this.store.get_entry(&namespace, id)? {
                Some(entry) => this.delete_entries(vec![entry]),
                None => Err(CacheError::EntryNotFound { namespace, id }),
            },
            // A scope's entries live in one partition per conversation context, so every
            // entry of the namespace is a candidate.
            (DeleteTarget::Scope(scope), _) => {
                let ids = this.ledger.ids(&namespace, None);
                this.delete_ids(&namespace, &ids, |e| {
                    e.scope.len() - usize::from(e.scope.contains_key(context::SCOPE_KEY)) == scope.len()
                        && scope.iter().all(|(k, v)| e.scope.get(k) == Some(v))
                })
            }
            _ => {
                let ids = this.ledger.ids(&namespace, None);
                this.delete_ids(&namespace, &ids, |_| true)
            }
        })
        .await
    }

    /// Deletes the entries of `ids` that `matches` accepts, in bounded batches.
    fn delete_ids(
        &self,
        namespace: &str,
        ids: &[u64],
        matches: impl Fn(&EntryRecord) -> bool,
    ) -> Result<u64, CacheError> {
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            let entries = self.store.get_entries(namespace, chunk)?.into_iter().flatten().filter(&matches).collect();
            deleted += self.delete_entries(entries)?;
        }
        Ok(deleted)
    }

    /// Deletes entries in one durable batch, with their exact keys where those still point
    /// at them (a newer Store of the same text may have taken the key over).
    pub(super) fn delete_entries(&self, entries: Vec<EntryRecord>) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
        let _deleting = self.deleting.read();
        let _stripes = self.lock_stripes(&keys);
        Ok(self.delete_locked(&entries, &keys)?.len() as u64)
    }

    /// `delete_entries` with the stripes of `keys` held by the caller (and `deleting` read).
    /// Returns the positions of the entries it removed.
    fn delete_locked(&self, entries: &[EntryRecord], keys: &[[u8; 32]]) -> Result<Vec<usize>, CacheError> {
        let mut batch = self.store.batch();
        let mut gone = Vec::new();
        for (i, (entry, key)) in entries.iter().zip(keys).enumerate() {
            // Another delete (or a replacing Store) may have got there first.
            if !self.ledger.contains(entry.id) {
                continue;
            }
            batch.delete_entry(&entry.namespace, entry.id);
            if self.store.get_exact(key)?.is_some_and(|(_, id)| id == entry.id) {
                batch.delete_exact(key);
            }
            gone.push(i);
        }
        if gone.is_empty() {
            return Ok(gone);
        }
        self.store.write(batch)?;
        for &i in &gone {
            self.forget(&entries[i]);
        }
        Ok(gone)
    }

    /// Removes a namespace: its entries, its settings, its partitions and checkpoints.
    /// Returns how many entries went with it.
    pub async fn drop_namespace(self: &Arc<Self>, name: String) -> Result<u64, CacheError> {
        validate::namespace(&name)?;
        if self.namespace(&name).is_none() {
            return Err(CacheError::NamespaceNotFound(name));
        }
        self.blocking("DropNamespace", move |this| this.drop_blocking(&name)).await
    }

    fn drop_blocking(&self, name: &str) -> Result<u64, CacheError> {
        let _deleting = self.deleting.read();
        // Every stripe, so that no Store of this namespace commits half-way through.
        let _stripes: Vec<_> = self.stripes.iter().map(|s| s.lock()).collect();
        let _configure = self.configure.lock();
        let ids = self.ledger.ids(name, None);
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            let entries: Vec<EntryRecord> = self.store.get_entries(name, chunk)?.into_iter().flatten().collect();
            let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
            deleted += self.delete_locked(&entries, &keys)?.len() as u64;
        }
        let mut batch = self.store.batch();
        batch.delete_namespace(name);
        self.store.write(batch)?;
        self.namespaces.write().remove(name);
        self.index.drop_namespace(name);
        tracing::info!(namespace = name, entries = deleted, "namespace dropped");
        Ok(deleted)
    }

    /// Purges up to `limit` entries expired by now, in bounded batches; returns how many went.
    /// Blocking.
    pub fn sweep_expired(&self, limit: usize) -> Result<u64, CacheError> {
        let now = self.now();
        let mut purged = 0;
        let mut seen = 0;
        while seen < limit {
            let victims = self.ledger.expired(now, DELETE_CHUNK.min(limit - seen));
            if victims.is_empty() {
                break;
            }
            seen += victims.len();
            for namespace in self.remove_victims(victims)? {
                self.count(&namespace, |c| &c.expirations);
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Evicts least recently used entries until every namespace is within `max_entries` and
    /// the data set within `--max-bytes` (after a limit was lowered, or at start). Blocking.
    pub fn enforce_capacity(&self) -> Result<u64, CacheError> {
        let limits: Vec<(String, u64)> = {
            let map = self.namespaces.read();
            map.iter().map(|(n, ns)| (n.clone(), ns.read(|r| r.max_entries))).collect()
        };
        let mut evicted = 0;
        for (name, max) in &limits {
            evicted += self.evict_while(|| self.ledger.over_entries(name, *max, 0, None))?;
        }
        evicted += self.evict_while(|| self.ledger.over_bytes(self.defaults.max_bytes, 0, None))?;
        Ok(evicted)
    }

    /// Evicts, a bounded batch at a time, whatever `over` names until it names nothing.
    fn evict_while(&self, over: impl Fn() -> Vec<Victim>) -> Result<u64, CacheError> {
        let mut evicted = 0;
        loop {
            let mut victims = over();
            victims.truncate(DELETE_CHUNK);
            if victims.is_empty() {
                return Ok(evicted);
            }
            for namespace in self.remove_victims(victims)? {
                self.count(&namespace, |c| &c.evictions);
                evicted += 1;
            }
        }
    }

    /// Deletes victims (expired or evicted); returns the namespace of each one removed.
    fn remove_victims(&self, victims: Vec<Victim>) -> Result<Vec<String>, CacheError> {
        let entries = self.victim_entries(victims.clone())?;
        if entries.len() < victims.len() {
            // A ledger row whose entry is gone (deleted meanwhile) must not be picked again.
            let found: HashSet<u64> = entries.iter().map(|e| e.id).collect();
            for v in victims.iter().filter(|v| !found.contains(&v.id)) {
                self.ledger.remove(v.id);
            }
        }
        let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
        let _deleting = self.deleting.read();
        let _stripes = self.lock_stripes(&keys);
        let gone = self.delete_locked(&entries, &keys)?;
        Ok(gone.into_iter().map(|i| entries[i].namespace.clone()).collect())
    }
}
