//! S3 mirror: keeps the journal's records as objects in an S3-compatible bucket.
//!
//! The worker hands over records in sequence order. `apply` frames each one into an
//! in-memory object, and `flush` stores that object with one PUT (group commit), so a
//! confirmed record is in the store. Keys and byte layout are in `s3/object.rs`; requests
//! and retries in `s3/store.rs`.
//!
//! To list the tree (verify, resync) or to rebuild it (`logmirror restore`), the objects
//! are downloaded in order, checked, and replayed through a [`DirMirror`] into a directory.
//!
//! Each stored record also goes to the readable copies (`s3/copies.rs`), a plain object per
//! file that a copier thread keeps up to date from the backing directory.

mod copies;
pub mod key;
mod object;
mod store;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use log::{debug, info, warn};

use crate::config::{MirrorSpec, S3Options, STATE_DIR_NAME};
use crate::journal::{Op, Record, Seq};

use super::dir::DirMirror;
use super::manifest::{self, Manifest};
use super::{Error, Mirror};

pub use copies::{Copies, CopiesStatus, CopySettings};
pub use object::{journal_prefix, object_key, parse_object_key};
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
    store: Arc<Store>,
    journal_id: u64,
    /// Number of the next object to store; one more than the highest in the bucket at open.
    next_number: u64,
    pending: PendingObject,
    /// Directory for replaying the objects when a manifest is needed. It is emptied before
    /// and removed after each use.
    scratch: PathBuf,
    /// The readable copies, once started.
    copies: Option<Arc<Copies>>,
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
        let objects = list_objects(&store, prefix, &name)?;
        let next_number = objects.last().map_or(1, |(number, _)| number + 1);
        info!(
            "mirror {name}: {} journal objects in the bucket; the next one is number {next_number}",
            objects.len()
        );
        Ok(S3Mirror {
            name,
            prefix: prefix.to_string(),
            store: Arc::new(store),
            journal_id,
            next_number,
            pending: PendingObject::default(),
            scratch: scratch.to_path_buf(),
            copies: None,
        })
    }

    /// Starts the readable copies: from now on every record the mirror stores also updates
    /// the copy of the file it changes.
    pub fn start_copies(&mut self, settings: CopySettings) -> Result<(), Error> {
        let copies = Copies::start(settings, self.store.clone(), &self.name, &self.prefix)?;
        self.copies = Some(copies);
        Ok(())
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
        self.push(record)?;
        if let Some(copies) = &self.copies {
            copies.record(record);
        }
        Ok(())
    }

    fn copies(&self) -> Option<Arc<Copies>> {
        self.copies.clone()
    }

    fn resynced(&mut self, head: Seq) {
        if let Some(copies) = &self.copies {
            copies.resynced(head);
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.upload()
    }

    /// Stores what is pending, then replays every journal object into the scratch directory
    /// and lists it.
    fn manifest(&mut self) -> Result<Manifest, Error> {
        self.flush()?;
        let started = Instant::now();
        let mut target = self.fresh_scratch()?;
        let mut stats = ReplayStats::default();
        let replayed = replay(
            &self.store,
            &self.prefix,
            &self.name,
            &mut target,
            &mut stats,
        );
        drop(target);
        let skip = [OsStr::new(STATE_DIR_NAME)];
        let result = replayed.and_then(|()| {
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

/// Counts from replaying a mirror's journal objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Objects downloaded, checked and applied.
    pub objects: u64,
    /// Records applied.
    pub records: u64,
    /// Records left out because an earlier object already carried their seq (a flush that
    /// was stored although its response was lost, and then sent again).
    pub repeated_records: u64,
    /// Newest journal seq applied; 0 when only resync ops were.
    pub last_seq: Seq,
    pub bytes_downloaded: u64,
}

/// Rebuilds the tree of the S3 mirror at `bucket`/`prefix` in the existing directory `dir`,
/// by replaying its journal objects in order through a [`DirMirror`], then syncs it.
///
/// `stats` counts what was applied, also when an object fails its checks and the replay
/// stops there. `dir` then contains the tree as of the last record applied.
pub fn restore(
    bucket: &str,
    prefix: &str,
    options: &S3Options,
    dir: &Path,
    stats: &mut ReplayStats,
) -> Result<(), Error> {
    let name = s3_name(bucket, prefix);
    let store = connect(&name, bucket, options)?;
    let mut target = DirMirror::open(dir)?;
    replay(&store, prefix, &name, &mut target, stats)?;
    target.flush()
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

/// Lists the journal objects as (number, key), in number order. Any other key below the
/// journal prefix is an error, because it may be an object this version cannot read.
fn list_objects(store: &Store, prefix: &str, name: &str) -> Result<Vec<(u64, String)>, Error> {
    let listed_prefix = journal_prefix(prefix);
    let keys = store.list(&listed_prefix).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "listing of",
        key: listed_prefix.clone(),
        source: Box::new(source),
    })?;
    let mut objects = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(number) = parse_object_key(prefix, &key) else {
            return Err(Error::CorruptObject {
                mirror: name.to_string(),
                key,
                offset: 0,
                reason: "the key is not a journal object's (NUMBER.lmj with 20 digits); \
                         move it out of the journal prefix"
                    .into(),
            });
        };
        objects.push((number, key));
    }
    objects.sort();
    Ok(objects)
}

/// Downloads, checks and applies every journal object in number order.
fn replay(
    store: &Store,
    prefix: &str,
    name: &str,
    target: &mut DirMirror,
    stats: &mut ReplayStats,
) -> Result<(), Error> {
    let objects = list_objects(store, prefix, name)?;
    // Newest seq applied per journal, to leave out records an earlier object carried.
    let mut newest: HashMap<u64, Seq> = HashMap::new();
    for (expected, (number, key)) in (1..).zip(&objects) {
        if *number != expected {
            return Err(Error::CorruptObject {
                mirror: name.to_string(),
                key: key.clone(),
                offset: 0,
                reason: format!(
                    "journal object number {expected} is missing before it; the objects \
                     after the gap cannot be replayed"
                ),
            });
        }
        let decoded = fetch_object(store, name, key, *number, stats)?;
        let journal_newest = newest.entry(decoded.header.journal_id).or_default();
        for (index, record) in decoded.records.into_iter().enumerate() {
            if record.seq != Seq(0) {
                if record.seq <= *journal_newest {
                    stats.repeated_records += 1;
                    continue;
                }
                *journal_newest = record.seq;
                stats.last_seq = record.seq;
            }
            target.apply(&record.op).map_err(|source| Error::Replay {
                mirror: name.to_string(),
                key: key.clone(),
                index,
                seq: record.seq,
                source: Box::new(source),
            })?;
            stats.records += 1;
        }
        stats.objects += 1;
    }
    Ok(())
}

/// Downloads one journal object and checks it whole before any of it is applied.
fn fetch_object(
    store: &Store,
    name: &str,
    key: &str,
    number: u64,
    stats: &mut ReplayStats,
) -> Result<object::DecodedObject, Error> {
    let corrupt = |offset: u64, reason: String| Error::CorruptObject {
        mirror: name.to_string(),
        key: key.to_string(),
        offset,
        reason,
    };
    let fetched = store.get(key).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "download of",
        key: key.to_string(),
        source: Box::new(source),
    })?;
    stats.bytes_downloaded += fetched.bytes.len() as u64;
    if let Some(stored) = &fetched.crc32c {
        let computed = checksum_header(&fetched.bytes);
        if *stored != computed {
            return Err(corrupt(
                0,
                format!(
                    "the store's CRC32C {stored} does not match the downloaded bytes \
                     ({computed})"
                ),
            ));
        }
    }
    object::decode_object(&fetched.bytes, number)
        .map_err(|fault| corrupt(fault.offset, fault.error.to_string()))
}

/// Removes a scratch directory and everything in it; a missing one is fine.
fn remove_scratch(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
