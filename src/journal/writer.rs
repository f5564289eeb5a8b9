//! The active segment: appends encoded records to its end, rolls over to a new segment when
//! it is full, and removes released segments.
//!
//! Receives ops from `Journal::append` on FUSE threads and publishes each record to readers
//! only after its bytes are in the file. Nothing here fsyncs a record (see `commit.rs`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::format::{self, DataRef, SegmentHeader};
use super::reader::Recovered;
use super::{Error, Op, OpenSegment, Position, RelPath, SegmentInfo, Seq, State, lock};

/// Content of one append to the segment.
pub(super) enum Entry<'a> {
    /// The op, data included.
    Op(&'a Op),
    /// A write whose data the journal keeps in memory instead (tag 19).
    Reference {
        path: &'a RelPath,
        offset: u64,
        data: DataRef,
    },
}

/// Bytes kept allocated past the end of the active segment, topped up once less than half
/// is left. Records still fit in them when the filesystem is full. Deleting a file is how
/// space is freed, and the delete succeeds only if its unlink is journaled. Topped up 8 KiB at
/// a time, fallocate took a tenth of the daemon's CPU under 4 KiB writes, hence 1 MiB.
const RESERVE_BYTES: u64 = 1 << 20;

/// Part of the reserve that, once topping it up failed (the disk is full), only records that
/// free space may use: unlink, rmdir and truncate. Without it, small writes used the whole
/// reserve and the delete that frees space failed with ENOSPC.
const FREEING_RESERVE_BYTES: u64 = 64 << 10;

/// Wait after a failed top-up of the reserve before the next attempt. A record that needs
/// room meanwhile allocates just its own.
const RESERVE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Maximum capacity of the frame buffer kept between appends. A buffer grown past this by a
/// large record is freed after the append.
const MAX_RETAINED_FRAME_BUFFER_BYTES: usize = 1 << 20;

pub(super) struct Writer {
    dir: PathBuf,
    journal_id: u64,
    segment_size_bytes: u64,
    active: OpenSegment,
    /// Length of the active segment file: header plus whole frames.
    len_bytes: u64,
    /// Data bytes that the active segment's frames refer to.
    data_bytes: u64,
    /// Records in the active segment.
    records: u64,
    head: Seq,
    position: Position,
    /// Reused for every frame, so an append allocates only when a record outgrows it.
    frame: Vec<u8>,
    /// Set when a failed write left bytes that could not be cut off. Appending after them
    /// would put a damaged frame in the middle of the segment.
    failure: Option<io::ErrorKind>,
    /// Offset up to which the active segment's space is allocated (see [`RESERVE_BYTES`]).
    reserved_to: u64,
    /// Cleared when the filesystem does not support fallocate.
    reserve_supported: bool,
    /// Set while topping up the reserve fails, so that only the first failure is logged.
    reserve_failing: bool,
    /// Time of the latest failed top-up. The next attempt waits [`RESERVE_RETRY_INTERVAL`],
    /// so that appends on a full disk do not each pay for a failing fallocate.
    reserve_failed_at: Option<Instant>,
}

impl Writer {
    /// Continues appending to the newest segment that recovery found.
    pub fn new(dir: &Path, segment_size_bytes: u64, found: &Recovered) -> Writer {
        let newest = &found.segments[found.segments.len() - 1];
        debug_assert_eq!(newest.first_seq, found.active.first_seq);
        Writer {
            dir: dir.to_path_buf(),
            journal_id: found.journal_id,
            segment_size_bytes,
            active: found.active.clone(),
            len_bytes: newest.len_bytes,
            data_bytes: newest.data_bytes,
            records: found.active_records,
            head: found.head,
            position: found.head_position,
            frame: Vec::new(),
            failure: None,
            reserved_to: newest.len_bytes,
            reserve_supported: true,
            reserve_failing: false,
            reserve_failed_at: None,
        }
    }

