//! The local write-ahead journal: every change made through the mount becomes a record here
//! after it reached the backing directory and before its reply goes to the writer.
//!
//! `fs` appends records; each mirror worker reads them in sequence order from its cursor and
//! confirms them; segments that every mirror confirmed are removed. Nothing here talks to a
//! mirror or acknowledges a write.
//!
//! On disk: a directory of segment files, each a header followed by CRC32C-framed records
//! (layout in `format.rs` and docs/FORMAT.md).

mod cache;
mod commit;
mod format;
mod identity;
mod reader;
mod record;
mod writer;

pub use cache::{DATA_CACHE_BYTES, MIN_REFERENCED_BYTES};
pub use format::FormatError;
pub use identity::FileIdentity;
pub use reader::Reader;
pub use record::{Op, Record, RelPath, Seq, Timestamp};

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cache::DataCache;
use commit::Commit;
use format::DataRef;
use writer::{Entry, Writer};

/// Reads `buf.len()` bytes at an offset of a regular file below the backing root, for a
/// write whose data is no longer in the journal's memory. Returns the identity of the file
/// it opened at the path and the bytes read, fewer at the file's end.
pub type BackingReader =
    Box<dyn Fn(&RelPath, u64, &mut [u8]) -> std::io::Result<(FileIdentity, usize)> + Send + Sync>;

/// Byte position in the journal stream: the number of journal bytes (headers excluded)
/// written before a point since the journal was created. Lag in bytes is the difference of
/// two positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// Records appended since [`Journal::open`], for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendCounts {
    /// Records of every kind.
    pub records: u64,
    /// Journal stream bytes of those records (frames included).
    pub bytes: u64,
    /// `Write` records: writes that reached the backing directory through the mount.
    pub writes: u64,
    /// Data bytes of the `Write` records.
    pub written_bytes: u64,
}

/// Summary of the journal that `Journal::open` found on disk.
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
    /// Segment file and byte offset where those bytes were cut (offset 0 when the segment
    /// was removed because its header was torn).
    pub cut_at: Option<(PathBuf, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to {action} {path:?}")]
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
    #[error(
        "journal segment {path:?} has format version {version}, and this logmirror reads only \
         version {supported}; mount it with the logmirror release that wrote it, or move the \
         journal directory aside to start a new journal (every mirror then resyncs)"
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("records after seq {after} were already removed; the oldest record held is {first}")]
    Released { after: Seq, first: Seq },
    #[error("record of {bytes} bytes exceeds the maximum record size of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("the data of the write at seq {seq} to {path} is no longer held: {reason}")]
    DataGone {
        seq: Seq,
        path: RelPath,
        reason: String,
    },
}

impl Error {
    fn io(action: &'static str, path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Returns ENOSPC or EDQUOT when a write failed because the journal's filesystem is
    /// full or the quota is used up.
    pub fn no_space_errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source
                .raw_os_error()
                .filter(|&errno| errno == libc::ENOSPC || errno == libc::EDQUOT),
            _ => None,
        }
    }
}

/// Name-changing records the journal keeps in memory; older ones are forgotten.
const NAME_CHANGES_KEPT: usize = 4096;

/// The journal. Shared between FUSE threads (append, sync) and mirror workers (read) behind
/// an `Arc`.
pub struct Journal {
    dir: PathBuf,
    inner: Arc<Inner>,
    names: Mutex<NameChanges>,
    /// Head and its end position as `open` found them; appends since then count from here.
    opened_at: (Seq, Position),
    writes: AtomicU64,
    written_bytes: AtomicU64,
}

/// The most recent records that changed names, for [`Journal::names_changed_after`].
struct NameChanges {
    /// Seq and changed paths of each name-changing record, oldest first.
    recent: VecDeque<(Seq, Vec<RelPath>)>,
    /// Newest seq whose name changes are no longer listed. Records from before `open` are
    /// not listed, nor those dropped to keep the list at [`NAME_CHANGES_KEPT`].
    forgotten_up_to: Seq,
}

/// State shared by the journal and its readers.
struct Inner {
    journal_id: u64,
    /// Serializes appends and roll-overs. Taken before `state`, never while holding it.
    writer: Mutex<Writer>,
    /// Head and segment list as readers, `release_up_to` and group commit see them. The
    /// writer publishes into it after each record's bytes are written.
    state: Mutex<State>,
    /// Signalled whenever the published head moves.
    head_changed: Condvar,
    commit: Commit,
    /// Data of the writes by reference that some mirror may still need.
    data: DataCache,
    /// Reads that data from the backing file once it is no longer in `data` (after a
    /// restart). Unset in a journal opened without a backing directory.
    backing: OnceLock<BackingReader>,
    /// Serializes `release_up_to`, so that a failed removal can put its segments back in
    /// front of the list without another release having removed the ones after them.
    release: Mutex<()>,
    /// Exclusive lock on the directory's lock file, held while the journal or a reader of it
    /// exists.
    _dir_lock: File,
}

