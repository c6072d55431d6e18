//! Store: the entry, its exact-repeat key, the replaced older answer and the evictions that
//! make room, all in one synced batch; then the index and the ledger.

use super::counters::Counters;
use super::ledger::{Meta, Victim};
use super::{context, exact_key_of, validate, Cache, CacheError, StoreRequest, ValidationError};
use crate::store::{keys, EntryRecord};
use crate::text::normalize;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes an entry costs beyond its record: catalog row, exact key and RocksDB keys.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

impl Cache {
    /// Caches a response; returns the new entry's id once it is durable.
    pub async fn store(self: &Arc<Self>, mut req: StoreRequest) -> Result<u64, CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes, "--max-query-bytes")?;
        validate::text("response", &req.response, self.limits.max_response_bytes, "--max-response-bytes")?;
        validate::map("scope", &req.scope, self.limits.scope())?;
        validate::map("metadata", &req.metadata, self.limits.metadata())?;
        validate::incomplete(&req.metadata, self.limits.cache_incomplete)?;
        let context = context::key(&req.context, &req.context_key)?;
        if !req.usage.cost_usd.is_finite() || req.usage.cost_usd < 0.0 {
            return Err(ValidationError::new(
                "usage.cost_usd",
                format!("is {}", req.usage.cost_usd),
                "it must be a finite number >= 0",
            )
            .into());
        }
        match self.namespace(&req.namespace) {
            Some(ns) => self.usable(&ns, &req.namespace)?,
            // Refused before the model's work; checked again when the namespace is created.
            None => self.room_for_namespace(&req.namespace)?,
        }
        let vector = self.embed(&req.query).await?;
        req.scope = context::scoped(std::mem::take(&mut req.scope), context);
        self.blocking("Store", move |this| this.store_blocking(req, vector)).await
    }

    /// `req.scope` here already holds the context key.
    fn store_blocking(&self, req: StoreRequest, vector: Vec<f32>) -> Result<u64, CacheError> {
        let now = self.now();
        let ns = self.namespace_or_create(&req.namespace)?;
        let ttl = req.ttl_seconds.unwrap_or_else(|| ns.read(|r| r.ttl_seconds));
        let expires_at_unix_ms = match ttl {
            0 => 0,
            ttl => now.saturating_add(i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX)),
        };
        let id = self.ids.next(&self.store)?;
        let exact = keys::exact_key(&req.namespace, &req.scope, &normalize(&req.query));
        let scope = keys::scope_id(&req.scope);
        let entry = EntryRecord {
            id,
            namespace: req.namespace,
            query: req.query,
            response: req.response,
            scope: req.scope,
            metadata: req.metadata,
            created_at_unix_ms: now,
            expires_at_unix_ms,
            vector,
            input_tokens: req.usage.input_tokens,
            output_tokens: req.usage.output_tokens,
            cost_usd: req.usage.cost_usd,
        };
        let size_bytes = entry.encoded_len() as u64 + ENTRY_OVERHEAD_BYTES;
        let meta = Meta {
            namespace: entry.namespace.as_str().into(),
            scope,
            created_at_unix_ms: now,
            expires_at_unix_ms,
            last_used_unix_ms: now,
            hit_count: 0,
            size_bytes,
        };

        // Capacity is made room for in the same batch as the new entry, so that no reader
        // ever sees the namespace over its limit and no crash leaves it there.
        let replaced_hint = self.store.get_exact(&exact)?.map(|(_, old)| old);
        let max_entries = ns.read(|r| r.max_entries);
        let mut victims = self.ledger.over_entries(&entry.namespace, max_entries, 1, replaced_hint);
        let freed = replaced_hint.and_then(|id| self.ledger.get_size(id)).unwrap_or(0);
        for v in self.ledger.over_bytes(self.defaults.max_bytes, size_bytes.saturating_sub(freed), replaced_hint) {
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        let victims = self.victim_entries(victims)?;
        let victim_keys: Vec<[u8; 32]> = victims.iter().map(exact_key_of).collect();

        let _deleting = self.deleting.read();
        let _stripes = self.lock_stripes(victim_keys.iter().chain([&exact]));
        // A Drop of this namespace may have run since it was looked up (Drop holds every
        // stripe); if so this Store creates it afresh.
        let ns = match self.namespace(&entry.namespace) {
            Some(current) if Arc::ptr_eq(&current, &ns) => ns,
            _ => self.namespace_or_create(&entry.namespace)?,
        };
        // The same question in the same scope replaces the older answer, in the same batch.
        let replaced = self.store.get_exact(&exact)?.map(|(_, old)| old);
        let mut batch = self.store.batch();
        batch.put_entry(&entry, &meta.to_record());
        batch.put_exact(&exact, &entry.namespace, id);
        if let Some(old) = replaced {
            batch.delete_entry(&entry.namespace, old);
        }
        let mut evicted = Vec::new();
        for (victim, key) in victims.iter().zip(&victim_keys) {
            if Some(victim.id) == replaced || !self.ledger.contains(victim.id) {
                continue;
            }
            batch.delete_entry(&victim.namespace, victim.id);
            if self.store.get_exact(key)?.is_some_and(|(_, id)| id == victim.id) && key != &exact {
                batch.delete_exact(key);
            }
            evicted.push(victim);
        }
        self.store.write(batch)?;

        self.index.insert(&entry.namespace, &scope, id, &entry.vector);
        self.ledger.insert(id, meta);
        if let Some(old) = replaced {
            self.index.remove(&entry.namespace, &scope, old);
            self.ledger.remove(old);
        }
        for victim in &evicted {
            self.forget(victim);
            self.count(&victim.namespace, |c| &c.evictions);
        }
        Counters::bump(&self.totals.stores);
        Counters::bump(&ns.counters.stores);
        Ok(id)
    }

    /// The stored entries of victims, skipping those already gone.
    pub(super) fn victim_entries(&self, victims: Vec<Victim>) -> Result<Vec<EntryRecord>, CacheError> {
        let mut by_namespace: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
        for v in victims {
            by_namespace.entry(v.namespace).or_default().push(v.id);
        }
        let mut entries = Vec::new();
        for (namespace, ids) in by_namespace {
            entries.extend(self.store.get_entries(&namespace, &ids)?.into_iter().flatten());
        }
        Ok(entries)
    }
}
