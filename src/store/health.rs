//! Whether the data dir takes writes, and what a RocksDB error means for the caller.
//!
//! RocksDB stops taking writes after a failed write (the WAL is in an unknown state), so one
//! error says what every later write will meet until the cause goes away. The state is kept
//! here so that a full disk is reported once (a log line at ERROR, a metric) instead of once
//! per request, and so that the server can tell when writes work again.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// Free space RocksDB wants before it resumes writes after a full disk: it reserves one
/// memtable's worth, so that the flush that follows recovery cannot fill the disk again.
/// Also the memtable size of each column family (see [`super::Store::open`]).
pub const RESUME_HEADROOM_BYTES: u64 = 16 << 20;

/// How often a store that refuses writes is checked again (a probe write, or a reopen).
const RECHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Writability {
    Writable = 0,
    /// A write met a full disk; RocksDB resumes by itself once enough space is free.
    Full = 1,
    /// Opened read-only because the disk was full at start; reopened read-write once enough
    /// space is free.
    ReadOnly = 2,
    /// A write failed for another reason (an I/O error, a failed fsync). RocksDB does not
    /// trust its WAL after that; writes stay refused until a restart replays it.
    Failed = 3,
}

impl Writability {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Full,
            2 => Self::ReadOnly,
            3 => Self::Failed,
            _ => Self::Writable,
        }
    }
}

/// What kind of failure a RocksDB error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    NoSpace,
    /// The files are damaged (a checksum mismatch, a truncated file).
    Corruption,
    /// Any other I/O error.
    Io,
    Other,
}

pub fn classify(e: &rocksdb::Error) -> Fault {
    let message = e.as_ref();
    match e.kind() {
        // RocksDB keeps the OS's words for ENOSPC ("No space left on device") and adds its
        // own sub-code text; either marks a full disk.
        _ if message.contains("No space left on device") || message.contains("NoSpace") => Fault::NoSpace,
        rocksdb::ErrorKind::Corruption => Fault::Corruption,
        rocksdb::ErrorKind::IOError => Fault::Io,
        _ => Fault::Other,
    }
}

pub struct Health {
    state: AtomicU8,
    last_check: Mutex<Instant>,
    /// RocksDB's count of background errors when last looked at.
    background_errors: AtomicU64,
}

impl Health {
    pub fn new(state: Writability) -> Self {
        Self {
            state: AtomicU8::new(state as u8),
            last_check: Mutex::new(Instant::now()),
            background_errors: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> Writability {
        Writability::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Records a state; logs only a change, at ERROR into a refusing state and at INFO out.
    pub fn set(&self, path: &Path, state: Writability, why: &str) {
        let was = Writability::from_u8(self.state.swap(state as u8, Ordering::AcqRel));
        if was == state {
            return;
        }
        let dir = path.display();
        match state {
            Writability::Writable => {
                tracing::info!(data_dir = %dir, "data dir takes writes again; Stores are accepted")
            }
            Writability::Full | Writability::ReadOnly => tracing::error!(
                data_dir = %dir, error = why,
                "data dir is full: Stores are refused and Lookups still served; writes resume by themselves once \
                 {} MiB are free",
                RESUME_HEADROOM_BYTES >> 20
            ),
            Writability::Failed => tracing::error!(
                data_dir = %dir, error = why,
                "a write to the data dir failed: Stores are refused and Lookups still served until semcache is \
                 restarted (RocksDB no longer trusts its log; a restart replays it from disk)"
            ),
        }
    }

    /// Whether RocksDB's background error count grew since the last look.
    pub fn new_background_errors(&self, count: u64) -> bool {
        self.background_errors.swap(count, Ordering::AcqRel) < count
    }

    /// True at most once per [`RECHECK_EVERY`]: whether a refusing store should be tried again.
    pub fn due(&self) -> bool {
        let mut last = self.last_check.lock();
        if last.elapsed() < RECHECK_EVERY {
            return false;
        }
        *last = Instant::now();
        true
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Fails with the OS's reason if `dir` does not take new files (a read-only mount, a
/// directory owned by someone else). A full disk still takes an empty file, so this tells
/// "cannot ever write here" apart from "full for now".
pub fn check_writable_dir(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".semcache-write-check");
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}