struct State {
    head: Seq,
    head_position: Position,
    /// Segments in the directory, oldest first. The last one is the active segment.
    segments: Vec<SegmentInfo>,
    /// Sum of the segment file sizes, headers included.
    size_bytes: u64,
    /// The active segment's file, for group commit.
    active: OpenSegment,
    /// Segments rolled away from since the last group commit, which must be synced by the
    /// next one.
    unsynced: Vec<OpenSegment>,
    /// Threads blocked in `wait_beyond`. An append signals `head_changed` only when some
    /// thread waits, because the signal costs a futex system call even with no waiter.
    waiters: usize,
}

/// A segment in the directory, as published to readers.
#[derive(Clone, Debug)]
struct SegmentInfo {
    first_seq: Seq,
    base_position: Position,
    /// Length of the file: header plus whole, published frames.
    len_bytes: u64,
    /// Data bytes that those frames refer to (tags 18 and 19).
    data_bytes: u64,
    path: PathBuf,
}

impl SegmentInfo {
    /// Returns the stream position just after the segment's last published frame.
    fn end_position(&self) -> Position {
        Position(
            self.base_position.0 + (self.len_bytes - format::HEADER_LEN as u64) + self.data_bytes,
        )
    }
}

/// A segment file held open by the writer, kept until a group commit has synced it.
#[derive(Clone, Debug)]
struct OpenSegment {
    first_seq: Seq,
    path: PathBuf,
    file: Arc<File>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Puts the data of a write by reference into `record`: from memory, or else from the
    /// backing file when the path still names the file the frame recorded and its bytes
    /// still have the recorded CRC32C.
    fn fill_write(&self, record: &mut Record, data: DataRef) -> Result<(), Error> {
        let Op::Write {
            path,
            offset,
            data: bytes,
        } = &mut record.op
        else {
            return Ok(());
        };
        if let Some(held) = self.data.get(record.seq) {
            *bytes = held;
            return Ok(());
        }
        let gone = |reason: String| Error::DataGone {
            seq: record.seq,
            path: path.clone(),
            reason,
        };
        let Some(read) = self.backing.get() else {
            return Err(gone(
                "it is not in memory and no backing directory is set".into(),
            ));
        };
        // A CRC32C collision is cheap to forge, so the bytes count only when they come from
        // the file the write went to. Tag 18 did not record it.
        let Some(written_to) = data.file else {
            return Err(gone(
                "the record names its file by path only (a journal written before tag 19), \
                 so the bytes at that path cannot be trusted"
                    .into(),
            ));
        };
        let mut buf = vec![0u8; data.len as usize];
        let (found, len) = read(path, *offset, &mut buf)
            .map_err(|e| gone(format!("reading it from the backing file failed: {e}")))?;
        if found != written_to {
            return Err(gone(format!(
                "the path names another file now (inode {} generation {:?}, the write went to \
                 inode {} generation {:?}), so it was renamed or replaced since",
                found.ino, found.generation, written_to.ino, written_to.generation
            )));
        }
        // Within the same file, nothing journaled moves bytes to another offset: the kernel's
        // FUSE client rejects fallocate INSERT_RANGE and COLLAPSE_RANGE. Later overwrites are
        // replayed after this record, so the mirror ends with the file's bytes either way.
        if len != buf.len() || crc32c::crc32c(&buf) != data.crc {
            return Err(gone(
                "the backing file changed since (overwritten or truncated)".into(),
            ));
        }
        *bytes = buf;
        Ok(())
    }
}

impl State {
    /// Returns the oldest sequence number in a segment, or `Seq(0)` when no segment
    /// contains a record.
    fn first_seq(&self) -> Seq {
        match self.segments.first() {
            Some(oldest) if self.head >= oldest.first_seq => oldest.first_seq,
            _ => Seq(0),
        }
    }
}

