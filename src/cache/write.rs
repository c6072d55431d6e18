//! Store: the entry, its exact-repeat key, the replaced older answer and the evictions that
//! make room, all in one synced batch; then the index and the ledger.

use super::counters::Counters;
use super::ledger::{Meta, Victim};
use super::probe::Probe;
use super::verified::{from_domain, Judged};
use super::{context, exact_key_of, validate, Cache, CacheError, StoreRequest, Stored, ValidationError};
use crate::store::{keys, EntryRecord};
use crate::text::{normalize, normalize_answer};
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Bytes an entry costs beyond its record: catalog row, exact key and RocksDB keys.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

impl Cache {
    /// Whether [`Cache::store`] would refuse this request before doing any work: so that a
    /// batch can refuse a bad element before any of it is stored.
    pub fn check_store(&self, req: &StoreRequest) -> Result<(), CacheError> {
        self.check_store_opening(req).map(|_| ())
    }

    /// The checks of a Store, with what they produce: the context key and the opened token.
    fn check_store_opening(&self, req: &StoreRequest) -> Result<(Option<String>, Option<Probe>), CacheError> {
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
        if req.probe_token.is_empty() && req.probe_verdict.is_some() {
            return Err(ValidationError::new(
                "probe_verdict",
                "is set without a probe_token",
                "send the probe_token of the Lookup that answered EXPLORE with it, or leave probe_verdict unset",
            )
            .into());
        }
        for o in &req.evidence.observations {
            if !(-1.0..=1.0).contains(&o.features.similarity) || !(0.0..=2.0).contains(&o.features.margin) {
                return Err(ValidationError::new(
                    "evidence.observations",
                    format!("holds similarity {} and margin {}", o.features.similarity, o.features.margin),
                    "a similarity must be in [-1, 1] and a margin in [0, 2]",
                )
                .into());
            }
        }
        match self.namespace(&req.namespace) {
            Some(ns) => self.usable(&ns, &req.namespace)?,
            // Refused before the model's work; checked again when the namespace is created.
            None => self.room_for_namespace(&req.namespace)?,
        }
        // Checked before the model's work too, and claimed only with the write.
        let probe = match req.probe_token.as_str() {
            "" => None,
            token => Some(self.open_probe(&req.namespace, &req.query, token)?),
        };
        Ok((context, probe))
    }

    /// Caches a response; returns the new entry's id once it is durable, and with a probe
    /// token what was learned from it.
    pub async fn store(self: &Arc<Self>, mut req: StoreRequest) -> Result<Stored, CacheError> {
        let (context, probe) = self.check_store_opening(&req)?;
        let vector = self.embed(&req.query).await?;
        req.scope = context::scoped(std::mem::take(&mut req.scope), context);
        self.blocking("Store", move |this| this.store_probed(req, vector, probe)).await
    }

    /// Judges the probe (claiming its token), then stores; the claim is given back if the
    /// Store fails, so the gateway may retry with the same token.
    fn store_probed(&self, req: StoreRequest, vector: Vec<f32>, probe: Option<Probe>) -> Result<Stored, CacheError> {
        let _update = probe.map(|p| self.learning.lock(p.entry));
        let judged = match probe {
            Some(probe) => Some(self.judge(&req.namespace, probe, &req.response, req.probe_verdict)?),
            None => None,
        };
        let claimed = judged.as_ref().map(|j| j.probe);
        let stored = self.store_blocking(req, vector, judged);
        if let (Err(_), Some(probe)) = (&stored, claimed) {
            self.learning.signer.release(&probe);
        }
        stored
    }

    /// `req.scope` here already holds the context key.
    fn store_blocking(
        &self,
        req: StoreRequest,
        vector: Vec<f32>,
        judged: Option<Judged>,
    ) -> Result<Stored, CacheError> {
        let now = self.now();
        let probe_correct = judged.as_ref().and_then(|j| j.learned.as_ref().map(|l| l.correct));
        // An answer judged the same as the probed one joins its answer; otherwise its own.
        let answer = match judged.as_ref().and_then(|j| j.learned.as_ref()).filter(|l| l.correct) {
            Some(l) => l.answer,
            None => keys::answer_id(&normalize_answer(&req.response)),
        };
        let imported = (!req.evidence.is_empty()).then(|| from_domain(&req.evidence));
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
            answer,
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
        // Evidence first: a deletion later in the batch (the probed entry evicted or replaced)
        // wins over it.
        if let Some(j) = &judged {
            batch.put_used_probe(j.probe.nonce, j.probe.expires_at_unix_ms);
            if let Some(l) = &j.learned {
                batch.put_evidence(&entry.namespace, l.entry, &l.evidence.to_record());
            }
        }
        if let Some(evidence) = &imported {
            batch.put_evidence(&entry.namespace, id, &evidence.to_record());
        }
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
            self.learning.forget(old, Some(&ns));
        }
        for victim in &evicted {
            self.forget(victim);
            self.count(&victim.namespace, |c| &c.evictions);
        }
        if let Some(j) = judged {
            self.apply_judged(&ns, j);
        }
        if let Some(evidence) = imported {
            self.apply_imported(&ns, id, evidence);
        }
        Counters::bump(&self.totals.stores);
        Counters::bump(&ns.counters.stores);
        Ok(Stored { id, probe_correct })
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