    /// Appends one record and publishes it in `state`, waking `head_changed` waiters.
    /// `written` runs with the record's seq once its bytes are in the file, before readers
    /// can see it.
    pub fn append(
        &mut self,
        entry: Entry<'_>,
        state: &Mutex<State>,
        head_changed: &Condvar,
        written: impl FnOnce(Seq),
    ) -> Result<(Seq, Position), Error> {
        if let Some(kind) = self.failure {
            let source = io::Error::new(
                kind,
                "an earlier failed write left a partial record; reopen the journal",
            );
            return Err(Error::io(
                "append to journal segment",
                &self.active.path,
                source,
            ));
        }
        let (payload_len, referred) = match entry {
            Entry::Op(op) => (format::payload_len(op), 0),
            Entry::Reference { path, data, .. } => {
                (format::ref_payload_len(path, &data), u64::from(data.len))
            }
        };
        if payload_len > format::MAX_PAYLOAD_BYTES {
            return Err(Error::TooLarge {
                bytes: payload_len,
                max: format::MAX_PAYLOAD_BYTES,
            });
        }
        let seq = self.head.next();
        match entry {
            Entry::Op(op) => format::encode_frame(seq, now_ns(), op, payload_len, &mut self.frame),
            Entry::Reference { path, offset, data } => {
                format::encode_ref_frame(seq, now_ns(), path, offset, data, &mut self.frame)
            }
        }
        if !frees_space(&entry) && self.in_freeing_reserve() {
            // The disk may have room again, freed outside the mount, or room for this frame
            // with the last part of the reserve kept.
            self.keep_reserve();
            let needed = self.len_bytes + self.frame.len() as u64 + FREEING_RESERVE_BYTES;
            if self.in_freeing_reserve() && self.allocate_to(needed).is_err() {
                return Err(Error::io(
                    "append to journal segment",
                    &self.active.path,
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        if self.records > 0
            && self.len_bytes >= self.segment_size_bytes
            && let Err(e) = self.roll(state)
        {
            // On a full disk the new segment cannot be created. The frame may still fit in
            // the reserve, and the unlink that frees space must fit there.
            if e.no_space_errno().is_none()
                || self.reserved_to < self.len_bytes + self.frame.len() as u64
            {
                return Err(e);
            }
            log::warn!(
                "journal segment {} could not roll over, so the record goes into the \
                 space kept in reserve: {e}",
                self.active.path.display()
            );
        }
        if let Err(source) = self.active.file.write_all_at(&self.frame, self.len_bytes) {
            self.cut_partial_write();
            return Err(Error::io(
                "write journal segment",
                &self.active.path,
                source,
            ));
        }

        written(seq);
        let frame_len = self.frame.len() as u64;
        self.len_bytes += frame_len;
        self.keep_reserve();
        self.data_bytes += referred;
        self.records += 1;
        self.head = seq;
        self.position = Position(self.position.0 + frame_len + referred);
        if self.frame.capacity() > MAX_RETAINED_FRAME_BUFFER_BYTES {
            self.frame = Vec::new();
        }

        let mut state = lock(state);
        state.head = seq;
        state.head_position = self.position;
        state.size_bytes += frame_len;
        if let Some(active) = state.segments.last_mut() {
            debug_assert_eq!(active.first_seq, self.active.first_seq);
            active.len_bytes = self.len_bytes;
            active.data_bytes = self.data_bytes;
        }
        let someone_waits = state.waiters > 0;
        drop(state);
        if someone_waits {
            head_changed.notify_all();
        }
        Ok((seq, self.position))
    }

    /// Returns whether the disk is full and the frame in `self.frame` would reach into the
    /// last [`FREEING_RESERVE_BYTES`] of the reserve.
    fn in_freeing_reserve(&self) -> bool {
        self.reserve_failing
            && self.len_bytes + self.frame.len() as u64 + FREEING_RESERVE_BYTES > self.reserved_to
    }

    /// Allocates [`RESERVE_BYTES`] past the end of the active segment without changing its
    /// size, once less than half of the previous reserve is left. A failure only leaves
    /// less room, so it is logged and the append goes on.
    fn keep_reserve(&mut self) {
        if !self.reserve_supported || self.reserved_to >= self.len_bytes + RESERVE_BYTES / 2 {
            return;
        }
        if self
            .reserve_failed_at
            .is_some_and(|at| at.elapsed() < RESERVE_RETRY_INTERVAL)
        {
            return;
        }
        let start = self.reserved_to.max(self.len_bytes);
        let Err(error) = self.allocate_to(self.len_bytes + RESERVE_BYTES) else {
            self.reserve_failing = false;
            self.reserve_failed_at = None;
            return;
        };
        self.reserve_failed_at = Some(Instant::now());
        if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
            log::info!(
                "the journal's filesystem does not support fallocate, so no space is kept in \
                 reserve for appends on a full disk: segment={}",
                self.active.path.display()
            );
            self.reserve_supported = false;
        } else if !self.reserve_failing {
            log::warn!(
                "failed to keep space in reserve past the journal segment's end: segment={} \
                 offset={} error={error}",
                self.active.path.display(),
                start
            );
            self.reserve_failing = true;
        }
    }

    /// Allocates the active segment's space up to offset `end` without changing its size.
    fn allocate_to(&mut self, end: u64) -> io::Result<()> {
        let start = self.reserved_to.max(self.len_bytes);
        if end <= start {
            return Ok(());
        }
        // SAFETY: the segment file is open for writing for the duration of the call.
        let ret = unsafe {
            libc::fallocate(
                self.active.file.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        self.reserved_to = end;
        Ok(())
    }

    /// Removes whatever part of a failed write reached the file, so the segment still ends
    /// at a whole frame.
    fn cut_partial_write(&mut self) {
        if let Err(e) = self.active.file.set_len(self.len_bytes) {
            log::error!(
                "journal segment left with a partial record, appends stop until reopen: \
                 segment={} offset={} error={}",
                self.active.path.display(),
                self.len_bytes,
                e
            );
            self.failure = Some(e.kind());
        }
    }

    /// Starts a new segment after the last record and makes it the active one.
    fn roll(&mut self, state: &Mutex<State>) -> Result<(), Error> {
        let header = SegmentHeader {
            journal_id: self.journal_id,
            first_seq: self.head.next(),
            base_position: self.position,
        };
        let (file, path) = create_segment(&self.dir, &header)?;
        let next = OpenSegment {
            first_seq: header.first_seq,
            path: path.clone(),
            file: Arc::new(file),
        };
        let previous = std::mem::replace(&mut self.active, next.clone());
        // Truncating to the same length frees the reserve past the end. A sealed segment
        // would otherwise hold up to RESERVE_BYTES unused until its release.
        if let Err(e) = previous.file.set_len(self.len_bytes) {
            log::warn!(
                "failed to free the reserve past the end of the sealed journal segment {}: {e}",
                previous.path.display()
            );
        }
        self.len_bytes = format::HEADER_LEN as u64;
        self.data_bytes = 0;
        self.records = 0;
        self.reserved_to = self.len_bytes;
        self.keep_reserve();

        let mut state = lock(state);
        state.segments.push(SegmentInfo {
            first_seq: header.first_seq,
            base_position: header.base_position,
            len_bytes: self.len_bytes,
            data_bytes: 0,
            path,
        });
        state.size_bytes += self.len_bytes;
        // NOTE: without sync_to calls, every rolled segment keeps a file descriptor open
        // until the next group commit or its release.
        state.unsynced.push(previous);
        state.active = next;
        drop(state);

        log::debug!(
            "journal segment rolled over: segment={} first_seq={} position={}",
            self.active.path.display(),
            header.first_seq,
            header.base_position.0
        );
        Ok(())
    }
}

/// Returns the path of the segment whose first record is `first_seq`.
pub(super) fn segment_path(dir: &Path, first_seq: Seq) -> PathBuf {
    dir.join(format!("{:020}.seg", first_seq.0))
}

/// Creates a segment file holding only `header`, durable together with its directory entry,
/// and returns it opened for reading and writing.
///
/// The header is synced before the directory so that a segment, once it can be the only one
/// left, never has a torn header.
pub(super) fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<(File, PathBuf), Error> {
    let path = segment_path(dir, header.first_seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("create journal segment", &path, e))?;

    let written = file
        .write_all(&header.encode())
        .and_then(|()| file.sync_data());
    if let Err(source) = written {
        // The segment was never published, so removing it loses nothing. If the removal
        // fails too, the next open removes the file or keeps it as an empty newest segment.
        let _ = std::fs::remove_file(&path);
        return Err(Error::io("write journal segment", &path, source));
    }
    sync_dir(dir, &path)?;
    Ok((file, path))
}

/// Makes the creation or removal of `path` in `dir` durable.
pub(super) fn sync_dir(dir: &Path, path: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync the journal directory holding", path, e))
}

/// Returns whether the record frees space on the backing filesystem, so that it may use the
/// last part of the reserve.
fn frees_space(entry: &Entry<'_>) -> bool {
    matches!(
        entry,
        Entry::Op(Op::Unlink { .. } | Op::Rmdir { .. } | Op::Truncate { .. })
    )
}

/// Removes the oldest segments whose records are all at or below `seq`, never the active one.
// NOTE: a full disk smaller than the segment size therefore stays full after the mirrors confirm.
pub(super) fn release_up_to(dir: &Path, state: &Mutex<State>, seq: Seq) -> Result<usize, Error> {
    let mut guard = lock(state);
    // A segment's last record is the one before the next segment's first.
    let removable = guard
        .segments
        .windows(2)
        .take_while(|pair| Seq(pair[1].first_seq.0 - 1) <= seq)
        .count();
    let removed: Vec<SegmentInfo> = guard.segments.drain(..removable).collect();
    let removed_bytes: u64 = removed.iter().map(|s| s.len_bytes).sum();
    guard.size_bytes -= removed_bytes;
    guard
        .unsynced
        .retain(|open| removed.iter().all(|s| s.first_seq != open.first_seq));
    drop(guard);

    // Readers look segments up in `state` before every record, so from here on a reader
    // still behind `seq` gets `Error::Released`. Removal stops at the first failure, so the
    // segments left on disk still follow each other without a gap.
    for (i, segment) in removed.iter().enumerate() {
        if let Err(source) = std::fs::remove_file(&segment.path) {
            let kept = &removed[i..];
            let mut guard = lock(state);
            guard.size_bytes += kept.iter().map(|s| s.len_bytes).sum::<u64>();
            guard.segments.splice(..0, kept.iter().cloned());
            drop(guard);
            if i > 0 {
                sync_dir(dir, &removed[i - 1].path)?;
            }
            return Err(Error::io("remove journal segment", &segment.path, source));
        }
    }
    if let Some(last) = removed.last() {
        sync_dir(dir, &last.path)?;
        log::debug!(
            "journal segments released: count={} bytes={} up_to_seq={}",
            removed.len(),
            removed_bytes,
            seq
        );
    }
    Ok(removed.len())
}

/// Name of the file in the journal directory that `lock_dir` locks.
const LOCK_FILE_NAME: &str = "LOCK";

/// Takes an exclusive lock on the journal directory, so that no other `Journal` (in this
/// process or another) appends to the same segments. The lock lasts as long as the file.
pub(super) fn lock_dir(dir: &Path) -> Result<File, Error> {
    let path = dir.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("create journal lock file", &path, e))?;
    // SAFETY: `file` owns the descriptor and stays open for the whole call.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        let error = io::Error::last_os_error();
        let source = match error.kind() {
            io::ErrorKind::WouldBlock => io::Error::new(
                io::ErrorKind::WouldBlock,
                "the journal is open elsewhere; stop that process or use another directory",
            ),
            _ => error,
        };
        return Err(Error::io("lock journal directory", &path, source));
    }
    Ok(file)
}

/// Returns a random journal id from the kernel's random source.
pub(super) fn new_journal_id(dir: &Path) -> Result<u64, Error> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("read a journal id for", dir, e))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Returns the wall-clock time in nanoseconds since the Unix epoch, or 0 when the clock is
/// set before 1970.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{read_all, segment_names, write_op};
    use super::super::{Journal, Recovery};
    use super::*;

    const FRAME_100: u64 = 24 + 1 + 4 + 14 + 8 + 4 + 100;

    /// Opens a journal whose segments roll over after three 100-byte writes.
    fn open_small(dir: &Path) -> (Journal, Recovery) {
        Journal::open(dir, 44 + 2 * FRAME_100 + 1).unwrap()
    }

    fn file_sizes(dir: &Path) -> u64 {
        segment_names(dir)
            .iter()
            .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
            .sum()
    }

    #[test]
    fn frame_size_of_test_write() {
        assert_eq!(
            24 + format::payload_len(&write_op(3, 100)) as u64,
            FRAME_100
        );
    }

    #[test]
    fn roll_over_starts_segment_at_next_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open_small(tmp.path());
        for n in 1..=10 {
            let (seq, position) = journal.append(&write_op(n, 100)).unwrap();
            assert_eq!(seq, Seq(n));
            assert_eq!(position, Position(n * FRAME_100));
        }
        assert_eq!(
            segment_names(tmp.path()),
            [
                "00000000000000000001.seg",
                "00000000000000000004.seg",
                "00000000000000000007.seg",
                "00000000000000000010.seg",
            ]
        );
        let second = std::fs::read(tmp.path().join("00000000000000000004.seg")).unwrap();
        let header = SegmentHeader::decode(&second).unwrap();
        assert_eq!(header.journal_id, journal.id());
        assert_eq!(header.first_seq, Seq(4));
        assert_eq!(header.base_position, Position(3 * FRAME_100));
        assert_eq!(second.len() as u64, 44 + 3 * FRAME_100);
        assert_eq!(journal.size_bytes(), 4 * 44 + 10 * FRAME_100);
        assert_eq!(journal.size_bytes(), file_sizes(tmp.path()));
    }