/// Locks `mutex`, ignoring poisoning, so that a panic on one FUSE or mirror thread does not
/// make the journal unusable for every other thread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Opens or creates the journal in `dir`, scanning every segment and cutting a torn tail.
    ///
    /// The active segment rolls over once it contains at least one record and
    /// `segment_size_bytes` bytes (header included). A record larger than that still goes
    /// whole into one segment.
    pub fn open(dir: &Path, segment_size_bytes: u64) -> Result<(Journal, Recovery), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create journal directory", dir, e))?;
        let dir_lock = writer::lock_dir(dir)?;
        let found = reader::recover(dir)?;

        let writer = Writer::new(dir, segment_size_bytes, &found);
        let state = State {
            head: found.head,
            head_position: found.head_position,
            size_bytes: found.segments.iter().map(|s| s.len_bytes).sum(),
            segments: found.segments,
            active: found.active,
            unsynced: Vec::new(),
            waiters: 0,
        };
        let recovery = Recovery {
            first_seq: state.first_seq(),
            head: found.head,
            head_position: found.head_position,
            segments: state.segments.len(),
            records: found.records,
            torn_bytes_cut: found.torn_bytes_cut,
            cut_at: found.cut_at.clone(),
        };
        log::info!(
            "journal opened: dir={} journal_id={:016x} segments={} records={} first_seq={} \
             head={} torn_bytes_cut={}",
            dir.display(),
            found.journal_id,
            recovery.segments,
            recovery.records,
            recovery.first_seq,
            recovery.head,
            recovery.torn_bytes_cut
        );

        let inner = Inner {
            journal_id: found.journal_id,
            writer: Mutex::new(writer),
            state: Mutex::new(state),
            head_changed: Condvar::new(),
            // Recovery synced every segment, so every record found is durable.
            commit: Commit::new(found.head),
            data: DataCache::new(DATA_CACHE_BYTES),
            backing: OnceLock::new(),
            release: Mutex::new(()),
            _dir_lock: dir_lock,
        };
        let journal = Journal {
            dir: dir.to_path_buf(),
            inner: Arc::new(inner),
            names: Mutex::new(NameChanges {
                recent: VecDeque::new(),
                forgotten_up_to: found.head,
            }),
            opened_at: (found.head, found.head_position),
            writes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
        };
        Ok((journal, recovery))
    }

    /// Appends one record with one write(2) and returns its sequence number and end
    /// position. The record survives a crash of the daemon once this returns, and a crash
    /// of the machine once `sync_to` covers it.
    pub fn append(&self, op: &Op) -> Result<(Seq, Position), Error> {
        let appended = lock(&self.inner.writer).append(
            Entry::Op(op),
            &self.inner.state,
            &self.inner.head_changed,
            |_| {},
        )?;
        self.count(op, op_data_len(op), appended.0);
        Ok(appended)
    }

    /// Appends like `append`, but keeps the data of a write of at least
    /// [`MIN_REFERENCED_BYTES`] out of the segment when the memory budget has room and
    /// `written_to` names the backing file. The data then moves out of `op`, which keeps
    /// empty data, into the journal's memory. The record refers to it by length, CRC32C and
    /// the file's identity. The caller must have written the same bytes to that file, where
    /// a reader finds them if the daemon restarts before every mirror confirmed them.
    pub fn append_owned(
        &self,
        op: &mut Op,
        written_to: Option<FileIdentity>,
    ) -> Result<(Seq, Position), Error> {
        let (Op::Write { path, offset, data }, Some(written_to)) = (&mut *op, written_to) else {
            return self.append(op);
        };
        let len = data.len();
        if len < MIN_REFERENCED_BYTES
            || u32::try_from(len).is_err()
            || !self.inner.data.reserve(len)
        {
            return self.append(op);
        }
        let reference = Entry::Reference {
            path,
            offset: *offset,
            data: DataRef {
                len: len as u32,
                crc: crc32c::crc32c(data),
                file: Some(written_to),
            },
        };
        let owned = std::mem::take(data);
        let appended = lock(&self.inner.writer).append(
            reference,
            &self.inner.state,
            &self.inner.head_changed,
            |seq| self.inner.data.insert(seq, owned),
        );
        match appended {
            Ok(appended) => {
                self.count(op, len, appended.0);
                Ok(appended)
            }
            Err(e) => {
                self.inner.data.unreserve(len);
                Err(e)
            }
        }
    }

    /// Updates the counts and the list of name changes after appending `op` as `seq`.
    fn count(&self, op: &Op, data_len: usize, seq: Seq) {
        if let Op::Write { .. } = op {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written_bytes
                .fetch_add(data_len as u64, Ordering::Relaxed);
        }
        let changed = op.changed_names();
        if !changed.is_empty() {
            let mut names = lock(&self.names);
            if names.recent.len() >= NAME_CHANGES_KEPT
                && let Some((seq, _)) = names.recent.pop_front()
            {
                names.forgotten_up_to = seq;
            }
            let paths = changed.into_iter().cloned().collect();
            names.recent.push_back((seq, paths));
        }
    }

    /// Sets how readers get the data of writes by reference that memory no longer holds.
    /// Only the first call counts.
    pub fn set_backing_reader(&self, read: BackingReader) {
        let _ = self.inner.backing.set(read);
    }

    /// Drops from memory the data of the writes up to `seq`, which no mirror reads any more.
    pub fn release_data_up_to(&self, seq: Seq) {
        self.inner.data.release_up_to(seq);
    }

    /// Returns the bytes of write data held in memory for mirrors.
    pub fn data_held_bytes(&self) -> u64 {
        self.inner.data.bytes()
    }

    /// Returns every path that a record after `after` created, removed or renamed (see
    /// [`Op::changed_names`]), or `None` when such records may exist that the journal no
    /// longer lists.
    ///
    /// The fs appends a name-changing record while it holds its namespace lock exclusively,
    /// so a caller that holds that lock shared gets the complete list up to the head.
    pub fn names_changed_after(&self, after: Seq) -> Option<Vec<RelPath>> {
        let names = lock(&self.names);
        if names.forgotten_up_to > after {
            return None;
        }
        let paths = names
            .recent
            .iter()
            .filter(|(seq, _)| *seq > after)
            .flat_map(|(_, paths)| paths.iter().cloned())
            .collect();
        Some(paths)
    }

    /// Makes every record up to `seq` durable (fdatasync); concurrent callers share one
    /// fsync (group commit).
    ///
    /// A `seq` beyond the head syncs up to the head. After one fsync fails, every later
    /// call fails too, because the kernel may have dropped the unwritten pages.
    pub fn sync_to(&self, seq: Seq) -> Result<(), Error> {
        let seq = seq.min(self.head().0);
        self.inner.commit.sync_to(seq, || {
            let mut state = self.inner.state();
            let mut files = std::mem::take(&mut state.unsynced);
            files.push(state.active.clone());
            (state.head, files)
        })
    }

    /// Returns the newest record's sequence number and end position.
    pub fn head(&self) -> (Seq, Position) {
        let state = self.inner.state();
        (state.head, state.head_position)
    }

    /// Returns the newest sequence number known to be on stable storage.
    pub fn durable_seq(&self) -> Seq {
        self.inner.commit.durable_seq()
    }

    /// Returns the number of fdatasync calls group commits made on segment files since
    /// `open`.
    pub fn fsync_count(&self) -> u64 {
        self.inner.commit.fsync_count()
    }

    /// Blocks until a record newer than `seq` exists or `timeout` passes; returns the head.
    pub fn wait_beyond(&self, seq: Seq, timeout: Duration) -> Seq {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.inner.state();
        while state.head <= seq {
            let now = Instant::now();
            let left = match deadline {
                Some(deadline) if deadline > now => deadline - now,
                Some(_) => break,
                // A timeout too large to add to the clock waits in steps of a day.
                None => Duration::from_secs(86_400),
            };
            state.waiters += 1;
            state = self
                .inner
                .head_changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiters -= 1;
        }
        state.head
    }

    /// Returns a reader over the records after `after`, in order.
    ///
    /// # Errors
    ///
    /// `Error::Released` when the record after `after` was already removed.
    pub fn read_after(&self, after: Seq) -> Result<Reader, Error> {
        Reader::new(Arc::clone(&self.inner), after)
    }

    /// Removes whole segments whose records are all at or below `seq`. The segment being
    /// appended to is never removed, so sequence numbers continue across restarts.
    pub fn release_up_to(&self, seq: Seq) -> Result<usize, Error> {
        let _serial = lock(&self.inner.release);
        writer::release_up_to(&self.dir, &self.inner.state, seq)
    }

    /// Returns what was appended since `open`.
    pub fn append_counts(&self) -> AppendCounts {
        let (head, position) = self.head();
        AppendCounts {
            records: head.0.saturating_sub(self.opened_at.0.0),
            bytes: position.0.saturating_sub(self.opened_at.1.0),
            writes: self.writes.load(Ordering::Relaxed),
            written_bytes: self.written_bytes.load(Ordering::Relaxed),
        }
    }

    /// Returns the bytes held in segment files.
    pub fn size_bytes(&self) -> u64 {
        self.inner.state().size_bytes
    }

    /// Returns the oldest sequence number in a segment, or `Seq(0)` when no segment
    /// contains a record.
    pub fn first_seq(&self) -> Seq {
        self.inner.state().first_seq()
    }

    /// Returns the random id chosen when the journal was created, written in every segment
    /// header.
    pub fn id(&self) -> u64 {
        self.inner.journal_id
    }

    /// Returns the directory holding the segments.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Returns the data length of a write, 0 for other ops.
