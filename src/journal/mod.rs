//! The local write-ahead journal: every change made through the mount becomes a record here
//! after it reached the backing directory and before its reply goes to the writer.
//!
//! `fs` appends records; each mirror worker reads them in sequence order from its cursor and
//! confirms them; segments that every mirror confirmed are removed. Nothing here talks to a
//! mirror or acknowledges a write.
//!
//! On disk: a directory of segment files, each a header followed by CRC32C-framed records
//! (layout in `format.rs` and docs/FORMAT.md).

mod record;

pub use record::{Op, Record, RelPath, Seq, Timestamp};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Byte position in the journal stream: the number of journal bytes (headers excluded)
/// written before a point since the journal was created. Lag in bytes is the difference of
/// two positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// What `Journal::open` found on disk.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// Oldest sequence number still held in a segment; `Seq(0)` when the journal is empty.
    pub first_seq: Seq,
    /// Newest valid record; `Seq(0)` for a journal that never held one.
    pub head: Seq,
    pub head_position: Position,
    pub segments: usize,
    pub records: u64,
    /// Bytes removed from the end of the newest segment because they did not form a whole,
    /// valid record (a write torn by a crash).
    pub torn_bytes_cut: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} journal file {path:?}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal segment {path:?} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("records after seq {after} were already removed; the oldest record held is {first}")]
    Released { after: Seq, first: Seq },
    #[error("record of {bytes} bytes exceeds the maximum record size of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
}

/// The journal. Shared between FUSE threads (append, sync) and mirror workers (read) behind
/// an `Arc`.
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// Opens or creates the journal in `dir`, scanning every segment and cutting a torn tail.
    pub fn open(dir: &Path, segment_size_bytes: u64) -> Result<(Journal, Recovery), Error> {
        let _ = (dir, segment_size_bytes);
        unimplemented!("journal open")
    }

    /// Appends one record with one write(2) and returns its sequence number and end
    /// position. The record survives a crash of the daemon once this returns, and a crash
    /// of the machine once `sync_to` covers it.
    pub fn append(&self, op: &Op) -> Result<(Seq, Position), Error> {
        let _ = op;
        unimplemented!("journal append")
    }

    /// Makes every record up to `seq` durable (fdatasync); concurrent callers share one
    /// fsync (group commit).
    pub fn sync_to(&self, seq: Seq) -> Result<(), Error> {
        let _ = seq;
        unimplemented!()
    }

    /// Returns the newest record's sequence number and end position.
    pub fn head(&self) -> (Seq, Position) {
        unimplemented!()
    }

    /// Blocks until a record newer than `seq` exists or `timeout` passes; returns the head.
    pub fn wait_beyond(&self, seq: Seq, timeout: Duration) -> Seq {
        let _ = (seq, timeout);
        unimplemented!()
    }

    /// Returns a reader over the records after `after`, in order.
    pub fn read_after(&self, after: Seq) -> Result<Reader, Error> {
        let _ = after;
        unimplemented!()
    }

    /// Removes whole segments whose records are all at or below `seq`. The segment being
    /// appended to is never removed, so sequence numbers continue across restarts.
    pub fn release_up_to(&self, seq: Seq) -> Result<usize, Error> {
        let _ = seq;
        unimplemented!()
    }

    /// Returns the bytes held in segment files.
    pub fn size_bytes(&self) -> u64 {
        unimplemented!()
    }

    /// Returns the directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads records in sequence order. `next` returns `None` at the head as it was when the
/// call was made; records appended later are returned by later calls.
pub struct Reader {}

impl Iterator for Reader {
    type Item = Result<(Record, Position), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        unimplemented!()
    }
}
