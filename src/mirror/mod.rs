//! Mirrors: remote copies of the backing tree, fed from the journal in sequence order.
//!
//! A [`Mirror`] applies ops and makes them durable on `flush`. Everything that decides what
//! to send when (workers, cursors, retries, acknowledgements to sync-mode writers) sits on
//! top of this trait, so the directory mirror and the S3 mirror share it.

pub mod acks;
mod at;
pub mod cursor;
pub mod dir;
pub mod manifest;
mod routing;
pub mod s3;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use crate::journal::{Op, Record, RelPath, Seq};

pub use at::backing_reader;
pub use dir::DirMirror;
pub use manifest::{Entry, EntryKind, Manifest};
pub use s3::{Copies, S3Mirror};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mirror {mirror}: {action} {path} failed")]
    Io {
        mirror: String,
        action: &'static str,
        path: RelPath,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror {mirror}: directory {dir:?} is not usable: {reason}")]
    Unusable {
        mirror: String,
        dir: PathBuf,
        reason: String,
    },
    #[error("failed to read backing {path} while building a manifest")]
    Backing {
        path: RelPath,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read backing {path} while copying it to a mirror")]
    BackingCopy {
        path: RelPath,
        #[source]
        source: std::io::Error,
    },
    #[error("mirror {mirror}: {action} {key} failed")]
    Store {
        mirror: String,
        action: &'static str,
        key: String,
        #[source]
        source: Box<s3::StoreError>,
    },
    #[error("mirror {mirror}: journal object {key} is invalid at byte {offset}: {reason}")]
    CorruptObject {
        mirror: String,
        key: String,
        offset: u64,
        reason: String,
    },
    #[error("mirror {mirror}: replaying record {index} (seq {seq}) of journal object {key} failed")]
    Replay {
        mirror: String,
        key: String,
        /// Position of the record in the object, from 0.
        index: usize,
        /// The record's journal seq; 0 for an op of a resync.
        seq: Seq,
        #[source]
        source: Box<Error>,
    },
    #[error(
        "mirror {mirror}: the prefix is owned by {owner}, not by this daemon. Give every host \
         its own prefix. If that daemon has stopped for good (its host crashed, or this host \
         lost its state directory), mount with takeover=true"
    )]
    LeaseHeld { mirror: String, owner: String },
    #[error(
        "mirror {mirror}: lost the lease of the prefix to {owner}; no more journal objects \
         are stored there by this daemon"
    )]
    LeaseLost { mirror: String, owner: String },
    #[error(
        "mirror {mirror}: the store holds records of this journal up to seq {store_seq}, but \
         the local journal ends at seq {head}. The state directory is older than the mirror \
         (restored from a copy, or a power loss cut records the mirror already has), and new \
         records would reuse seqs that replay leaves out. Run `logmirror restore` to keep \
         what the mirror has, then move {journal_dir:?} aside so that a new journal starts"
    )]
    StoreAhead {
        mirror: String,
        store_seq: Seq,
        head: Seq,
        journal_dir: PathBuf,
    },
    #[error(
        "mirror {mirror}: journal object {number} comes from another journal (id \
         {other_journal:016x}) and was stored after seq {confirmed}, the last one this state \
         directory confirmed. Another daemon took the prefix over since, so its tree is newer \
         than this backing directory. To keep that tree, run `logmirror restore` into an empty \
         directory, move {journal_dir:?} aside and mount the restored directory. To replace it \
         with this backing directory, mount with takeover=true"
    )]
    TakenOver {
        mirror: String,
        number: u64,
        other_journal: u64,
        confirmed: Seq,
        journal_dir: PathBuf,
    },
    #[error("mirror {mirror}: {reason}")]
    Setup { mirror: String, reason: String },
}

/// A failed [`Mirror::apply_writes`]: which record of the run failed, and where a retry of
/// the run starts.
#[derive(Debug)]
pub struct WritesError {
    /// Records at the start of the run that are applied and need no repeat. A mirror that
    /// merged the writes returns 0, so the retry applies the whole run again.
    pub applied: usize,
    /// Position in the run of the record that failed, from 0.
    pub failed: usize,
    pub source: Error,
}

/// A remote copy of the backing tree.
pub trait Mirror: Send {
    /// Returns the name used in status and logs, such as `dir:/mnt/copy`.
    fn name(&self) -> &str;

    /// Applies one op. Must be safe to repeat after it failed part way (a retry), so
    /// "already exists" and "already gone" outcomes of a repeat count as success.
    fn apply(&mut self, op: &Op) -> Result<(), Error>;

    /// Applies the op of one journal record, with the same repeat rule as `apply`. Mirrors
    /// that store records with their seq (the S3 mirror) override it.
    fn apply_record(&mut self, record: &Record) -> Result<(), Error> {
        self.apply(&record.op)
    }

    /// Applies a run of consecutive journal records that each contain an `Op::Write`, with the
    /// same repeat rule as `apply`. Writes to different files may land in any order, and
    /// writes to one file land in record order, whichever of its hard-linked names they use.
    /// The default applies one record at a time.
    fn apply_writes(&mut self, records: &[&Record]) -> Result<(), WritesError> {
        for (index, record) in records.iter().enumerate() {
            self.apply_record(record).map_err(|source| WritesError {
                applied: index,
                failed: index,
                source,
            })?;
        }
        Ok(())
    }

    /// Marks the end of a batch of applied records. Async mode flushes only every few
    /// batches, so a mirror re-checks here what it cached during the batch.
    fn end_batch(&mut self) {}

    /// Makes every op applied so far durable on the mirror.
    fn flush(&mut self) -> Result<(), Error>;

    /// Returns whether `apply` puts a write's bytes where `flush` makes them durable, so that
    /// the journal can drop its copy before the flush. A retry after a failed flush then
    /// reads the data back from the backing file, or resyncs if the file changed. Mirrors
    /// that buffer ops until the flush keep the default.
    fn stores_applied_data(&self) -> bool {
        false
    }

    /// Runs upkeep while no records wait, about every 100 ms (the S3 mirror confirms its
    /// lease here).
    fn idle(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Lists the mirror's tree with content checksums, for verify and resync.
    fn manifest(&mut self) -> Result<Manifest, Error>;

    /// Gives up what the mirror holds in its store (the S3 mirror's lease), at a clean stop
    /// after the mirror confirmed every record.
    fn release(&mut self) -> Result<(), Error> {
        Ok(())
    }

    /// Returns a contradiction between the mirror's store and what this state directory
    /// recorded as stored, found when the mirror opened (objects removed or replaced while
    /// the daemon was stopped). Verify reports it as a failure.
    fn integrity_alert(&self) -> Option<String> {
        None
    }

    /// Returns the readable copies the mirror keeps of the files, if any (S3 mirrors do).
    fn copies(&self) -> Option<Arc<Copies>> {
        None
    }

    /// Tells the mirror that a resync made it equal to the backing tree as of journal seq
    /// `head`; records after it follow.
    fn resynced(&mut self, _head: Seq) {}
}
