//! Graph checkpoints: a partition's hnsw_rs graph dumped with `file_dump` into the data dir,
//! so that start-up reloads it in seconds instead of re-inserting every vector.
//!
//! A checkpoint is only a cache of work: which entries it holds is read from the graph itself
//! and compared with RocksDB at start (entries added since are inserted, deleted ones marked
//! dead), so a stale checkpoint costs time, never correctness. Each one is written into a
//! fresh `<key>.new` directory, synced, and then renamed over `<key>`; `meta.json`, written
//! last, marks it complete. A crash at any point leaves at least one usable or no checkpoint.

use super::ScopeId;
use hnsw_rs::prelude::{AnnT, DistDot, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const FORMAT: u32 = 1;
const BASENAME: &str = "graph";
const META: &str = "meta.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub format: u32,
    pub namespace: String,
    /// Hex of the scope id.
    pub scope: String,
    pub dim: usize,
    /// Model fingerprint the vectors came from: a checkpoint of another model is useless.
    pub model: String,
    /// Points in the graph, dead ones included.
    pub points: usize,
    pub written_unix_ms: i64,
}

/// A partition's checkpoint directory name: a hash, because namespace names and scopes are
/// not file names.
pub fn key(namespace: &str, scope: &ScopeId) -> String {
    let mut h = Sha256::new();
    h.update((namespace.len() as u64).to_be_bytes());
    h.update(namespace.as_bytes());
    h.update(scope);
    h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn scope_hex(scope: &ScopeId) -> String {
    scope.iter().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Dumps `hnsw` as the checkpoint of its partition and swaps it in. On failure the previous
/// checkpoint is left as it was and the half-written one is removed (on a full disk it would
/// otherwise hold the space that the next try needs).
pub fn write(graphs: &Path, hnsw: &Hnsw<'static, f32, DistDot>, meta: &Meta) -> io::Result<()> {
    let key = key(&meta.namespace, &parse_scope(&meta.scope).expect("scope hex we wrote"));
    fs::create_dir_all(graphs)?;
    let fresh = graphs.join(format!("{key}.new"));
    if fresh.exists() {
        fs::remove_dir_all(&fresh)?;
    }
    fs::create_dir(&fresh)?;
    if let Err(e) = write_fresh(&fresh, hnsw, meta) {
        let _ = fs::remove_dir_all(&fresh);
        return Err(e);
    }
    swap_in(graphs, &key, &fresh)
}

fn write_fresh(fresh: &Path, hnsw: &Hnsw<'static, f32, DistDot>, meta: &Meta) -> io::Result<()> {
    // hnsw_rs reports failures as panics or as anyhow errors; both become io errors here.
    let dumped = catch_unwind(AssertUnwindSafe(|| hnsw.file_dump(fresh, BASENAME)))
        .map_err(|_| io::Error::other("hnsw_rs panicked while dumping the graph"))?
        .map_err(|e| io::Error::other(format!("hnsw_rs could not dump the graph: {e}")))?;
    if dumped != BASENAME {
        return Err(io::Error::other(format!("hnsw_rs dumped under an unexpected name {dumped:?}")));
    }
    for ext in ["hnsw.graph", "hnsw.data"] {
        File::open(fresh.join(format!("{BASENAME}.{ext}")))?.sync_all()?;
    }
    let json = serde_json::to_vec_pretty(meta).map_err(io::Error::other)?;
    fs::write(fresh.join(META), json)?;
    File::open(fresh.join(META))?.sync_all()?;
    sync_dir(fresh)
}

fn swap_in(graphs: &Path, key: &str, fresh: &Path) -> io::Result<()> {
    let current = graphs.join(key);
    let old = graphs.join(format!("{key}.old"));
    if current.exists() {
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        fs::rename(&current, &old)?;
    }
    fs::rename(fresh, &current)?;
    sync_dir(graphs)?;
    if old.exists() {
        fs::remove_dir_all(&old)?;
    }
    Ok(())
}

fn parse_scope(hex: &str) -> Option<ScopeId> {
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Why a checkpoint was not used; logged, then the partition is rebuilt from RocksDB.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no checkpoint")]
    Missing,
    #[error("checkpoint {path} is unusable: {reason}")]
    Unusable { path: PathBuf, reason: String },
}

/// Loads the newest usable checkpoint of a partition.
pub fn load(
    graphs: &Path,
    namespace: &str,
    scope: &ScopeId,
    dim: usize,
    model: &str,
) -> Result<(Hnsw<'static, f32, DistDot>, Meta), LoadError> {
    let key = key(namespace, scope);
    let mut last = LoadError::Missing;
    // `<key>` is the current one; `.new` and `.old` exist only if a swap was interrupted,
    // and either is still a correct (if older) picture of the partition.
    for name in [key.clone(), format!("{key}.new"), format!("{key}.old")] {
        let dir = graphs.join(name);
        if !dir.join(META).is_file() {
            continue;
        }
        match load_dir(&dir, namespace, scope, dim, model) {
            Ok(loaded) => return Ok(loaded),
            Err(reason) => last = LoadError::Unusable { path: dir, reason },
        }
    }
    Err(last)
}

fn load_dir(
    dir: &Path,
    namespace: &str,
    scope: &ScopeId,
    dim: usize,
    model: &str,
) -> Result<(Hnsw<'static, f32, DistDot>, Meta), String> {
    let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META)).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{META}: {e}"))?;
    let expected = (FORMAT, namespace, scope_hex(scope), dim, model);
    if (meta.format, meta.namespace.as_str(), meta.scope.clone(), meta.dim, meta.model.as_str()) != expected {
        return Err(format!(
            "made for format {} namespace {:?} scope {} dim {} model {}, expected {:?}",
            meta.format, meta.namespace, meta.scope, meta.dim, meta.model, expected
        ));
    }
    // The reloaded graph borrows its loader for as long as it lives. Without mmap (the
    // default) every vector is copied into the graph, so the loader only has to outlive it;
    // it is a few hundred bytes, loaded once per partition per process, so it is leaked
    // rather than tied to the graph with a self-referential type.
    let io: &'static HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
    // hnsw_rs asserts on malformed files; a corrupt checkpoint must not take the server down.
    let hnsw: Hnsw<'static, f32, DistDot> = catch_unwind(AssertUnwindSafe(|| io.load_hnsw_with_dist(DistDot)))
        .map_err(|_| "hnsw_rs panicked while reading it (corrupt file?)".to_string())?
        .map_err(|e| format!("hnsw_rs could not read it: {e}"))?;
    let points = hnsw.get_nb_point();
    if points != meta.points {
        return Err(format!("holds {points} points, its meta.json says {}", meta.points));
    }
    let data_dim = hnsw.get_point_indexation().get_data_dimension();
    if points > 0 && data_dim != dim {
        return Err(format!("vectors have {data_dim} dimensions, expected {dim}"));
    }
    Ok((hnsw, meta))
}

/// Removes the checkpoint of a partition (all generations).
pub fn remove(graphs: &Path, namespace: &str, scope: &ScopeId) -> io::Result<()> {
    let key = key(namespace, scope);
    for name in [key.clone(), format!("{key}.new"), format!("{key}.old")] {
        let dir = graphs.join(name);
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    Ok(())
}

/// Removes checkpoints whose partition is not in `keep` (dropped namespaces, partitions that
/// shrank back to exact scans).
pub fn retain(graphs: &Path, keep: &std::collections::HashSet<String>) -> io::Result<usize> {
    let Ok(entries) = fs::read_dir(graphs) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = name.split('.').next().unwrap_or_default();
        if !keep.contains(key) {
            fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}