fn op_data_len(op: &Op) -> usize {
    match op {
        Op::Write { data, .. } => data.len(),
        _ => 0,
    }
}

/// Appends the frame of `record` to `buf`, in the byte layout of a segment's record frames,
/// so that other stores (the S3 mirror) keep records exactly as the journal does.
///
/// # Errors
///
/// `Error::TooLarge` when the encoded op exceeds the maximum record size; `buf` is then
/// unchanged.
pub fn append_frame(record: &Record, buf: &mut Vec<u8>) -> Result<(), Error> {
    let payload_len = format::payload_len(&record.op);
    if payload_len > format::MAX_PAYLOAD_BYTES {
        return Err(Error::TooLarge {
            bytes: payload_len,
            max: format::MAX_PAYLOAD_BYTES,
        });
    }
    format::append_frame(
        record.seq,
        record.committed_at_ns,
        &record.op,
        payload_len,
        buf,
    );
    Ok(())
}

/// Decodes the record frame at the start of `bytes`, checking its length, CRC32C and op
/// encoding. Returns the record and the frame's length in bytes. The seq is not checked,
/// because only the caller knows which one to expect.
pub fn decode_frame(bytes: &[u8]) -> Result<(Record, usize), FormatError> {
    format::decode_frame_at(bytes)
}

/// Ops, strategies and helpers shared by the tests of the journal's files.
#[cfg(test)]
mod testing {
    use proptest::prelude::*;

    use super::*;

    pub fn path(text: &str) -> RelPath {
        RelPath::from_bytes(text.as_bytes()).expect("test paths are valid")
    }

    /// Returns a write of `len` bytes that differs for every `n`.
    pub fn write_op(n: u64, len: usize) -> Op {
        Op::Write {
            path: path(&format!("logs/app-{}.log", n % 7)),
            offset: n * 1000,
            data: (0..len).map(|i| (n as usize + i) as u8).collect(),
        }
    }

