//! Namespaces: their settings in memory (what every lookup reads), their creation on first
//! Store, and their configuration.

use super::counters::Counters;
use super::verified::NamespaceModel;
use super::{validate, Cache, CacheError, Defaults, NamespaceUpdate, NamespaceView};
use crate::store::NamespaceRecord;
use parking_lot::RwLock;
use std::sync::Arc;

pub(super) struct NamespaceState {
    pub settings: RwLock<NamespaceRecord>,
    pub counters: Counters,
    /// Set when its vectors came from another model than the one loaded: its partitions
    /// are not loaded and Lookup/Store are refused until `semcache reembed`.
    pub stale_model: Option<String>,
    /// What verified mode learned here (kept in static mode too, so switching is warm).
    pub model: NamespaceModel,
}

impl NamespaceState {
    pub fn new(settings: NamespaceRecord, stale_model: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            settings: RwLock::new(settings),
            counters: Counters::default(),
            stale_model,
            model: NamespaceModel::default(),
        })
    }

    /// Verified mode's error bound, or `None` in static mode.
    pub fn error_bound(&self) -> Option<f64> {
        let delta = self.read(|r| r.error_bound);
        (delta > 0.0).then_some(f64::from(delta))
    }

    pub fn settings(&self) -> NamespaceRecord {
        self.settings.read().clone()
    }

    /// One setting without cloning the record (the lookup path reads this every time).
    pub fn read<T>(&self, f: impl FnOnce(&NamespaceRecord) -> T) -> T {
        f(&self.settings.read())
    }
}

pub(super) fn default_record(name: &str, defaults: Defaults, model: &str, now: i64) -> NamespaceRecord {
    NamespaceRecord {
        name: name.to_owned(),
        similarity_threshold: defaults.similarity_threshold,
        ttl_seconds: defaults.ttl_seconds,
        max_entries: 0,
        embedding_model: model.to_owned(),
        created_at_unix_ms: now,
        threshold_floor: 0.0,
        hit_guards: None,
        error_bound: 0.0,
    }
}

impl Cache {
    pub(super) fn namespace_or_create(&self, name: &str) -> Result<Arc<NamespaceState>, CacheError> {
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        let _guard = self.configure.lock();
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        self.room_for_namespace(name)?;
        let record = default_record(name, self.defaults, &self.embedder.info().fingerprint, self.now());
        self.persist_namespace(&record)?;
        let state = NamespaceState::new(record, None);
        self.namespaces.write().insert(name.to_owned(), state.clone());
        Ok(state)
    }

    pub(super) fn room_for_namespace(&self, name: &str) -> Result<(), CacheError> {
        let count = self.namespaces.read().len();
        if count >= self.limits.max_namespaces {
            return Err(CacheError::LimitReached {
                limit: "--max-namespaces",
                reason: format!(
                    "cannot create namespace {name:?}: {count} namespaces exist and at most {} are allowed; \
                     drop unused ones or raise the limit",
                    self.limits.max_namespaces
                ),
            });
        }
        Ok(())
    }

    pub(super) fn persist_namespace(&self, record: &NamespaceRecord) -> Result<(), CacheError> {
        let mut batch = self.store.batch();
        batch.put_namespace(record);
        Ok(self.store.write(batch)?)
    }

    /// Creates or updates a namespace; unset fields keep their value. A lowered capacity
    /// applies at once.
    pub async fn configure_namespace(self: &Arc<Self>, update: NamespaceUpdate) -> Result<NamespaceView, CacheError> {
        validate::namespace(&update.name)?;
        if let Some(t) = update.similarity_threshold {
            validate::threshold("similarity_threshold", t)?;
        }
        if let Some(f) = update.threshold_floor {
            validate::floor(f)?;
        }
        if let Some(delta) = update.error_bound {
            validate::error_bound(delta)?;
        }
        self.blocking("ConfigureNamespace", move |this| this.configure_blocking(&update)).await
    }

    fn configure_blocking(&self, update: &NamespaceUpdate) -> Result<NamespaceView, CacheError> {
        let ns = self.namespace_or_create(&update.name)?;
        {
            let _guard = self.configure.lock();
            let mut record = ns.settings();
            if let Some(t) = update.similarity_threshold {
                record.similarity_threshold = t;
            }
            if let Some(ttl) = update.ttl_seconds {
                record.ttl_seconds = ttl;
            }
            if let Some(max) = update.max_entries {
                record.max_entries = max;
            }
            if let Some(floor) = update.threshold_floor {
                record.threshold_floor = floor;
            }
            if let Some(on) = update.hit_guards {
                record.hit_guards = Some(on);
            }
            if let Some(delta) = update.error_bound {
                record.error_bound = delta;
            }
            validate::threshold_above_floor(
                &record.name,
                record.similarity_threshold,
                record.threshold_floor,
                update.threshold_floor.is_some(),
            )?;
            self.persist_namespace(&record)?;
            *ns.settings.write() = record;
        }
        if update.max_entries.is_some_and(|m| m > 0) {
            self.enforce_capacity()?;
        }
        Ok(self.view(&update.name, &ns))
    }

    fn view(&self, name: &str, ns: &NamespaceState) -> NamespaceView {
        let settings = ns.settings();
        let hit_guards = settings.hit_guards.unwrap_or(self.defaults.hit_guards);
        NamespaceView { settings, entries: self.ledger.namespace_len(name), hit_guards }
    }

    pub fn get_namespace(&self, name: &str) -> Result<NamespaceView, CacheError> {
        validate::namespace(name)?;
        let ns = self.namespace(name).ok_or_else(|| CacheError::NamespaceNotFound(name.to_owned()))?;
        Ok(self.view(name, &ns))
    }

    pub fn list_namespaces(&self) -> Vec<NamespaceView> {
        let map = self.namespaces.read();
        let mut views: Vec<_> = map.iter().map(|(name, ns)| self.view(name, ns)).collect();
        views.sort_by(|a, b| a.settings.name.cmp(&b.settings.name));
        views
    }
}
