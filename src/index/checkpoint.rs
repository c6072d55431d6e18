//! Graph checkpoints: a partition's compact graph written as it is laid out in memory
//! (`compact::Compact::write_to`, with a CRC-32 of every byte after it), so that start-up
//! reads it back at disk speed instead of re-inserting every vector.
//!
//! A checkpoint is only a cache of work: which entries it holds is read from the graph itself
//! and compared with RocksDB at start (entries added since are inserted, deleted ones marked
//! dead), so a stale checkpoint costs time, never correctness. Each one is written into a
//! fresh `<key>.new` directory, synced, and then renamed over `<key>`; `meta.json`, written
//! last, marks it complete. A crash at any point leaves at least one usable or no checkpoint.

use super::compact::Compact;
use super::ScopeId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// 2: the compact int8 layout (1 was hnsw_rs's own dump of f32 graphs; such a checkpoint is
/// refused as unusable and the partition rebuilt from RocksDB once).
pub const FORMAT: u32 = 2;
const GRAPH: &str = "graph.bin";
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
pub fn write(graphs: &Path, graph: &Compact, meta: &Meta) -> io::Result<()> {
    let key = key(&meta.namespace, &parse_scope(&meta.scope).expect("scope hex we wrote"));
    fs::create_dir_all(graphs)?;
    let fresh = graphs.join(format!("{key}.new"));
    if fresh.exists() {
        fs::remove_dir_all(&fresh)?;
    }
    fs::create_dir(&fresh)?;
    if let Err(e) = write_fresh(&fresh, graph, meta) {
        let _ = fs::remove_dir_all(&fresh);
        return Err(e);
    }
    swap_in(graphs, &key, &fresh)
}

fn write_fresh(fresh: &Path, graph: &Compact, meta: &Meta) -> io::Result<()> {
    let file = File::create(fresh.join(GRAPH))?;
    let mut out = Crc(crc32fast::Hasher::new(), BufWriter::with_capacity(1 << 20, file));
    graph.write_to(&mut out)?;
    let Crc(crc, mut w) = out;
    w.write_all(&crc.finalize().to_le_bytes())?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
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
) -> Result<(Compact, Meta), LoadError> {
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

fn load_dir(dir: &Path, namespace: &str, scope: &ScopeId, dim: usize, model: &str) -> Result<(Compact, Meta), String> {
    let meta: Meta = serde_json::from_slice(&fs::read(dir.join(META)).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{META}: {e}"))?;
    let expected = (FORMAT, namespace, scope_hex(scope), dim, model);
    if (meta.format, meta.namespace.as_str(), meta.scope.clone(), meta.dim, meta.model.as_str()) != expected {
        return Err(format!(
            "made for format {} namespace {:?} scope {} dim {} model {}, expected {:?}",
            meta.format, meta.namespace, meta.scope, meta.dim, meta.model, expected
        ));
    }
    let file = File::open(dir.join(GRAPH)).map_err(|e| format!("{GRAPH}: {e}"))?;
    let mut input = Crc(crc32fast::Hasher::new(), BufReader::with_capacity(1 << 20, file));
    let graph = Compact::read_from(&mut input)?;
    let Crc(crc, mut rest) = input;
    let mut stored = [0u8; 4];
    rest.read_exact(&mut stored).map_err(|_| "truncated: no checksum".to_string())?;
    if u32::from_le_bytes(stored) != crc.finalize() {
        return Err(format!("{GRAPH} fails its checksum (damaged)"));
    }
    if graph.points() != meta.points {
        return Err(format!("holds {} points, its meta.json says {}", graph.points(), meta.points));
    }
    if graph.points() > 0 && graph.dim() != dim {
        return Err(format!("vectors have {} dimensions, expected {dim}", graph.dim()));
    }
    Ok((graph, meta))
}

/// A reader or writer that hashes every byte going through it.
struct Crc<T>(crc32fast::Hasher, T);

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.1.write(buf)?;
        self.0.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.1.flush()
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.1.read(buf)?;
        self.0.update(&buf[..n]);
        Ok(n)
    }
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