    /// Returns one op of every variant, with values that use the full width of each field.
    pub fn every_op() -> Vec<Op> {
        let time = |secs, nanos| Some(Timestamp { secs, nanos });
        vec![
            Op::Write {
                path: path("a/b.log"),
                offset: u64::MAX,
                data: b"line\n\0\xff".to_vec(),
            },
            Op::Create {
                path: path("c"),
                mode: 0o100644,
                uid: 1000,
                gid: u32::MAX,
            },
            Op::Mknod {
                path: path("dev/fifo"),
                mode: 0o010600,
                rdev: 0x0102_0304_0506_0708,
                uid: 0,
                gid: 5,
            },
            Op::Mkdir {
                path: path("d/e"),
                mode: 0o40755,
                uid: 7,
                gid: 8,
            },
            Op::Symlink {
                path: path("link"),
                target: b"../../\xfe/target".to_vec(),
                uid: 1,
                gid: 2,
            },
            Op::Link {
                existing: path("a/b.log"),
                path: path("a/b.log.1"),
            },
            Op::Unlink { path: path("x") },
            Op::Rmdir {
                path: RelPath::root(),
            },
            Op::Rename {
                from: path("a.log"),
                to: path("a.log.1"),
                flags: 1,
            },
            Op::Truncate {
                path: path("t"),
                size: 1 << 40,
            },
            Op::SetMode {
                path: path("m"),
                mode: 0o4755,
            },
            Op::SetOwner {
                path: path("o"),
                uid: Some(0),
                gid: None,
            },
            Op::SetOwner {
                path: path("o"),
                uid: None,
                gid: Some(u32::MAX),
            },
            Op::SetTimes {
                path: path("t"),
                atime: time(-1, 999_999_999),
                mtime: None,
            },
            Op::SetTimes {
                path: path("t"),
                atime: None,
                mtime: time(i64::MAX, 0),
            },
            Op::Fallocate {
                path: path("f"),
                mode: -3,
                offset: 4096,
                length: u64::MAX,
            },
            Op::SetXattr {
                path: path("x"),
                name: b"user.tag".to_vec(),
                value: Vec::new(),
                flags: 2,
            },
            Op::RemoveXattr {
                path: path("x"),
                name: b"user.tag".to_vec(),
            },
            Op::CloseWrite {
                path: path("a/b.log"),
            },
        ]
    }

    /// Reads every record after `after` that is published now.
    pub fn read_all(journal: &Journal, after: Seq) -> Vec<(Record, Position)> {
        journal
            .read_after(after)
            .expect("read_after")
            .map(|r| r.expect("record"))
            .collect()
    }

