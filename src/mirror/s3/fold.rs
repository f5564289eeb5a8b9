//! Folds of an S3 mirror's history (`retention=`): journal objects whose every record is
//! older than the retention are replaced by a snapshot of the tree they build, so that a
//! replay no longer downloads years of records.
//!
//! A fold replays the newest snapshot and the old objects into a private directory and
//! stores that tree as a new snapshot (`snapshot.rs`). It reads every part back and checks
//! it, stores the index and reads it back. Only then does it remove the objects and the
//! older snapshot. It never writes a journal object, so it runs beside the mirror's worker
//! on its own thread.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info};

use crate::config::{Compression, S3Options, STATE_DIR_NAME};
use crate::journal::{Record, Seq};
use crate::mirror::manifest::{self, Manifest};
use crate::mirror::{DirMirror, Error, Mirror};

use super::object::PendingObject;
use super::replay::{self, History, ReplayStats, ReplayTarget, Source};
use super::seal::Seal;
use super::snapshot::{self, PartEntry, SnapshotIndex, SnapshotKey};
use super::store::{Condition, PutOutcome, Store, StoreError};
use super::{MAX_OBJECT_BYTES, connect, load_seal, remove_scratch, s3_name};

/// Counts from one fold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Number of the new snapshot: the newest journal object it covers.
    pub snapshot: u64,
    /// Number of the snapshot it replaced; 0 when there was none.
    pub previous_snapshot: u64,
    /// Journal objects the new snapshot covers that the previous one did not.
    pub objects_folded: u64,
    /// Journal objects removed from the bucket.
    pub objects_removed: u64,
    /// Parts of the new snapshot, and the frames and bytes in them.
    pub parts: u32,
    pub frames: u64,
    pub bytes_stored: u64,
    /// Newest journal seq the snapshot covers, and the commit time of its newest frame.
    pub last_seq: Seq,
    pub last_frame_at_ns: u64,
}