    /// Space past the end of the active segment stays allocated, so that records still fit
    /// once the filesystem is full. The file's size is that of its frames.
    #[test]
    fn active_segment_keeps_space_in_reserve() {
        use std::os::unix::fs::MetadataExt;

        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        for n in 1..=100 {
            journal.append(&write_op(n, 100)).unwrap();
            let segment = tmp.path().join(&segment_names(tmp.path())[0]);
            let metadata = std::fs::metadata(&segment).unwrap();
            assert_eq!(
                metadata.len(),
                format::HEADER_LEN as u64 + n * FRAME_100,
                "size after record {n}"
            );
            let allocated = metadata.blocks() * 512;
            assert!(
                allocated >= metadata.len() + RESERVE_BYTES / 2,
                "after record {n}: {allocated} bytes allocated for {} bytes",
                metadata.len()
            );
        }
    }

    /// A sealed segment gives its reserve back: only the active one needs room to grow.
    #[test]
    fn sealed_segment_frees_its_reserve() {
        use std::os::unix::fs::MetadataExt;

        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 64 << 10).unwrap();
        for n in 1..=2000 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        let names = segment_names(tmp.path());
        assert!(names.len() > 2, "segments: {names:?}");
        for name in &names[..names.len() - 1] {
            let metadata = std::fs::metadata(tmp.path().join(name)).unwrap();
            let allocated = metadata.blocks() * 512;
            assert!(
                allocated <= metadata.len().next_multiple_of(64 << 10),
                "sealed {name}: {allocated} bytes allocated for {} bytes",
                metadata.len()
            );
        }
    }

    #[test]
    fn record_larger_than_segment_fits_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 64).unwrap();
        journal.append(&write_op(1, 1000)).unwrap();
        journal.append(&write_op(2, 1000)).unwrap();
        journal.append(&write_op(3, 10)).unwrap();
        assert_eq!(
            segment_names(tmp.path()),
            [
                "00000000000000000001.seg",
                "00000000000000000002.seg",
                "00000000000000000003.seg",
            ]
        );
        let records = read_all(&journal, Seq(0));
        assert_eq!(records.len(), 3);
        assert_eq!(records[1].0.op, write_op(2, 1000));
    }

    #[test]
    fn append_rejects_too_large_record() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 1 << 20).unwrap();
        // 1 tag + 4 + 14 path + 8 offset + 4 length bytes of overhead.
        let data_len = format::MAX_PAYLOAD_BYTES - 31 + 1;
        let op = write_op(1, data_len);
        match journal.append(&op) {
            Err(Error::TooLarge { bytes, max }) => {
                assert_eq!(bytes, format::MAX_PAYLOAD_BYTES + 1);
                assert_eq!(max, 64 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(journal.head(), (Seq(0), Position(0)));
        assert_eq!(journal.size_bytes(), 44);

        let op = write_op(1, data_len - 1);
        assert_eq!(format::payload_len(&op), format::MAX_PAYLOAD_BYTES);
        let (seq, position) = journal.append(&op).unwrap();
        assert_eq!(seq, Seq(1));
        assert_eq!(position, Position(24 + (64 << 20)));
        let records = read_all(&journal, Seq(0));
        assert_eq!(records.len(), 1);
        assert!(records[0].0.op == op);
    }

    #[test]
    fn release_keeps_active_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open_small(tmp.path());
        for n in 1..=8 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        // Segments start at 1, 4 and 7; 7 and 8 are in the active one.
        assert_eq!(journal.release_up_to(Seq(0)).unwrap(), 0);
        assert_eq!(journal.release_up_to(Seq(2)).unwrap(), 0);
        assert_eq!(journal.release_up_to(Seq(3)).unwrap(), 1);
        assert_eq!(journal.first_seq(), Seq(4));
        assert_eq!(journal.release_up_to(Seq(u64::MAX)).unwrap(), 1);
        assert_eq!(segment_names(tmp.path()), ["00000000000000000007.seg"]);
        assert_eq!(journal.first_seq(), Seq(7));
        assert_eq!(journal.size_bytes(), 44 + 2 * FRAME_100);
        assert_eq!(journal.size_bytes(), file_sizes(tmp.path()));
        assert_eq!(journal.release_up_to(Seq(u64::MAX)).unwrap(), 0);

        let records = read_all(&journal, Seq(6));
        let seqs: Vec<u64> = records.iter().map(|(r, _)| r.seq.0).collect();
        assert_eq!(seqs, [7, 8]);
        assert_eq!(records[1].1, Position(8 * FRAME_100));
    }

    #[test]
    fn release_then_reopen_continues_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open_small(tmp.path());
        let id = journal.id();
        for n in 1..=6 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        // The seventh append rolls over, so segment 7 is active and 4..6 can go too.
        journal.append(&write_op(7, 100)).unwrap();
        assert_eq!(journal.release_up_to(Seq(7)).unwrap(), 2);
        drop(journal);

        let (journal, recovery) = open_small(tmp.path());
        assert_eq!(journal.id(), id);
        assert_eq!(recovery.first_seq, Seq(7));
        assert_eq!(recovery.head, Seq(7));
        assert_eq!(recovery.head_position, Position(7 * FRAME_100));
        assert_eq!(recovery.segments, 1);
        assert_eq!(recovery.records, 1);
        assert_eq!(
            journal.append(&write_op(8, 100)).unwrap(),
            (Seq(8), Position(8 * FRAME_100))
        );
    }

    #[test]
    fn release_of_all_records_keeps_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(tmp.path(), 44).unwrap();
        journal.append(&write_op(1, 10)).unwrap();
        journal.append(&write_op(2, 10)).unwrap();
        // Segment 2 is active and holds record 2, so release stops before it.
        assert_eq!(journal.release_up_to(Seq(2)).unwrap(), 1);
        assert_eq!(journal.first_seq(), Seq(2));
        drop(journal);

        let (journal, recovery) = Journal::open(tmp.path(), 44).unwrap();
        assert_eq!(recovery.head, Seq(2));
        assert_eq!(journal.append(&write_op(3, 10)).unwrap().0, Seq(3));
    }

    #[test]
    fn segment_name_is_zero_padded() {
        assert_eq!(
            segment_path(Path::new("/j"), Seq(12345)),
            Path::new("/j/00000000000000012345.seg")
        );
        assert_eq!(
            segment_path(Path::new("/j"), Seq(u64::MAX)),
            Path::new("/j/18446744073709551615.seg")
        );
    }
}