    /// Returns the segment file names in `dir`, sorted.
    pub fn segment_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".seg"))
            .collect();
        names.sort();
        names
    }

    fn arb_path() -> impl Strategy<Value = RelPath> {
        prop::collection::vec("[a-z0-9 ._-]{1,8}", 0..4)
            .prop_filter_map("components must not be . or ..", |parts| {
                RelPath::from_bytes(parts.join("/").as_bytes())
            })
    }

    fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(any::<u8>(), 0..64)
    }

    fn arb_time() -> impl Strategy<Value = Option<Timestamp>> {
        prop::option::of(
            (any::<i64>(), any::<u32>()).prop_map(|(secs, nanos)| Timestamp { secs, nanos }),
        )
    }

    /// Generates ops of every variant with arbitrary field values.
    pub fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (arb_path(), any::<u64>(), arb_bytes()).prop_map(|(path, offset, data)| Op::Write {
                path,
                offset,
                data
            }),
            (arb_path(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(path, mode, uid, gid)| Op::Create {
                    path,
                    mode,
                    uid,
                    gid
                }
            ),
            (
                arb_path(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(path, mode, rdev, uid, gid)| Op::Mknod {
                    path,
                    mode,
                    rdev,
                    uid,
                    gid
                }),
            (arb_path(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
                |(path, mode, uid, gid)| Op::Mkdir {
                    path,
                    mode,
                    uid,
                    gid
                }
            ),
            (arb_path(), arb_bytes(), any::<u32>(), any::<u32>()).prop_map(
                |(path, target, uid, gid)| Op::Symlink {
                    path,
                    target,
                    uid,
                    gid
                }
            ),
            (arb_path(), arb_path()).prop_map(|(existing, path)| Op::Link { existing, path }),
            arb_path().prop_map(|path| Op::Unlink { path }),
            arb_path().prop_map(|path| Op::Rmdir { path }),
            (arb_path(), arb_path(), any::<u32>()).prop_map(|(from, to, flags)| Op::Rename {
                from,
                to,
                flags
            }),
            (arb_path(), any::<u64>()).prop_map(|(path, size)| Op::Truncate { path, size }),
            (arb_path(), any::<u32>()).prop_map(|(path, mode)| Op::SetMode { path, mode }),
            (arb_path(), any::<Option<u32>>(), any::<Option<u32>>())
                .prop_map(|(path, uid, gid)| Op::SetOwner { path, uid, gid }),
            (arb_path(), arb_time(), arb_time()).prop_map(|(path, atime, mtime)| Op::SetTimes {
                path,
                atime,
                mtime
            }),
            (arb_path(), any::<i32>(), any::<u64>(), any::<u64>()).prop_map(
                |(path, mode, offset, length)| Op::Fallocate {
                    path,
                    mode,
                    offset,
                    length
                }
            ),
            (arb_path(), arb_bytes(), arb_bytes(), any::<i32>()).prop_map(
                |(path, name, value, flags)| Op::SetXattr {
                    path,
                    name,
                    value,
                    flags
                }
            ),
            (arb_path(), arb_bytes()).prop_map(|(path, name)| Op::RemoveXattr { path, name }),
            arb_path().prop_map(|path| Op::CloseWrite { path }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::testing::{read_all, segment_names, write_op};
    use super::*;

    #[test]
    fn journal_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Journal>();
        assert_send_sync::<Arc<Journal>>();
        fn assert_send<T: Send>() {}
        assert_send::<Reader>();
    }

    #[test]
    fn open_empty_dir_creates_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("journal");
        let (journal, recovery) = Journal::open(&dir, 1 << 20).unwrap();
        assert_eq!(recovery.first_seq, Seq(0));
        assert_eq!(recovery.head, Seq(0));
        assert_eq!(recovery.head_position, Position(0));
        assert_eq!(recovery.segments, 1);
        assert_eq!(recovery.records, 0);
        assert_eq!(recovery.torn_bytes_cut, 0);
        assert_eq!(segment_names(&dir), ["00000000000000000001.seg"]);
        assert_eq!(journal.size_bytes(), 44);
        assert_eq!(journal.head(), (Seq(0), Position(0)));
        assert_eq!(journal.first_seq(), Seq(0));
        assert_eq!(journal.dir(), dir);
        assert!(read_all(&journal, Seq(0)).is_empty());
    }

    #[test]
    fn append_then_reopen_keeps_records() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let id = journal.id();
        let op1 = write_op(1, 10);
        let op2 = write_op(2, 0);
        let frame1 = 24 + format::payload_len(&op1) as u64;
        let frame2 = 24 + format::payload_len(&op2) as u64;
        assert_eq!(journal.append(&op1).unwrap(), (Seq(1), Position(frame1)));
        assert_eq!(
            journal.append(&op2).unwrap(),
            (Seq(2), Position(frame1 + frame2))
        );
        assert_eq!(journal.size_bytes(), 44 + frame1 + frame2);
        assert_eq!(journal.first_seq(), Seq(1));
        drop(journal);

        let (journal, recovery) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(journal.id(), id);
        assert_eq!(recovery.first_seq, Seq(1));
        assert_eq!(recovery.head, Seq(2));
        assert_eq!(recovery.head_position, Position(frame1 + frame2));
        assert_eq!(recovery.records, 2);
        assert_eq!(recovery.segments, 1);
        let records = read_all(&journal, Seq(0));
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].0.op, op1);
        assert_eq!(records[0].1, Position(frame1));
        assert_eq!(records[1].0.op, op2);
        assert_eq!(records[1].0.seq, Seq(2));
        assert_eq!(journal.append(&op1).unwrap().0, Seq(3));
    }

    #[test]
    fn names_changed_after_lists_name_ops() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let p = super::testing::path;
        journal.append(&write_op(1, 10)).unwrap();
        let create = Op::Create {
            path: p("a.log"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert_eq!(journal.append(&create).unwrap().0, Seq(2));
        journal.append(&write_op(3, 10)).unwrap();
        let rename = Op::Rename {
            from: p("a.log"),
            to: p("b/a.log"),
            flags: 0,
        };
        assert_eq!(journal.append(&rename).unwrap().0, Seq(4));
        assert_eq!(
            journal.names_changed_after(Seq(0)),
            Some(vec![p("a.log"), p("a.log"), p("b/a.log")])
        );
        assert_eq!(
            journal.names_changed_after(Seq(2)),
            Some(vec![p("a.log"), p("b/a.log")])
        );
        assert_eq!(journal.names_changed_after(Seq(4)), Some(Vec::new()));
        drop(journal);

        // Records from before the open are not listed, so only later seqs are known.
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(journal.names_changed_after(Seq(3)), None);
        assert_eq!(journal.names_changed_after(Seq(4)), Some(Vec::new()));
        for _ in 0..NAME_CHANGES_KEPT + 1 {
            journal.append(&Op::Unlink { path: p("x") }).unwrap();
        }
        let kept = |after| journal.names_changed_after(Seq(after)).map(|v| v.len());
        assert_eq!(kept(4), None);
        assert_eq!(kept(5), Some(NAME_CHANGES_KEPT));
        assert_eq!(kept(6), Some(NAME_CHANGES_KEPT - 1));
    }

    #[test]
    fn append_records_commit_time() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        journal.append(&write_op(1, 1)).unwrap();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let records = read_all(&journal, Seq(0));
        assert!(records[0].0.committed_at_ns >= before);
        assert!(records[0].0.committed_at_ns <= after);
    }

    #[test]
    fn open_rejects_second_journal_on_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let reader = journal.read_after(Seq(0)).unwrap();
        match Journal::open(tmp.path(), 1 << 20) {
            Err(Error::Io {
                action,
                path,
                source,
            }) => {
                assert_eq!(action, "lock journal directory");
                assert_eq!(path, tmp.path().join("LOCK"));
                assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock);
            }
            Err(other) => panic!("expected Io, got {other:?}"),
            Ok(_) => panic!("a second journal opened on the same directory"),
        }
        // A reader keeps the journal state, and so the lock, alive.
        drop(journal);
        assert!(Journal::open(tmp.path(), 1 << 20).is_err());
        drop(reader);
        assert!(Journal::open(tmp.path(), 1 << 20).is_ok());
    }

    #[test]
    fn wait_beyond_times_out_at_head() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        journal.append(&write_op(1, 1)).unwrap();
        assert_eq!(
            journal.wait_beyond(Seq(1), Duration::from_millis(20)),
            Seq(1)
        );
        assert_eq!(journal.wait_beyond(Seq(0), Duration::ZERO), Seq(1));
    }

    #[test]
    fn wait_beyond_wakes_on_append() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let journal = Arc::new(journal);
        let waiter = {
            let journal = Arc::clone(&journal);
            thread::spawn(move || journal.wait_beyond(Seq(0), Duration::from_secs(60)))
        };
        journal.append(&write_op(1, 1)).unwrap();
        assert_eq!(waiter.join().unwrap(), Seq(1));
    }

    /// Identity given to writes whose backing file the test never reads.
    const SOME_FILE: FileIdentity = FileIdentity {
        ino: 12,
        generation: Some(34),
    };

    /// Appends `op` with `append_owned`, as the fs does, and returns its seq.
    fn append_owned(journal: &Journal, op: &Op) -> Seq {
        journal
            .append_owned(&mut op.clone(), Some(SOME_FILE))
            .unwrap()
            .0
    }

    /// Returns the identity of the file at `path`, as the fs records it.
    fn identity_of(path: &Path) -> FileIdentity {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;

        let file = File::open(path).unwrap();
        FileIdentity::of(file.as_fd(), file.metadata().unwrap().ino())
    }

    /// Writes the data of the write `op` at its offset of a new file below `backing`, whose
    /// bytes before the offset are zero, and returns the file's path and content.
    fn write_backing_file(backing: &Path, op: &Op) -> (PathBuf, Vec<u8>) {
        let Op::Write { path, offset, data } = op else {
            unreachable!("{op:?} is no write")
        };
        let file = backing.join(path.to_string());
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let mut content = vec![0u8; *offset as usize];
        content.extend_from_slice(data);
        std::fs::write(&file, &content).unwrap();
        (file, content)
    }

    /// Returns the error that reading the journal's first record gives.
    fn first_read_error(journal: &Journal) -> Error {
        let mut reader = journal.read_after(Seq(0)).unwrap();
        reader.next().unwrap().unwrap_err()
    }

    fn segment_bytes(dir: &Path) -> u64 {
        segment_names(dir)
            .iter()
            .map(|name| std::fs::metadata(dir.join(name)).unwrap().len())
            .sum()
    }

    #[test]
    fn large_write_journaled_by_reference() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        let big = write_op(1, 64 << 10);
        let small = write_op(2, MIN_REFERENCED_BYTES - 1);
        append_owned(&journal, &big);
        append_owned(&journal, &small);

        // The big write's data is in memory only; the small one is copied as before.
        let frames = segment_bytes(tmp.path()) - format::HEADER_LEN as u64;
        assert!(frames < 2 * 1024, "segment frames take {frames} bytes");
        assert_eq!(journal.data_held_bytes(), 64 << 10);
        let records = read_all(&journal, Seq(0));
        assert_eq!(records[0].0.op, big);
        assert_eq!(records[1].0.op, small);
        // Positions count the data once, as if the frame carried it.
        let inline = |op: &Op| (format::FRAME_HEADER_LEN + format::payload_len(op)) as u64;
        let reference = DataRef {
            len: 64 << 10,
            crc: 0,
            file: Some(SOME_FILE),
        };
        let referring =
            (format::FRAME_HEADER_LEN + format::ref_payload_len(big.path(), &reference)) as u64;
        assert_eq!(records[0].1, Position(referring + (64 << 10)));
        assert_eq!(
            records[1].1,
            Position(referring + (64 << 10) + inline(&small))
        );
        assert_eq!(journal.head().1, records[1].1);

        journal.release_data_up_to(Seq(1));
        assert_eq!(journal.data_held_bytes(), 0);
        let error = first_read_error(&journal);
        assert!(
            matches!(&error, Error::DataGone { seq: Seq(1), .. }),
            "{error}"
        );
    }

    #[test]
    fn released_data_read_from_backing() {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        let (journal, _) = Journal::open(&tmp.path().join("journal"), 1 << 20).unwrap();
        let op = write_op(0, 8192);
        let offset = op_offset(&op);
        let (file, mut content) = write_backing_file(&backing, &op);
        journal
            .append_owned(&mut op.clone(), Some(identity_of(&file)))
            .unwrap();
        journal.release_data_up_to(Seq(1));
        journal.set_backing_reader(crate::mirror::backing_reader(&backing).unwrap());
        assert_eq!(read_all(&journal, Seq(0))[0].0.op, op);

        // Bytes changed since the write: the reader refuses them rather than mirror them.
        content[offset] ^= 1;
        std::fs::write(&file, &content).unwrap();
        let error = first_read_error(&journal);
        assert!(error.to_string().contains("changed since"), "{error}");
    }

    fn op_offset(op: &Op) -> usize {
        match op {
            Op::Write { offset, .. } => *offset as usize,
            other => unreachable!("{other:?} is no write"),
        }
    }

    /// The path names another file than the one written: its bytes are refused even when
    /// they are the same, because a forged CRC32C collision would pass the CRC check too
    /// (tests/journal_loss.rs forges one).
    #[test]
    fn replaced_file_rejected_despite_same_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        let (journal, _) = Journal::open(&tmp.path().join("journal"), 1 << 20).unwrap();
        let op = write_op(0, 8192);
        let (file, content) = write_backing_file(&backing, &op);
        journal
            .append_owned(&mut op.clone(), Some(identity_of(&file)))
            .unwrap();
        journal.release_data_up_to(Seq(1));
        journal.set_backing_reader(crate::mirror::backing_reader(&backing).unwrap());

        std::fs::rename(&file, backing.join("moved.log")).unwrap();
        std::fs::write(&file, &content).unwrap();

        let error = first_read_error(&journal);
        assert!(
            matches!(&error, Error::DataGone { seq: Seq(1), .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("names another file now"),
            "{error}"
        );
    }

    /// A journal written before tag 19 still opens, keeps its positions, and reads: its
    /// referenced writes come back as `DataGone` (the mirror is resynced), even when the
    /// bytes at the path match, because nothing ties them to the file written.
    #[test]
    fn path_only_references_read_as_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        let dir = tmp.path().join("journal");
        let op = write_op(0, 8192);
        write_backing_file(&backing, &op);
        let small = write_op(1, 100);
        let expected_head = {
            let (journal, _) = Journal::open(&dir, 1 << 20).unwrap();
            let Op::Write { path, offset, data } = &op else {
                unreachable!()
            };
            let path_only = Entry::Reference {
                path,
                offset: *offset,
                data: DataRef {
                    len: data.len() as u32,
                    crc: crc32c::crc32c(data),
                    file: None,
                },
            };
            let inner = &journal.inner;
            lock(&inner.writer)
                .append(path_only, &inner.state, &inner.head_changed, |_| {})
                .unwrap();
            journal.append(&small).unwrap();
            journal.head()
        };
        let segment = dir.join(&segment_names(&dir)[0]);
        let bytes = std::fs::read(segment).unwrap();
        assert_eq!(
            bytes[format::HEADER_LEN + format::FRAME_HEADER_LEN],
            18,
            "the first frame has the old tag"
        );

        let (journal, recovery) = Journal::open(&dir, 1 << 20).unwrap();
        assert_eq!((recovery.head, recovery.head_position), expected_head);
        journal.set_backing_reader(crate::mirror::backing_reader(&backing).unwrap());
        let mut reader = journal.read_after(Seq(0)).unwrap();
        let error = reader.next().unwrap().unwrap_err();
        assert!(
            matches!(&error, Error::DataGone { seq: Seq(1), .. }),
            "{error}"
        );
        assert!(error.to_string().contains("by path only"), "{error}");
        let (second, position) = read_all(&journal, Seq(1)).remove(0);
        assert_eq!((second.op, position), (small, expected_head.1));
    }

    #[test]
    fn reopen_keeps_referenced_positions() {
        let tmp = tempfile::tempdir().unwrap();
        let segment_size = 1024;
        let expected = {
            let (journal, _) = Journal::open(tmp.path(), segment_size).unwrap();
            for n in 1..=40 {
                append_owned(&journal, &write_op(n, if n % 3 == 0 { 100 } else { 4096 }));
            }
            assert!(segment_names(tmp.path()).len() > 1, "segments rolled over");
            let positions: Vec<Position> =
                read_all(&journal, Seq(0)).iter().map(|(_, p)| *p).collect();
            assert_eq!(positions.last(), Some(&journal.head().1));
            positions
        };
        let (journal, recovery) = Journal::open(tmp.path(), segment_size).unwrap();
        assert_eq!(recovery.head_position, expected[39]);
        // A record that carries its data reads with the position it had. The data of the
        // next one did not survive the restart, and no backing directory is set.
        let mut reader = journal.read_after(Seq(2)).unwrap();
        let (third, position) = reader.next().unwrap().unwrap();
        assert_eq!((third.op, position), (write_op(3, 100), expected[2]));
        assert!(matches!(
            reader.next(),
            Some(Err(Error::DataGone { seq: Seq(4), .. }))
        ));
    }

    #[test]
    fn full_budget_copies_data_inline() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 30).unwrap();
        let chunk = 1 << 20;
        let count = DATA_CACHE_BYTES as usize / chunk + 3;
        for n in 0..count {
            append_owned(&journal, &write_op(n as u64, chunk));
        }
        assert_eq!(journal.data_held_bytes(), DATA_CACHE_BYTES);
        let frames = segment_bytes(tmp.path()) - format::HEADER_LEN as u64;
        assert!(
            frames > 3 * chunk as u64,
            "3 writes carry their data: {frames}"
        );
        let records = read_all(&journal, Seq(0));
        assert_eq!(records.len(), count);
        assert_eq!(records[count - 1].0.op, write_op(count as u64 - 1, chunk));
    }
}
