//! S3 mirror: keeps the journal's records as objects in an S3-compatible bucket.
//!
//! The worker hands over records in sequence order. `apply` frames each one into an
//! in-memory object, and `flush` stores that object with one PUT (group commit), so a
//! confirmed record is in the store. Keys and byte layout are in `s3/object.rs`; requests
//! and retries in `s3/store.rs`.
//!
//! To list the tree (verify, resync) or to rebuild it (`logmirror restore`), the newest
//! snapshot and the objects after it are downloaded in order, checked, and replayed through
//! a [`DirMirror`] into a directory (`s3/replay.rs`). With `retention=`, old objects are
//! folded into a snapshot (`s3/fold.rs`, layout in `s3/snapshot.rs`).

mod fold;
mod object;
mod replay;
mod snapshot;
mod store;

use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{debug, info, warn};

use crate::config::{MirrorSpec, S3Options, STATE_DIR_NAME};
use crate::journal::{Op, Record, Seq};

use super::dir::DirMirror;
use super::manifest::{self, Manifest};
use super::{Error, Mirror};

pub use fold::{FoldStats, Folder};
pub use object::{journal_prefix, object_key, parse_object_key};
pub use replay::{ReplayEnd, ReplayStats, ReplayTarget};
pub use snapshot::{index_key, part_key, snapshot_prefix};
pub use store::{StoreError, checksum_header};

use object::PendingObject;
use store::Store;

/// Size at which `apply` stores the pending object before adding more, so that a long
/// resync does not hold the whole tree in memory. A worker's batch (at most 8 MiB of
/// payload) stays below it, so normally each flush stores one object.
const MAX_OBJECT_BYTES: usize = 16 << 20;

/// A mirror kept as journal objects in an S3 bucket.
pub struct S3Mirror {
    name: String,
    prefix: String,
    store: Store,
    journal_id: u64,
    /// Number of the next object to store; one more than the highest in the bucket at open.
    next_number: u64,
    pending: PendingObject,
    /// Directory for replaying the objects when a manifest is needed. It is emptied before
    /// and removed after each use.
    scratch: PathBuf,
    /// Held while a replay for a manifest runs and while a fold removes objects, so that a
    /// fold never removes an object that the replay listed and has yet to download.
    history_lock: Arc<Mutex<()>>,
}

impl S3Mirror {
    /// Opens the mirror at `bucket`/`prefix` for the records of journal `journal_id`.
    ///
    /// Lists the journal objects, which checks that the bucket is reachable with the
    /// credentials of the standard AWS chain, and numbers the next object after the highest
    /// one found. `scratch` is a private directory the mirror may fill and remove.
    pub fn open(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
        journal_id: u64,
        scratch: &Path,
    ) -> Result<S3Mirror, Error> {
        let name = s3_name(bucket, prefix);
        let store = connect(&name, bucket, options)?;
        let objects = replay::list_objects(&store, prefix, &name)?;
        // A fold may have removed every object it covered, so the snapshots count too: a
        // new object must never take a number that a snapshot already covers.
        let snapshots = replay::list_snapshot_keys(&store, prefix, &name)?;
        let newest_object = objects.last().map_or(0, |(number, _)| *number);
        let newest_snapshot = snapshots.iter().map(|(k, _)| k.number()).max();
        let next_number = newest_object.max(newest_snapshot.unwrap_or(0)) + 1;
        info!(
            "mirror {name}: {} journal objects in the bucket, newest snapshot {}; the next \
             object is number {next_number}",
            objects.len(),
            newest_snapshot.map_or("none".to_string(), |n| n.to_string())
        );
        Ok(S3Mirror {
            name,
            prefix: prefix.to_string(),
            store,
            journal_id,
            next_number,
            pending: PendingObject::default(),
            scratch: scratch.to_path_buf(),
            history_lock: Arc::new(Mutex::new(())),
        })
    }

    /// Returns the lock that a [`Folder`] of this mirror must share with it.
    pub fn history_lock(&self) -> Arc<Mutex<()>> {
        self.history_lock.clone()
    }

    fn push(&mut self, record: &Record) -> Result<(), Error> {
        // Storing first keeps a failed apply without effect, so the worker's retry of the
        // same record adds it once.
        if self.pending.len_bytes() >= MAX_OBJECT_BYTES {
            self.upload()?;
        }
        self.pending.push(record).map_err(|e| Error::Setup {
            mirror: self.name.clone(),
            reason: format!("seq {} cannot be framed: {e}", record.seq),
        })?;
        Ok(())
    }