/// Folds the history of the mirror at `bucket`/`prefix` once, from a process without a
/// mount (`logmirror fold`): every journal object whose records are all older than
/// `retention` goes into a new snapshot. The replayed tree goes to a private directory in
/// the system's temporary directory, removed afterwards. Returns `None` when nothing is that
/// old.
pub fn fold_once(
    bucket: &str,
    prefix: &str,
    options: &S3Options,
    retention: std::time::Duration,
) -> Result<Option<FoldStats>, Error> {
    let name = s3_name(bucket, prefix);
    let setup = |reason: String| Error::Setup {
        mirror: name.clone(),
        reason,
    };
    let token = super::lease::random_hex(8)
        .map_err(|e| setup(format!("cannot create a name for the fold directory: {e}")))?;
    let dir = std::env::temp_dir().join(format!("logmirror-fold.{token}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| setup(format!("cannot create fold directory {dir:?}: {e}")))?;
    let now_ns = crate::mirror::worker::now_ns();
    let cutoff_ns = now_ns.saturating_sub(u64::try_from(retention.as_nanos()).unwrap_or(u64::MAX));
    let folded = Folder::new(
        bucket,
        prefix,
        options,
        &dir.join("tree"),
        Arc::new(Mutex::new(())),
    )
    .and_then(|mut folder| folder.fold(cutoff_ns));
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        log::warn!("mirror {name}: cannot remove fold directory {dir:?}: {e}");
    }
    folded
}

/// Folds the history of one S3 mirror.
pub struct Folder {
    name: String,
    prefix: String,
    store: Store,
    /// Private directory for the replayed tree; emptied before and removed after each fold.
    scratch: PathBuf,
    /// Shared with the [`super::S3Mirror`], whose replays must not see objects vanish.
    history_lock: Arc<Mutex<()>>,
    /// The `encrypt_key`, which seals the snapshot's parts and index.
    seal: Option<Seal>,
    compression: Compression,
}

impl Folder {
    /// Prepares folds of the mirror at `bucket`/`prefix`. Makes no request.
    pub fn new(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
        scratch: &Path,
        history_lock: Arc<Mutex<()>>,
    ) -> Result<Folder, Error> {
        let name = s3_name(bucket, prefix);
        let store = connect(&name, bucket, options)?;
        Folder::with_store(store, name, prefix, options, scratch, history_lock)
    }

    /// Prepares folds of the mirror `name` at `prefix` of `store`, with the `encrypt_key`
    /// and compression of `options`.
    pub(super) fn with_store(
        store: Store,
        name: String,
        prefix: &str,
        options: &S3Options,
        scratch: &Path,
        history_lock: Arc<Mutex<()>>,
    ) -> Result<Folder, Error> {
        let seal = load_seal(&name, options)?;
        Ok(Folder {
            seal,
            compression: options.compression,
            name,
            prefix: prefix.to_string(),
            store,
            scratch: scratch.to_path_buf(),
            history_lock,
        })
    }

    fn source(&self) -> Source<'_> {
        Source {
            store: &self.store,
            name: &self.name,
            seal: self.seal.as_ref(),
        }
    }

    /// Returns the mirror's name, as in status and logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Folds every journal object whose newest frame was committed before `cutoff_ns` (ns
    /// since the Unix epoch) into a new snapshot. Returns `None` when no object is that old.
    pub fn fold(&mut self, cutoff_ns: u64) -> Result<Option<FoldStats>, Error> {
        let started = Instant::now();
        let history =
            replay::list_history(&self.store, &self.prefix, &self.name, self.seal.as_ref())?;
        if !self.has_foldable(&history, cutoff_ns)? {
            return Ok(None);
        }

        // NOTE: every fold uploads the whole tree again, however few objects it folds.
        let replayed = self.replay_old(&history, cutoff_ns);
        let built = replayed.and_then(|stats| {
            self.remove_unfinished(&history)?;
            let number = history.snapshot_number() + stats.objects;
            let index = self.store_snapshot(number, &stats)?;
            Ok((stats, index))
        });
        if let Err(e) = remove_scratch(&self.scratch) {
            log::warn!(
                "mirror {}: cannot remove fold directory {:?}: {e}",
                self.name,
                self.scratch
            );
        }
        let (replayed, index) = built?;

        let objects_removed = self.remove_folded(&history, index.number)?;
        let stats = FoldStats {
            snapshot: index.number,
            previous_snapshot: history.snapshot_number(),
            objects_folded: replayed.objects,
            objects_removed,
            parts: index.parts.len() as u32,
            frames: index.frame_count,
            bytes_stored: index.parts.iter().map(|p| p.bytes).sum(),
            last_seq: index.last_seq,
            last_frame_at_ns: index.last_frame_at_ns,
        };
        info!(
            "mirror {}: folded journal objects up to number {} into a snapshot in {:.1?}: \
             objects_folded={} objects_removed={} parts={} frames={} bytes={} last_seq={}",
            self.name,
            stats.snapshot,
            started.elapsed(),
            stats.objects_folded,
            stats.objects_removed,
            stats.parts,
            stats.frames,
            stats.bytes_stored,
            stats.last_seq
        );
        Ok(Some(stats))
    }

    /// Returns true when the first journal object after the snapshot is older than the
    /// cutoff. Only that object is downloaded, so a fold with nothing to do is cheap.
    fn has_foldable(&self, history: &History, cutoff_ns: u64) -> Result<bool, Error> {
        let Some((number, key)) = history.objects.first() else {
            return Ok(false);
        };
        let mut stats = ReplayStats::default();
        let (first, _) = replay::fetch_object(self.source(), key, *number, &mut stats)?;
        Ok(replay::newest_frame_ns(&first) < cutoff_ns)
    }

    /// Replays the snapshot and the objects older than the cutoff into the scratch directory.
    fn replay_old(&self, history: &History, cutoff_ns: u64) -> Result<ReplayStats, Error> {
        remove_scratch(&self.scratch).map_err(|e| self.scratch_error("empty", e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.scratch)
            .map_err(|e| self.scratch_error("create", e))?;
        let mut target = DirMirror::open(&self.scratch)?;
        let mut stats = ReplayStats::default();
        replay::replay(
            self.source(),
            history,
            &mut target,
            ReplayTarget::ObjectsBefore(cutoff_ns),
            &mut stats,
            &mut |_| {},
        )?;
        target.flush()?;
        Ok(stats)
    }

    fn scratch_error(&self, action: &str, e: std::io::Error) -> Error {
        Error::Setup {
            mirror: self.name.clone(),
            reason: format!("cannot {action} fold directory {:?}: {e}", self.scratch),
        }
    }

    /// Stores the tree in the scratch directory as snapshot `number`, reads every part
    /// back, then stores the index and reads it back. Returns the index.
    fn store_snapshot(&self, number: u64, stats: &ReplayStats) -> Result<SnapshotIndex, Error> {
        let tree =
            manifest::scan_tree(&self.scratch, &[OsStr::new(STATE_DIR_NAME)]).map_err(|e| {
                Error::Setup {
                    mirror: self.name.clone(),
                    reason: format!("cannot list the folded tree in {:?}: {e}", self.scratch),
                }
            })?;
        let parts = self.store_parts(number, &tree, stats.last_frame_at_ns)?;
        for (part, entry) in (1u32..).zip(&parts) {
            let key = snapshot::part_key(&self.prefix, number, part);
            let mut read_back = ReplayStats::default();
            replay::fetch_part(self.source(), &key, number, part, entry, &mut read_back)?;
        }

        let index = SnapshotIndex {
            number,
            journal_id: stats.journal_id,
            last_seq: stats.last_seq,
            last_seq_at_ns: stats.last_seq_at_ns,
            last_frame_at_ns: stats.last_frame_at_ns,
            ends_in_resync: stats.ends_in_resync,
            frame_count: parts.iter().map(|p| u64::from(p.frame_count)).sum(),
            parts,
            // The replay checked the chain up to object `number` and hashed it.
            chain: Some(stats.chain_digest),
            key_id: self.seal.as_ref().map(Seal::key_id),
        };
        debug_assert_eq!(stats.chain_number, number);
        let key = snapshot::index_key(&self.prefix, number);
        let bytes = index
            .encode(self.seal.as_ref())
            .map_err(|e| self.seal_error(&key, e))?;
        self.put(&key, &bytes)?;
        let stored = replay::download(&self.store, &self.name, &key, &mut 0)?;
        if stored != bytes {
            return Err(Error::CorruptObject {
                mirror: self.name.clone(),
                key,
                offset: 0,
                reason: format!(
                    "the stored snapshot index ({} bytes) differs from the one uploaded ({} \
                     bytes); no journal object was removed",
                    stored.len(),
                    bytes.len()
                ),
            });
        }
        Ok(index)
    }

    /// Frames the ops that recreate `tree` into parts of at most about 16 MiB and stores
    /// each; returns their index entries.
    fn store_parts(
        &self,
        number: u64,
        tree: &Manifest,
        committed_at_ns: u64,
    ) -> Result<Vec<PartEntry>, Error> {
        let mut parts = Vec::new();
        let mut pending = PendingObject::default();
        let empty = Manifest::default();
        // NOTE: these are a resync's ops, so a snapshot keeps no timestamps or extended
        // attributes, and a restore across a fold loses them.
        for op in manifest::repair_ops(&self.scratch, tree, &empty)? {
            if pending.len_bytes() >= MAX_OBJECT_BYTES {
                parts.push(self.store_part(number, parts.len(), &mut pending)?);
            }
            let record = Record {
                seq: Seq(0),
                committed_at_ns,
                op: op?,
            };
            pending.push(&record).map_err(|e| Error::Setup {
                mirror: self.name.clone(),
                reason: format!("an op of snapshot {number} cannot be framed: {e}"),
            })?;
        }
        if !pending.is_empty() {
            parts.push(self.store_part(number, parts.len(), &mut pending)?);
        }
        Ok(parts)
    }

    /// Stores `pending` as the part after the `stored` ones and empties it.
    fn store_part(
        &self,
        number: u64,
        stored: usize,
        pending: &mut PendingObject,
    ) -> Result<PartEntry, Error> {
        let part = u32::try_from(stored + 1).map_err(|_| Error::Setup {
            mirror: self.name.clone(),
            reason: format!("snapshot {number} needs more parts than a u32 counts"),
        })?;
        let frame_count = pending.frame_count();
        let key = snapshot::part_key(&self.prefix, number, part);
        // Parts are not chained: the index binds them by size and CRC32C, and seals them
        // together with the chain digest when encrypt_key is set.
        let bytes = pending
            .encode(
                number,
                u64::from(part),
                [0; 32],
                self.seal.as_ref(),
                self.compression,
            )
            .map_err(|e| self.seal_error(&key, e))?;
        let entry = PartEntry {
            bytes: bytes.len() as u64,
            frame_count,
            crc32c: crc32c::crc32c(&bytes),
        };
        self.put(&key, &bytes)?;
        debug!(
            "mirror {}: stored snapshot part key={key} bytes={} frames={frame_count}",
            self.name, entry.bytes
        );
        *pending = PendingObject::default();
        Ok(entry)
    }

    fn seal_error(&self, key: &str, e: std::io::Error) -> Error {
        Error::Setup {
            mirror: self.name.clone(),
            reason: format!("cannot encode snapshot object {key}: {e}"),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), Error> {
        let outcome = self
            .store
            .put_new(key, bytes)
            .map_err(|source| Error::Store {
                mirror: self.name.clone(),
                action: "upload of",
                key: key.to_string(),
                source: Box::new(source),
            })?;
        match outcome {
            PutOutcome::Stored => Ok(()),
            PutOutcome::Taken => Err(Error::Setup {
                mirror: self.name.clone(),
                reason: format!(
                    "snapshot object {key} already exists with other content; another \
                     writer uses this prefix"
                ),
            }),
        }
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        self.store
            .delete(key, Condition::Always)
            .map_err(|source| Error::Store {
                mirror: self.name.clone(),
                action: "removal of",
                key: key.to_string(),
                source: Box::new(source),
            })
    }

    /// Removes the parts that interrupted folds left behind: those of snapshots newer than
    /// the newest complete one, which have no index. The new parts may take their keys.
    fn remove_unfinished(&self, history: &History) -> Result<(), Error> {
        let complete = history.snapshot_number();
        let locked = self.locked_keys()?;
        for (parsed, key) in &history.snapshot_keys {
            // NOTE: a locked leftover part keeps its key, so a fold to the same snapshot
            // number fails until its retention ends.
            if parsed.number() > complete && !locked.contains(key) {
                self.delete(key)?;
            }
        }
        Ok(())
    }

    /// Removes the journal objects that snapshot `number` covers and every older snapshot.
    /// Holds the history lock, so no replay of the mirror lists them meanwhile.
    ///
    /// With `retention_lock=`, objects whose retention has not ended are left alone: they
    /// stay covered by the new snapshot, and a later fold removes them.
    fn remove_folded(&self, history: &History, number: u64) -> Result<u64, Error> {
        let locked = self.locked_keys()?;
        let _history = self.history_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        let folded = history
            .objects
            .iter()
            .filter(|(n, _)| *n <= number)
            .map(|(_, key)| key);
        for key in history.covered.iter().chain(folded) {
            if locked.contains(key) {
                continue;
            }
            self.delete(key)?;
            removed += 1;
        }
        let kept_indexes: BTreeSet<u64> = history
            .snapshot_keys
            .iter()
            .filter(|(k, key)| matches!(k, SnapshotKey::Index { .. }) && locked.contains(key))
            .map(|(k, _)| k.number())
            .collect();
        // Indexes first: a snapshot without its index is ignored, one without parts is not.
        let older = |k: &SnapshotKey| k.number() < number;
        let indexes = history
            .snapshot_keys
            .iter()
            .filter(|(k, _)| older(k) && matches!(k, SnapshotKey::Index { .. }));
        // The parts of an index that stays locked stay too, so that it remains whole.
        let parts = history.snapshot_keys.iter().filter(|(k, _)| {
            older(k) && matches!(k, SnapshotKey::Part { .. }) && !kept_indexes.contains(&k.number())
        });
        for (_, key) in indexes.chain(parts) {
            if !locked.contains(key) {
                self.delete(key)?;
            }
        }
        if !locked.is_empty() {
            debug!(
                "mirror {}: left {} objects whose Object Lock retention has not ended",
                self.name,
                locked.len()
            );
        }
        Ok(removed)
    }

    /// Returns the keys of history objects whose Object Lock retention has not ended,
    /// judged by their upload time in the listing plus `retention_lock` days. An object
    /// without an upload time counts as locked. Empty without `retention_lock=`.
    ///
    /// NOTE: a retention set longer by the bucket's default or by hand is not seen here.
    fn locked_keys(&self) -> Result<BTreeSet<String>, Error> {
        let Some(lock) = self.store.retention_lock() else {
            return Ok(BTreeSet::new());
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lock_seconds = u64::from(lock.days) * 86_400;
        let list_error = |prefix: String, source: StoreError| Error::Store {
            mirror: self.name.clone(),
            action: "listing of",
            key: prefix,
            source: Box::new(source),
        };
        let mut locked = BTreeSet::new();
        for prefix in [
            super::journal_prefix(&self.prefix),
            snapshot::snapshot_prefix(&self.prefix),
        ] {
            let objects = self
                .store
                .list_objects(&prefix)
                .map_err(|source| list_error(prefix.clone(), source))?;
            for object in objects {
                let unlocks_at = object
                    .modified_unix
                    .and_then(|t| u64::try_from(t).ok())
                    .map(|t| t + lock_seconds);
                if unlocks_at.is_none_or(|at| at > now) {
                    locked.insert(object.key);
                }
            }
        }
        Ok(locked)
    }
}