    /// Stores the pending object under the next number.
    fn upload(&mut self) -> Result<(), Error> {
        let number = self.next_number;
        let key = object_key(&self.prefix, number);
        let (first, last) = self.pending.seq_range();
        let frames = self.pending.frame_count();
        let started = Instant::now();
        let body = self.pending.encode(self.journal_id, number);
        let bytes = body.len();
        self.store
            .put_new(&key, body)
            .map_err(|source| Error::Store {
                mirror: self.name.clone(),
                action: "upload of",
                key: key.clone(),
                source: Box::new(source),
            })?;
        debug!(
            "mirror {}: stored key={key} bytes={bytes} records={frames} seqs={first}-{last} \
             in {:.1?}",
            self.name,
            started.elapsed()
        );
        self.pending = PendingObject::default();
        self.next_number += 1;
        Ok(())
    }

    /// Empties the scratch directory and opens it as a directory mirror.
    fn fresh_scratch(&self) -> Result<DirMirror, Error> {
        let failed = |what: &str, e: std::io::Error| Error::Setup {
            mirror: self.name.clone(),
            reason: format!("cannot {what} scratch directory {:?}: {e}", self.scratch),
        };
        remove_scratch(&self.scratch).map_err(|e| failed("empty", e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.scratch)
            .map_err(|e| failed("create", e))?;
        DirMirror::open(&self.scratch)
    }
}

impl Mirror for S3Mirror {
    fn name(&self) -> &str {
        &self.name
    }

    /// Adds an op that has no journal record (a resync's) with seq 0.
    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        self.push(&Record {
            seq: Seq(0),
            committed_at_ns: super::worker::now_ns(),
            op: op.clone(),
        })
    }

    fn apply_record(&mut self, record: &Record) -> Result<(), Error> {
        self.push(record)
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.upload()
    }

    /// Stores what is pending, then replays the history into the scratch directory and
    /// lists it.
    fn manifest(&mut self) -> Result<Manifest, Error> {
        self.flush()?;
        let started = Instant::now();
        let mut target = self.fresh_scratch()?;
        let mut stats = ReplayStats::default();
        let replayed = {
            let _history = self.history_lock.lock().unwrap_or_else(|e| e.into_inner());
            replay::list_history(&self.store, &self.prefix, &self.name).and_then(|history| {
                replay::replay(
                    &self.store,
                    &self.name,
                    &history,
                    &mut target,
                    ReplayTarget::End,
                    &mut stats,
                    &mut |_| {},
                )
            })
        };
        drop(target);
        let skip = [OsStr::new(STATE_DIR_NAME)];
        let result = replayed.and_then(|_| {
            manifest::scan_tree(&self.scratch, &skip).map_err(|e| Error::Setup {
                mirror: self.name.clone(),
                reason: format!("cannot list the replayed tree in {:?}: {e}", self.scratch),
            })
        });
        if let Err(e) = remove_scratch(&self.scratch) {
            warn!(
                "mirror {}: cannot remove scratch directory {:?}: {e}",
                self.name, self.scratch
            );
        }
        debug!(
            "mirror {}: replayed {} objects ({} records, {} bytes) for a manifest in {:.1?}",
            self.name,
            stats.objects,
            stats.records,
            stats.bytes_downloaded,
            started.elapsed()
        );
        result
    }
}

/// Rebuilds the tree of the S3 mirror at `bucket`/`prefix` in the existing directory `dir`
/// as of `until`, by replaying its history through a [`DirMirror`], then syncs it.
///
/// `stats` counts what was applied, and `progress` is called after each object, also when
/// an object fails its checks and the replay stops there. `dir` then contains the tree as of
/// the last frame applied.
pub fn restore(
    bucket: &str,
    prefix: &str,
    options: &S3Options,
    dir: &Path,
    until: ReplayTarget,
    stats: &mut ReplayStats,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<ReplayEnd, Error> {
    let name = s3_name(bucket, prefix);
    let store = connect(&name, bucket, options)?;
    let history = replay::list_history(&store, prefix, &name)?;
    let mut target = DirMirror::open(dir)?;
    let end = replay::replay(&store, &name, &history, &mut target, until, stats, progress)?;
    target.flush()?;
    Ok(end)
}

fn s3_name(bucket: &str, prefix: &str) -> String {
    MirrorSpec::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    }
    .name()
}

fn connect(name: &str, bucket: &str, options: &S3Options) -> Result<Store, Error> {
    Store::connect(options, bucket).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "connection to bucket",
        key: bucket.to_string(),
        source: Box::new(source),
    })
}

/// Removes a scratch directory and everything in it; a missing one is fine.
fn remove_scratch(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
