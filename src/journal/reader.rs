//! Reading segments back: the recovery scan at open, with the torn-tail rule, and `Reader`,
//! which hands records to mirror workers in sequence order.
//!
//! Every record is checked (length, CRC32C, seq, op encoding) each time it is read. The only
//! write here is cutting a torn tail off the newest segment at open. Damage anywhere else is
//! returned as `Error::Corrupt` with the segment and byte offset, and never skipped.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    self, DataRef, FRAME_HEADER_LEN, FormatError, FrameHeader, HEADER_LEN, SegmentHeader,
};
use super::writer;
use super::{Error, Inner, OpenSegment, Position, Record, SegmentInfo, Seq};

/// Read buffer per open segment, for both the recovery scan and `Reader`.
const READ_BUFFER_BYTES: usize = 1 << 20;

/// Result of the recovery scan, from which `Journal::open` builds the writer and state.
pub(super) struct Recovered {
    pub journal_id: u64,
    /// Segments in the directory, oldest first. Never empty.
    pub segments: Vec<SegmentInfo>,
    pub head: Seq,
    pub head_position: Position,
    pub records: u64,
    /// Records in the newest segment, which becomes the active one.
    pub active_records: u64,
    /// The newest segment, opened for reading and writing.
    pub active: OpenSegment,
    pub torn_bytes_cut: u64,
    /// Segment and byte offset where the cut was made, when bytes were cut.
    pub cut_at: Option<(PathBuf, u64)>,
}

/// One frame read from a segment.
pub(super) enum Frame {
    Record {
        record: Record,
        frame_len: u64,
        /// Set for a write by reference, whose data the caller fills in.
        data: Option<DataRef>,
    },
    /// No bytes are left before the bound.
    End,
    /// The bytes do not form a whole frame that passes its length, CRC and seq checks, which
    /// is what a write cut short by a crash leaves. `frame_len` is set when the frame's
    /// length was valid and all of its bytes were read.
    Torn {
        reason: FormatError,
        frame_len: Option<u64>,
    },
    /// The frame passed its CRC but its payload is not a valid op, which no torn write
    /// produces.
    Invalid(FormatError),
}

/// Reads the frame at the front of `src`, which has `remaining` bytes before the end of the
/// segment or of the published records. `expected_seq` is the seq the frame must carry.
pub(super) fn read_frame(
    src: &mut impl Read,
    remaining: u64,
    expected_seq: Seq,
) -> io::Result<Frame> {
    if remaining == 0 {
        return Ok(Frame::End);
    }
    let incomplete = |needed: u64| Frame::Torn {
        reason: FormatError::Incomplete {
            needed,
            available: remaining,
        },
        frame_len: None,
    };
    let mut header_bytes = [0u8; FRAME_HEADER_LEN];
    if remaining < FRAME_HEADER_LEN as u64 || !read_full(src, &mut header_bytes)? {
        return Ok(incomplete(FRAME_HEADER_LEN as u64));
    }
    let header = FrameHeader::parse(&header_bytes);
    if let Err(reason) = header.check_payload_len() {
        return Ok(Frame::Torn {
            reason,
            frame_len: None,
        });
    }
    let frame_len = header.frame_len();
    // The length was checked against the maximum, so this allocation is bounded.
    let mut payload = vec![0u8; header.payload_len as usize];
    if frame_len > remaining || !read_full(src, &mut payload)? {
        return Ok(incomplete(frame_len));
    }

    if let Err(reason) = format::check_crc(&header_bytes, &payload) {
        return Ok(Frame::Torn {
            reason,
            frame_len: Some(frame_len),
        });
    }
    if header.seq != expected_seq {
        let reason = FormatError::SeqMismatch {
            expected: expected_seq,
            found: header.seq,
        };
        return Ok(Frame::Torn {
            reason,
            frame_len: Some(frame_len),
        });
    }
    match format::decode_record(&header, &payload) {
        Ok((record, data)) => Ok(Frame::Record {
            record,
            frame_len,
            data,
        }),
        Err(reason) => Ok(Frame::Invalid(reason)),
    }
}

/// Fills `buf`, returning false when the source ends first.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match src.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Scans every segment in `dir`, cuts a torn tail off the newest one, syncs them all, and
/// creates the first segment when there is none.
pub(super) fn recover(dir: &Path) -> Result<Recovered, Error> {
    let mut names = list_segments(dir)?;
    let mut torn_bytes_cut = 0;
    let mut cut_at = None;
    // The file name keeps the first seq of a removed empty segment, so seqs never repeat.
    let mut next_seq = Seq(1);
    if let Some(&(first_seq, ref path)) = names.last()
        && let Some(cut) = remove_torn_header(dir, path)?
    {
        torn_bytes_cut += cut;
        cut_at = Some((path.clone(), 0));
        next_seq = first_seq.max(Seq(1));
        names.pop();
    }
    if names.is_empty() {
        return create_journal(dir, next_seq, torn_bytes_cut, cut_at);
    }

    let mut segments: Vec<SegmentInfo> = Vec::with_capacity(names.len());
    let mut journal_id = None;
    let mut previous_end = None;
    let mut records = 0;
    let mut active = None;
    for (i, (name_seq, path)) in names.iter().enumerate() {
        let is_newest = i + 1 == names.len();
        let (file, mut scan) = scan_segment(path, |header| {
            let id = *journal_id.get_or_insert(header.journal_id);
            check_header(header, *name_seq, id, previous_end)
        })?;

        let len_bytes = match scan.damage.take() {
            None => scan.valid_len,
            // NOTE: damage in the middle of the newest segment also cuts the valid records
            // after it, because after a power loss they can follow a torn write.
            Some(damage) if is_newest && damage.is_torn => {
                cut_torn_tail(&file, path, &scan, &damage)?;
                torn_bytes_cut += scan.file_len - scan.valid_len;
                cut_at = Some((path.clone(), scan.valid_len));
                scan.valid_len
            }
            Some(damage) => return Err(damage.into_error(path, scan.valid_len)),
        };
        file.sync_data()
            .map_err(|e| Error::io("fsync journal segment", path, e))?;

        records += scan.records;
        previous_end = Some((
            Seq(scan.header.first_seq.0 + scan.records),
            Position(
                scan.header.base_position.0 + (len_bytes - HEADER_LEN as u64) + scan.data_bytes,
            ),
        ));
        segments.push(SegmentInfo {
            first_seq: scan.header.first_seq,
            base_position: scan.header.base_position,
            len_bytes,
            data_bytes: scan.data_bytes,
            path: path.clone(),
        });
        if is_newest {
            active = Some((file, scan.records));
        }
    }
    writer::sync_dir(dir, &segments[segments.len() - 1].path)?;

    let (active_file, active_records) = active.expect("the loop ran for the newest segment");
    let newest = &segments[segments.len() - 1];
    let active = OpenSegment {
        first_seq: newest.first_seq,
        path: newest.path.clone(),
        file: Arc::new(active_file),
    };
    Ok(Recovered {
        journal_id: journal_id.expect("the loop ran at least once"),
        head: Seq(newest.first_seq.0 + active_records - 1),
        head_position: newest.end_position(),
        segments,
        records,
        active_records,
        active,
        torn_bytes_cut,
        cut_at,
    })
}

/// Returns the segment files in `dir` with the first seq from their names, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io("list journal directory", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list journal directory", dir, e))?;
        let name = entry.file_name();
        let Some(first_seq) = name.to_str().and_then(parse_segment_name) else {
            log::debug!(
                "journal directory entry ignored: dir={} name={:?}",
                dir.display(),
                name
            );
            continue;
        };
        names.push((first_seq, entry.path()));
    }
    names.sort();
    Ok(names)
}

/// Parses `{first_seq:020}.seg`.
fn parse_segment_name(name: &str) -> Option<Seq> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Seq)
}

/// Removes the newest segment when its header is invalid and the file is too short to
/// contain a record, as a crash during segment creation leaves it. Returns the bytes removed.
fn remove_torn_header(dir: &Path, path: &Path) -> Result<Option<u64>, Error> {
    let file = File::open(path).map_err(|e| Error::io("open journal segment", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("read metadata of journal segment", path, e))?
        .len();
    if len > HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(HEADER_LEN);
    (&file)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read journal segment", path, e))?;
    // A whole header of another format version is no torn write: keep the file, and let
    // the scan report the version.
    if format::other_version(&bytes).is_some() {
        return Ok(None);
    }
    let reason = match SegmentHeader::decode(&bytes) {
        Ok(_) => return Ok(None),
        Err(reason) => reason,
    };

    log::warn!(
        "journal segment with a torn header removed: segment={} bytes={} reason={}",
        path.display(),
        len,
        reason
    );
    std::fs::remove_file(path).map_err(|e| Error::io("remove journal segment", path, e))?;
    writer::sync_dir(dir, path)?;
    Ok(Some(len))
}

/// Starts a journal with a new id and one empty segment whose first record will be
/// `first_seq`.
fn create_journal(
    dir: &Path,
    first_seq: Seq,
    torn_bytes_cut: u64,
    cut_at: Option<(PathBuf, u64)>,
) -> Result<Recovered, Error> {
    let header = SegmentHeader {
        journal_id: writer::new_journal_id(dir)?,
        first_seq,
        base_position: Position(0),
    };
    let (file, path) = writer::create_segment(dir, &header)?;
    log::info!(
        "journal created: dir={} journal_id={:016x} first_seq={}",
        dir.display(),
        header.journal_id,
        first_seq
    );
    Ok(Recovered {
        journal_id: header.journal_id,
        segments: vec![SegmentInfo {
            first_seq,
            base_position: header.base_position,
            len_bytes: HEADER_LEN as u64,
            data_bytes: 0,
            path: path.clone(),
        }],
        head: Seq(first_seq.0 - 1),
        head_position: header.base_position,
        records: 0,
        active_records: 0,
        active: OpenSegment {
            first_seq,
            path,
            file: Arc::new(file),
        },
        torn_bytes_cut,
        cut_at,
    })
}

/// Header and records of one segment, up to its first damaged frame.
struct SegmentScan {
    header: SegmentHeader,
    records: u64,
    /// Bytes up to the end of the last whole, valid record, header included.
    valid_len: u64,
    /// Data bytes that the valid records refer to (tags 18 and 19).
    data_bytes: u64,
    file_len: u64,
    damage: Option<Damage>,
}

/// The first frame of a segment that failed its checks.
struct Damage {
    reason: FormatError,
    /// True when the frame fails the way a torn write leaves it (see `Frame::Torn`).
    is_torn: bool,
    /// True when the next record after the damaged frame is valid. A crash can leave that
    /// too, because unsynced pages reach the disk in any order, but so can a damaged disk.
    is_followed: bool,
}

impl Damage {
    fn into_error(self, path: &Path, offset: u64) -> Error {
        let reason = match self.is_torn {
            true => format!("{} in a segment that is not the newest", self.reason),
            false => self.reason.to_string(),
        };
        corrupt_at(path, offset, reason)
    }
}

fn corrupt_at(path: &Path, offset: u64, reason: String) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// Reads a segment's header, checks it with `check`, and reads every frame up to the first
/// one that fails its checks.
fn scan_segment(
    path: &Path,
    check: impl FnOnce(&SegmentHeader) -> Result<(), String>,
) -> Result<(File, SegmentScan), Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io("open journal segment", path, e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io("read metadata of journal segment", path, e))?
        .len();
    let read_error = |e| Error::io("read journal segment", path, e);
    let mut src = BufReader::with_capacity(READ_BUFFER_BYTES, &file);

    let mut header_bytes = [0u8; HEADER_LEN];
    let available = file_len.min(HEADER_LEN as u64) as usize;
    src.read_exact(&mut header_bytes[..available])
        .map_err(read_error)?;
    if let Some(version) = format::other_version(&header_bytes[..available]) {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
            supported: format::FORMAT_VERSION,
        });
    }
    let header = SegmentHeader::decode(&header_bytes[..available])
        .map_err(|reason| corrupt_at(path, 0, reason.to_string()))?;
    check(&header).map_err(|reason| corrupt_at(path, 0, reason))?;

    let mut scan = SegmentScan {
        header,
        records: 0,
        valid_len: HEADER_LEN as u64,
        data_bytes: 0,
        file_len,
        damage: None,
    };
    let mut expected_seq = header.first_seq;
    loop {
        let remaining = file_len - scan.valid_len;
        match read_frame(&mut src, remaining, expected_seq).map_err(read_error)? {
            Frame::End => break,
            Frame::Record {
                frame_len, data, ..
            } => {
                scan.valid_len += frame_len;
                scan.data_bytes += data.map_or(0, |d| u64::from(d.len));
                scan.records += 1;
                expected_seq = Seq(expected_seq.0 + 1);
            }
            Frame::Torn { reason, frame_len } => {
                let is_followed = match frame_len {
                    Some(len) => {
                        let next_seq = Seq(expected_seq.0 + 1);
                        let next = read_frame(&mut src, remaining - len, next_seq);
                        matches!(next, Ok(Frame::Record { .. }))
                    }
                    None => false,
                };
                scan.damage = Some(Damage {
                    reason,
                    is_torn: true,
                    is_followed,
                });
                break;
            }
            Frame::Invalid(reason) => {
                scan.damage = Some(Damage {
                    reason,
                    is_torn: false,
                    is_followed: false,
                });
                break;
            }
        }
    }
    Ok((file, scan))
}

/// Largest first seq or base position a header may hold, so that adding the records or bytes
/// of one segment to it cannot overflow.
const MAX_HEADER_VALUE: u64 = 1 << 62;

/// Checks a segment header against its file name, the journal id, and the next seq and end
/// position of the segment before it.
fn check_header(
    header: &SegmentHeader,
    name_seq: Seq,
    journal_id: u64,
    previous_end: Option<(Seq, Position)>,
) -> Result<(), String> {
    if header.first_seq.0 == 0 || header.first_seq.0 > MAX_HEADER_VALUE {
        return Err(format!("first_seq {} is out of range", header.first_seq));
    }
    if header.base_position.0 > MAX_HEADER_VALUE {
        return Err(format!(
            "base position {} is out of range",
            header.base_position.0
        ));
    }
    if header.first_seq != name_seq {
        return Err(format!(
            "header first_seq {} does not match the file name",
            header.first_seq
        ));
    }
    if header.journal_id != journal_id {
        return Err(format!(
            "journal id {:016x} differs from {:016x} in the older segments",
            header.journal_id, journal_id
        ));
    }
    let Some((next_seq, end)) = previous_end else {
        return Ok(());
    };
    if header.first_seq != next_seq {
        return Err(format!(
            "first_seq {} does not follow the previous segment, which ends before seq {}",
            header.first_seq, next_seq
        ));
    }
    if header.base_position != end {
        return Err(format!(
            "base position {} does not follow the previous segment, which ends at {}",
            header.base_position.0, end.0
        ));
    }
    Ok(())
}

/// Truncates the newest segment after its last whole record and makes the cut durable.
fn cut_torn_tail(
    file: &File,
    path: &Path,
    scan: &SegmentScan,
    damage: &Damage,
) -> Result<(), Error> {
    log::warn!(
        "journal torn tail cut: segment={} offset={} bytes={} reason={} \
         valid_record_follows={}",
        path.display(),
        scan.valid_len,
        scan.file_len - scan.valid_len,
        damage.reason,
        damage.is_followed
    );
    file.set_len(scan.valid_len)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("truncate journal segment", path, e))
}

/// Reads records in sequence order. `next` returns `None` at the head as it was when the
/// call was made; records appended later are returned by later calls.
///
/// `next` returns `Error::Released` once `release_up_to` removed the segment holding the
/// next record. After an error, the next call opens the segment again and retries the same
/// record.
pub struct Reader {
    inner: Arc<Inner>,
    /// Records up to this seq are skipped.
    after: Seq,
    /// Seq of the frame at `position`.
    next_seq: Seq,
    /// Stream position of the next frame to read.
    position: Position,
    /// First seq of the segment holding the next frame, and the frame's offset in that file.
    /// Positions count referenced data that the file does not hold, so the offset is
    /// tracked apart.
    at: (Seq, u64),
    cursor: Option<Cursor>,
}

/// An open segment file, positioned at the reader's offset.
struct Cursor {
    first_seq: Seq,
    path: PathBuf,
    source: BufReader<BoundedFile>,
}

impl Cursor {
    /// Opens `segment` at byte `offset` of its file.
    fn open(segment: &SegmentInfo, offset: u64) -> Result<Cursor, Error> {
        let file = File::open(&segment.path)
            .map_err(|e| Error::io("open journal segment", &segment.path, e))?;
        let bounded = BoundedFile {
            file,
            offset,
            limit: offset,
        };
        Ok(Cursor {
            first_seq: segment.first_seq,
            path: segment.path.clone(),
            source: BufReader::with_capacity(READ_BUFFER_BYTES, bounded),
        })
    }
}

/// A file read sequentially that never reads at or past `limit`, so the read buffer never
/// contains bytes of a frame that is still being written.
struct BoundedFile {
    file: File,
    offset: u64,
    limit: u64,
}

impl Read for BoundedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.limit.saturating_sub(self.offset);
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if len == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buf[..len], self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

impl Reader {
    pub(super) fn new(inner: Arc<Inner>, after: Seq) -> Result<Reader, Error> {
        let state = inner.state();
        let wanted = Seq(after.0.saturating_add(1));
        let holding = state.segments.partition_point(|s| s.first_seq <= wanted);
        let Some(segment) = holding.checked_sub(1).map(|i| &state.segments[i]) else {
            return Err(Error::Released {
                after,
                first: state.segments[0].first_seq,
            });
        };
        // Opened under the lock, so `release_up_to` cannot remove the file in between.
        let cursor = Cursor::open(segment, HEADER_LEN as u64)?;
        let (next_seq, position) = (segment.first_seq, segment.base_position);
        let at = (segment.first_seq, HEADER_LEN as u64);
        drop(state);

        Ok(Reader {
            inner,
            after,
            next_seq,
            position,
            at,
            cursor: Some(cursor),
        })
    }

    /// Reads records up to the head position `head`, skipping those at or below `after`.
    fn read_next(&mut self, head: Position) -> Result<Option<(Record, Position)>, Error> {
        loop {
            if self.position >= head {
                return Ok(None);
            }
            let end = self.seek()?;
            let Some(cursor) = self.cursor.as_mut() else {
                return Ok(None);
            };
            cursor.source.get_mut().limit = end;

            let remaining = end.saturating_sub(self.at.1);
            let frame = read_frame(&mut cursor.source, remaining, self.next_seq)
                .map_err(|e| Error::io("read journal segment", &cursor.path, e))?;
            let (mut record, frame_len, data) = match frame {
                Frame::Record {
                    record,
                    frame_len,
                    data,
                } => (record, frame_len, data),
                Frame::End => return Ok(None),
                Frame::Torn { reason, .. } | Frame::Invalid(reason) => {
                    return Err(corrupt_at(&cursor.path, self.at.1, reason.to_string()));
                }
            };
            let referred = match data {
                Some(data) if record.seq > self.after => {
                    self.inner.fill_write(&mut record, data)?;
                    u64::from(data.len)
                }
                Some(data) => u64::from(data.len),
                None => 0,
            };
            self.at.1 += frame_len;
            self.position = Position(self.position.0 + frame_len + referred);
            self.next_seq = Seq(self.next_seq.0 + 1);
            if record.seq > self.after {
                return Ok(Some((record, self.position)));
            }
        }
    }

    /// Points the cursor at the segment holding `position`, opening it when the reader
    /// crossed into the next segment or after an error, and returns the length of that
    /// segment's published frames (header included).
    fn seek(&mut self) -> Result<u64, Error> {
        let state = self.inner.state();
        let holding = state
            .segments
            .partition_point(|s| s.base_position <= self.position);
        let Some(segment) = holding.checked_sub(1).map(|i| &state.segments[i]) else {
            return Err(Error::Released {
                after: self.after.max(Seq(self.next_seq.0 - 1)),
                first: state.segments[0].first_seq,
            });
        };
        // The reader enters a segment only at its first frame.
        if segment.first_seq != self.at.0 {
            self.at = (segment.first_seq, HEADER_LEN as u64);
        }
        let is_current = self
            .cursor
            .as_ref()
            .is_some_and(|c| c.first_seq == segment.first_seq);
        if !is_current {
            self.cursor = Some(Cursor::open(segment, self.at.1)?);
        }
        Ok(segment.len_bytes)
    }
}

impl Iterator for Reader {
    type Item = Result<(Record, Position), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let head = self.inner.state().head_position;
        match self.read_next(head) {
            Ok(found) => found.map(Ok),
            Err(e) => {
                // The buffer may hold part of the failed frame; start over from `position`.
                self.cursor = None;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::thread;
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::super::testing::{arb_op, read_all, segment_names, write_op};
    use super::super::{Journal, Op, Recovery, RelPath};
    use super::*;

    const FRAME_100: u64 = 24 + 1 + 4 + 14 + 8 + 4 + 100;
    /// Rolls over after three 100-byte writes.
    const SMALL_SEGMENT: u64 = 44 + 2 * FRAME_100 + 1;

    fn open(dir: &Path, segment_size_bytes: u64) -> Result<(Journal, Recovery), Error> {
        Journal::open(dir, segment_size_bytes)
    }

    /// Writes records 1..=count of 100 bytes each and returns the directory's files.
    fn journal_files(count: u64, segment_size_bytes: u64) -> Vec<(String, Vec<u8>)> {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), segment_size_bytes).unwrap();
        for n in 1..=count {
            journal.append(&write_op(n, 100)).unwrap();
        }
        segment_names(tmp.path())
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(tmp.path().join(&name)).unwrap();
                (name, bytes)
            })
            .collect()
    }

    fn write_files(dir: &Path, files: &[(String, Vec<u8>)]) {
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn seqs(records: &[(Record, Position)]) -> Vec<u64> {
        records.iter().map(|(r, _)| r.seq.0).collect()
    }

    fn expect_corrupt(result: Result<(Journal, Recovery), Error>) -> (PathBuf, u64, String) {
        match result {
            Err(Error::Corrupt {
                path,
                offset,
                reason,
            }) => (path, offset, reason),
            Err(other) => panic!("expected Corrupt, got {other:?}"),
            Ok((_, recovery)) => panic!("expected Corrupt, opened with {recovery:?}"),
        }
    }

    /// Cuts the last record at every byte and checks that recovery keeps the others.
    fn check_every_cut(segment_size_bytes: u64, count: u64) {
        let files = journal_files(count, segment_size_bytes);
        let (last_name, last_bytes) = files.last().unwrap().clone();
        let whole_len = last_bytes.len() as u64 - FRAME_100;

        for kept in 0..FRAME_100 {
            let tmp = tempfile::tempdir().unwrap();
            write_files(tmp.path(), &files);
            let cut = &last_bytes[..(whole_len + kept) as usize];
            std::fs::write(tmp.path().join(&last_name), cut).unwrap();

            let (journal, recovery) = open(tmp.path(), segment_size_bytes).unwrap();
            assert_eq!(recovery.head, Seq(count - 1), "kept {kept}");
            assert_eq!(recovery.records, count - 1, "kept {kept}");
            assert_eq!(recovery.torn_bytes_cut, kept, "kept {kept}");
            assert_eq!(recovery.head_position, Position((count - 1) * FRAME_100));
            let on_disk = std::fs::metadata(tmp.path().join(&last_name))
                .unwrap()
                .len();
            assert_eq!(on_disk, whole_len, "kept {kept}");

            let records = read_all(&journal, Seq(0));
            assert_eq!(
                seqs(&records),
                (1..count).collect::<Vec<_>>(),
                "kept {kept}"
            );
            assert_eq!(records.last().unwrap().0.op, write_op(count - 1, 100));

            let (seq, position) = journal.append(&write_op(99, 100)).unwrap();
            assert_eq!(seq, Seq(count), "kept {kept}");
            assert_eq!(position, Position(count * FRAME_100), "kept {kept}");
            drop(journal);
            let (_, recovery) = open(tmp.path(), segment_size_bytes).unwrap();
            assert_eq!(recovery.head, Seq(count), "kept {kept}");
            assert_eq!(recovery.torn_bytes_cut, 0, "kept {kept}");
        }
    }

    #[test]
    fn replay_torn_tail_every_byte() {
        check_every_cut(1 << 20, 5);
    }

    #[test]
    fn replay_torn_tail_every_byte_of_segment_start() {
        // Record 7 is the first record of the third segment.
        check_every_cut(SMALL_SEGMENT, 7);
    }

    #[test]
    fn replay_flipped_byte_in_last_record() {
        let files = journal_files(5, 1 << 20);
        let (name, bytes) = &files[0];
        let start = bytes.len() - FRAME_100 as usize;
        for i in start..bytes.len() {
            let tmp = tempfile::tempdir().unwrap();
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            std::fs::write(tmp.path().join(name), &damaged).unwrap();

            let (journal, recovery) = open(tmp.path(), 1 << 20).unwrap();
            assert_eq!(recovery.head, Seq(4), "byte {i}");
            assert_eq!(recovery.torn_bytes_cut, FRAME_100, "byte {i}");
            assert_eq!(seqs(&read_all(&journal, Seq(0))), [1, 2, 3, 4], "byte {i}");
        }
    }

    #[test]
    fn replay_flipped_byte_in_older_segment() {
        let files = journal_files(8, SMALL_SEGMENT);
        assert_eq!(files.len(), 3);
        let tmp = tempfile::tempdir().unwrap();
        let mut damaged = files.clone();
        // A payload byte of record 5, the middle record of the second segment.
        let record_5 = 44 + FRAME_100 as usize;
        damaged[1].1[record_5 + 60] ^= 0x01;
        write_files(tmp.path(), &damaged);

        let (path, offset, reason) = expect_corrupt(open(tmp.path(), SMALL_SEGMENT));
        assert_eq!(path, tmp.path().join("00000000000000000004.seg"));
        assert_eq!(offset, record_5 as u64);
        assert!(reason.contains("CRC32C mismatch"), "{reason}");
        // Nothing was cut.
        let on_disk = std::fs::read(tmp.path().join(&files[1].0)).unwrap();
        assert_eq!(on_disk, damaged[1].1);
    }

    #[test]
    fn replay_cut_older_segment_is_corrupt() {
        let files = journal_files(8, SMALL_SEGMENT);
        let tmp = tempfile::tempdir().unwrap();
        let mut damaged = files.clone();
        let len = damaged[0].1.len();
        damaged[0].1.truncate(len - 1);
        write_files(tmp.path(), &damaged);

        let (path, offset, reason) = expect_corrupt(open(tmp.path(), SMALL_SEGMENT));
        assert_eq!(path, tmp.path().join("00000000000000000001.seg"));
        assert_eq!(offset, 44 + 2 * FRAME_100);
        assert!(reason.contains("not the newest"), "{reason}");
    }

    #[test]
    fn replay_damage_in_newest_cuts_rest() {
        let files = journal_files(5, 1 << 20);
        let tmp = tempfile::tempdir().unwrap();
        let mut damaged = files.clone();
        let record_3 = 44 + 2 * FRAME_100 as usize;
        damaged[0].1[record_3 + 30] ^= 0x01;
        write_files(tmp.path(), &damaged);

        let (journal, recovery) = open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(recovery.head, Seq(2));
        assert_eq!(recovery.torn_bytes_cut, 3 * FRAME_100);
        assert_eq!(seqs(&read_all(&journal, Seq(0))), [1, 2]);
    }

    #[test]
    fn replay_undecodable_op_is_corrupt() {
        let files = journal_files(2, 1 << 20);
        let tmp = tempfile::tempdir().unwrap();
        let mut damaged = files.clone();
        // Give record 2 an unknown op tag and a matching CRC, which no torn write produces.
        let record_2 = 44 + FRAME_100 as usize;
        let bytes = &mut damaged[0].1;
        bytes[record_2 + 24] = 200;
        let crc = crc32c::crc32c(&bytes[record_2 + 8..record_2 + FRAME_100 as usize]);
        bytes[record_2 + 4..record_2 + 8].copy_from_slice(&crc.to_le_bytes());
        write_files(tmp.path(), &damaged);

        let (path, offset, reason) = expect_corrupt(open(tmp.path(), 1 << 20));
        assert_eq!(path, tmp.path().join("00000000000000000001.seg"));
        assert_eq!(offset, record_2 as u64);
        assert_eq!(reason, "unknown op tag 200");
    }

    #[test]
    fn replay_rejects_foreign_segment() {
        let first = journal_files(3, SMALL_SEGMENT);
        let second = journal_files(6, SMALL_SEGMENT);
        let tmp = tempfile::tempdir().unwrap();
        // Segment 4 of another journal after segment 1 of this one.
        write_files(tmp.path(), &[first[0].clone(), second[1].clone()]);
        let (path, offset, reason) = expect_corrupt(open(tmp.path(), SMALL_SEGMENT));
        assert_eq!(path, tmp.path().join("00000000000000000004.seg"));
        assert_eq!(offset, 0);
        assert!(reason.contains("journal id"), "{reason}");
    }

    #[test]
    fn replay_rejects_missing_segment() {
        let files = journal_files(8, SMALL_SEGMENT);
        let tmp = tempfile::tempdir().unwrap();
        write_files(tmp.path(), &[files[0].clone(), files[2].clone()]);
        let (path, offset, reason) = expect_corrupt(open(tmp.path(), SMALL_SEGMENT));
        assert_eq!(path, tmp.path().join("00000000000000000007.seg"));
        assert_eq!(offset, 0);
        assert!(reason.contains("does not follow"), "{reason}");
    }

    #[test]
    fn replay_rejects_renamed_segment() {
        let files = journal_files(3, 1 << 20);
        let tmp = tempfile::tempdir().unwrap();
        let renamed = ("00000000000000000002.seg".to_string(), files[0].1.clone());
        write_files(tmp.path(), &[renamed]);
        let (_, offset, reason) = expect_corrupt(open(tmp.path(), 1 << 20));
        assert_eq!(offset, 0);
        assert!(reason.contains("does not match the file name"), "{reason}");
    }

    #[test]
    fn replay_removes_torn_newest_header() {
        let files = journal_files(4, SMALL_SEGMENT);
        assert_eq!(files.len(), 2);
        for kept in [0, 1, 20, 43] {
            let tmp = tempfile::tempdir().unwrap();
            let mut damaged = files.clone();
            damaged[1].1 = damaged[1].1[..kept].to_vec();
            write_files(tmp.path(), &damaged);

            let (journal, recovery) = open(tmp.path(), SMALL_SEGMENT).unwrap();
            assert_eq!(recovery.head, Seq(3), "kept {kept}");
            assert_eq!(recovery.segments, 1, "kept {kept}");
            assert_eq!(recovery.torn_bytes_cut, kept as u64, "kept {kept}");
            assert_eq!(segment_names(tmp.path()), ["00000000000000000001.seg"]);
            assert_eq!(journal.append(&write_op(4, 100)).unwrap().0, Seq(4));
            assert_eq!(
                segment_names(tmp.path()),
                ["00000000000000000001.seg", "00000000000000000004.seg"]
            );
        }
    }

    #[test]
    fn replay_recreates_lone_torn_segment() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), 1 << 20).unwrap();
        let old_id = journal.id();
        drop(journal);
        let path = tmp.path().join("00000000000000000001.seg");
        let header = std::fs::read(&path).unwrap();
        std::fs::write(&path, &header[..30]).unwrap();

        let (journal, recovery) = open(tmp.path(), 1 << 20).unwrap();
        assert_ne!(journal.id(), old_id);
        assert_eq!(recovery.head, Seq(0));
        assert_eq!(recovery.torn_bytes_cut, 30);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 44);
        assert_eq!(journal.append(&write_op(1, 1)).unwrap().0, Seq(1));
    }

    #[test]
    fn replay_rejects_damaged_header_with_records() {
        let files = journal_files(2, 1 << 20);
        let tmp = tempfile::tempdir().unwrap();
        let mut damaged = files.clone();
        damaged[0].1[20] ^= 0xff;
        write_files(tmp.path(), &damaged);
        let (_, offset, reason) = expect_corrupt(open(tmp.path(), 1 << 20));
        assert_eq!(offset, 0);
        assert!(reason.contains("header CRC32C mismatch"), "{reason}");
    }

    #[test]
    fn replay_keeps_segment_of_other_version() {
        let with_records = journal_files(2, 1 << 20).remove(0).1;
        let header_only = segment_with(&[]).0;
        for mut bytes in [with_records, header_only] {
            bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..40]);
            bytes[40..44].copy_from_slice(&crc.to_le_bytes());
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("00000000000000000001.seg");
            std::fs::write(&path, &bytes).unwrap();

            match open(tmp.path(), 1 << 20) {
                Err(Error::UnsupportedVersion {
                    path: p,
                    version,
                    supported,
                }) => {
                    assert_eq!(p, path);
                    assert_eq!(version, 2);
                    assert_eq!(supported, 1);
                }
                Err(other) => panic!("expected UnsupportedVersion, got {other:?}"),
                Ok((_, recovery)) => panic!("opened a version 2 segment: {recovery:?}"),
            }
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn replay_ignores_other_files() {
        let files = journal_files(2, 1 << 20);
        let tmp = tempfile::tempdir().unwrap();
        write_files(tmp.path(), &files);
        std::fs::write(tmp.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(tmp.path().join("1.seg"), b"x").unwrap();
        let (_, recovery) = open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(recovery.head, Seq(2));
        assert_eq!(recovery.segments, 1);
    }

    #[test]
    fn reader_crosses_segments_from_every_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), SMALL_SEGMENT).unwrap();
        for n in 1..=20 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        assert_eq!(segment_names(tmp.path()).len(), 7);
        for after in 0..=21 {
            let records = read_all(&journal, Seq(after));
            let expected: Vec<u64> = (after + 1..=20).collect();
            assert_eq!(seqs(&records), expected, "after {after}");
            for (record, position) in &records {
                assert_eq!(record.op, write_op(record.seq.0, 100));
                assert_eq!(*position, Position(record.seq.0 * FRAME_100));
            }
        }
    }

    #[test]
    fn reader_returns_later_records_on_later_calls() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), SMALL_SEGMENT).unwrap();
        let mut reader = journal.read_after(Seq(0)).unwrap();
        assert!(reader.next().is_none());
        for n in 1..=7 {
            journal.append(&write_op(n, 100)).unwrap();
            let (record, position) = reader.next().unwrap().unwrap();
            assert_eq!(record.seq, Seq(n));
            assert_eq!(position, Position(n * FRAME_100));
            assert!(reader.next().is_none());
        }
    }

    #[test]
    fn reader_checks_crc() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), 1 << 20).unwrap();
        for n in 1..=3 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        let path = tmp.path().join("00000000000000000001.seg");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let record_2 = 44 + FRAME_100;
        file.write_all_at(&[0xee], record_2 + 50).unwrap();

        let mut reader = journal.read_after(Seq(0)).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().0.seq, Seq(1));
        for _ in 0..2 {
            match reader.next() {
                Some(Err(Error::Corrupt {
                    path: p,
                    offset,
                    reason,
                })) => {
                    assert_eq!(p, path);
                    assert_eq!(offset, record_2);
                    assert!(reason.contains("CRC32C mismatch"), "{reason}");
                }
                other => panic!("expected Corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn read_after_released_records_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), SMALL_SEGMENT).unwrap();
        for n in 1..=7 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        assert_eq!(journal.release_up_to(Seq(5)).unwrap(), 1);
        for after in [0, 1, 2] {
            match journal.read_after(Seq(after)) {
                Err(Error::Released { after: a, first }) => {
                    assert_eq!(a, Seq(after));
                    assert_eq!(first, Seq(4));
                }
                Err(other) => panic!("expected Released, got {other:?}"),
                Ok(_) => panic!("expected Released for after {after}"),
            }
        }
        assert_eq!(seqs(&read_all(&journal, Seq(3))), [4, 5, 6, 7]);
    }

    #[test]
    fn reader_behind_release_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), SMALL_SEGMENT).unwrap();
        for n in 1..=7 {
            journal.append(&write_op(n, 100)).unwrap();
        }
        let mut reader = journal.read_after(Seq(0)).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().0.seq, Seq(1));
        assert_eq!(journal.release_up_to(Seq(6)).unwrap(), 2);
        for _ in 0..2 {
            match reader.next() {
                Some(Err(Error::Released { after, first })) => {
                    assert_eq!(after, Seq(1));
                    assert_eq!(first, Seq(7));
                }
                other => panic!("expected Released, got {other:?}"),
            }
        }
    }

    #[test]
    fn reader_follows_concurrent_appenders() {
        const THREADS: u64 = 4;
        const PER_THREAD: u64 = 300;
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), 4096).unwrap();
        let journal = Arc::new(journal);

        let appenders: Vec<_> = (0..THREADS)
            .map(|t| {
                let journal = Arc::clone(&journal);
                thread::spawn(move || {
                    let path = RelPath::from_bytes(format!("t{t}").as_bytes()).unwrap();
                    for i in 0..PER_THREAD {
                        let op = Op::Write {
                            path: path.clone(),
                            offset: i,
                            data: vec![t as u8; (i % 50) as usize],
                        };
                        journal.append(&op).unwrap();
                    }
                })
            })
            .collect();

        let total = THREADS * PER_THREAD;
        let mut reader = journal.read_after(Seq(0)).unwrap();
        let mut last = (Seq(0), Position(0));
        let mut next_offset: HashMap<Vec<u8>, u64> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while last.0 < Seq(total) {
            assert!(Instant::now() < deadline, "reader stuck at {last:?}");
            match reader.next() {
                Some(item) => {
                    let (record, position) = item.unwrap();
                    assert_eq!(record.seq, Seq(last.0.0 + 1));
                    let frame_len = 24 + format::payload_len(&record.op) as u64;
                    assert_eq!(position, Position(last.1.0 + frame_len));
                    let Op::Write { path, offset, .. } = &record.op else {
                        panic!("unexpected op {:?}", record.op);
                    };
                    let expected = next_offset.entry(path.as_bytes().to_vec()).or_default();
                    assert_eq!(*offset, *expected, "order of {path:?}");
                    *expected += 1;
                    last = (record.seq, position);
                    if last.0.0.is_multiple_of(100) {
                        journal.release_up_to(last.0).unwrap();
                    }
                }
                None => {
                    journal.wait_beyond(last.0, Duration::from_secs(1));
                }
            }
        }
        for appender in appenders {
            appender.join().unwrap();
        }
        assert!(reader.next().is_none());
        assert_eq!(journal.head(), last);
        assert_eq!(next_offset.len(), THREADS as usize);
        assert!(next_offset.values().all(|n| *n == PER_THREAD));
    }

    /// Returns the segment of a fresh journal holding `ops`, and each record's end offset.
    fn segment_with(ops: &[Op]) -> (Vec<u8>, Vec<u64>) {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), 1 << 20).unwrap();
        let ends = ops
            .iter()
            .map(|op| 44 + journal.append(op).unwrap().1.0)
            .collect();
        let bytes = std::fs::read(tmp.path().join("00000000000000000001.seg")).unwrap();
        (bytes, ends)
    }

    /// Returns the files of a fresh journal of `ops` with segments of `segment_size_bytes`,
    /// oldest first, and the end offset within its segment of every record, per segment.
    fn segments_with(ops: &[Op], segment_size_bytes: u64) -> Vec<(String, Vec<u8>, Vec<u64>)> {
        let tmp = tempfile::tempdir().unwrap();
        let (journal, _) = open(tmp.path(), segment_size_bytes).unwrap();
        for op in ops {
            journal.append(op).unwrap();
        }
        segment_names(tmp.path())
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(tmp.path().join(&name)).unwrap();
                let mut ends = Vec::new();
                let mut offset = HEADER_LEN as u64;
                while offset < bytes.len() as u64 {
                    let len: [u8; 4] = bytes[offset as usize..offset as usize + 4]
                        .try_into()
                        .unwrap();
                    offset += FRAME_HEADER_LEN as u64 + u64::from(u32::from_le_bytes(len));
                    ends.push(offset);
                }
                (name, bytes, ends)
            })
            .collect()
    }

    /// Checks every record read back against the segment bytes it came from, independently of
    /// the reader: the stored CRC32C matches the frame, and the seq follows the one before.
    fn assert_records_match_bytes(dir: &Path, records: &[(Record, Position)]) {
        let mut files: Vec<(u64, Vec<u8>)> = segment_names(dir)
            .into_iter()
            .map(|name| {
                let bytes = std::fs::read(dir.join(&name)).unwrap();
                let base = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
                (base, bytes)
            })
            .collect();
        files.sort();
        for (record, position) in records {
            let frame_len = (FRAME_HEADER_LEN + format::payload_len(&record.op)) as u64;
            let start = position.0 - frame_len;
            let (base, bytes) = files
                .iter()
                .rev()
                .find(|(base, _)| *base <= start)
                .expect("a segment holds the record");
            let offset = (HEADER_LEN as u64 + start - base) as usize;
            let frame = &bytes[offset..offset + frame_len as usize];
            let stored = u32::from_le_bytes(frame[4..8].try_into().unwrap());
            assert_eq!(stored, crc32c::crc32c(&frame[8..]), "seq {}", record.seq);
            let seq = u64::from_le_bytes(frame[8..16].try_into().unwrap());
            assert_eq!(seq, record.seq.0);
        }
        for pair in records.windows(2) {
            assert_eq!(pair[1].0.seq.0, pair[0].0.seq.0 + 1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn recovery_survives_arbitrary_segment(
            header_kept in any::<bool>(),
            bytes in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            // Half of the cases start with a valid header, so that the frames get scanned.
            let mut file = match header_kept {
                true => segment_with(&[]).0,
                false => Vec::new(),
            };
            file.extend_from_slice(&bytes);
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("00000000000000000001.seg");
            std::fs::write(&path, &file).unwrap();

            match open(tmp.path(), 1 << 20) {
                Ok((journal, recovery)) => {
                    let records = read_all(&journal, Seq(0));
                    prop_assert_eq!(records.len() as u64, recovery.records);
                    assert_records_match_bytes(tmp.path(), &records);
                }
                Err(Error::Corrupt { path: p, .. }) => {
                    prop_assert_eq!(p, path.clone());
                    prop_assert_eq!(std::fs::read(&path).unwrap(), file);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn recovery_after_flips_keeps_valid_prefix(
            ops in prop::collection::vec(arb_op(), 1..8),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let files = segments_with(&ops, 256);
            let mut damaged = files.clone();
            // Flip bytes in one segment only, so that the expected outcome is unique.
            let segment = flips[0].0.index(files.len());
            let len = files[segment].1.len();
            for (at, mask) in &flips {
                damaged[segment].1[at.index(len)] ^= mask;
            }
            // Two flips of one byte may cancel out, so the damage starts at the first byte
            // that differs.
            let first = files[segment]
                .1
                .iter()
                .zip(&damaged[segment].1)
                .position(|(a, b)| a != b);
            prop_assume!(first.is_some());
            let first = first.unwrap();
            let tmp = tempfile::tempdir().unwrap();
            for (name, bytes, _) in &damaged {
                std::fs::write(tmp.path().join(name), bytes).unwrap();
            }
            let records_before: usize = files[..segment].iter().map(|f| f.2.len()).sum();
            let ends = &files[segment].2;
            let whole_in_segment = ends.iter().filter(|end| **end <= first as u64).count();
            let is_newest = segment + 1 == files.len();
            let in_header = first < HEADER_LEN;
            let path = tmp.path().join(&files[segment].0);

            match open(tmp.path(), 256) {
                Ok((journal, recovery)) => {
                    prop_assert!(is_newest, "damage in an older segment was accepted");
                    // A damaged header is cut only from a newest segment without records,
                    // which a crash while creating it leaves.
                    prop_assert!(!in_header || ends.is_empty(), "a damaged header was accepted");
                    let kept = records_before + whole_in_segment;
                    prop_assert_eq!(recovery.head, Seq(kept as u64));
                    let records = read_all(&journal, Seq(0));
                    let read: Vec<Op> = records.iter().map(|(r, _)| r.op.clone()).collect();
                    prop_assert_eq!(&read[..], &ops[..kept]);
                    assert_records_match_bytes(tmp.path(), &records);
                }
                Err(Error::Corrupt { path: p, offset, .. }) => {
                    prop_assert_eq!(p, path.clone());
                    prop_assert!(in_header || !is_newest, "the newest segment's tail was not cut");
                    let expected = match in_header {
                        true => 0,
                        false => ends[..whole_in_segment]
                            .last()
                            .copied()
                            .unwrap_or(HEADER_LEN as u64),
                    };
                    prop_assert_eq!(offset, expected);
                    prop_assert_eq!(std::fs::read(&path).unwrap(), damaged[segment].1.clone());
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn recovery_of_cut_journal_keeps_prefix(
            ops in prop::collection::vec(arb_op(), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            // The journal as one byte stream: segments in order, cut at one byte, with the
            // segments after the cut removed, as a lost tail of a disk would leave it.
            let files = segments_with(&ops, 256);
            let total: usize = files.iter().map(|f| f.1.len()).sum();
            let mut kept_bytes = cut.index(total + 1);
            let tmp = tempfile::tempdir().unwrap();
            let mut whole = 0;
            for (name, bytes, ends) in &files {
                if kept_bytes == 0 {
                    break;
                }
                let kept = kept_bytes.min(bytes.len());
                std::fs::write(tmp.path().join(name), &bytes[..kept]).unwrap();
                whole += ends.iter().filter(|end| **end <= kept as u64).count();
                kept_bytes -= kept;
            }

            let (journal, recovery) = open(tmp.path(), 256).unwrap();
            prop_assert_eq!(recovery.head, Seq(whole as u64));
            let records = read_all(&journal, Seq(0));
            let read: Vec<Op> = records.iter().map(|(r, _)| r.op.clone()).collect();
            prop_assert_eq!(&read[..], &ops[..whole]);
            assert_records_match_bytes(tmp.path(), &records);
        }

        #[test]
        fn scanner_cuts_arbitrary_garbage(
            ops in prop::collection::vec(arb_op(), 1..6),
            garbage in prop::collection::vec(any::<u8>(), 1..300),
        ) {
            let (mut bytes, _) = segment_with(&ops);
            bytes.extend_from_slice(&garbage);
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join("00000000000000000001.seg"), &bytes).unwrap();

            let (journal, recovery) = open(tmp.path(), 1 << 20).unwrap();
            prop_assert_eq!(recovery.head, Seq(ops.len() as u64));
            prop_assert_eq!(recovery.torn_bytes_cut, garbage.len() as u64);
            let read: Vec<Op> = read_all(&journal, Seq(0)).into_iter().map(|(r, _)| r.op).collect();
            prop_assert_eq!(read, ops);
        }

        #[test]
        fn scanner_survives_truncation_and_garbage(
            ops in prop::collection::vec(arb_op(), 1..6),
            cut in any::<prop::sample::Index>(),
            garbage in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            let (bytes, ends) = segment_with(&ops);
            let kept = cut.index(bytes.len() + 1);
            let mut damaged = bytes[..kept].to_vec();
            damaged.extend_from_slice(&garbage);
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(tmp.path().join("00000000000000000001.seg"), &damaged).unwrap();

            match open(tmp.path(), 1 << 20) {
                Ok((journal, recovery)) => {
                    // Garbage that happens to repeat the cut bytes makes their records whole
                    // again, so count the records within the bytes both files share.
                    let shared = bytes
                        .iter()
                        .zip(&damaged)
                        .take_while(|(a, b)| a == b)
                        .count();
                    let whole = ends.iter().filter(|end| **end <= shared as u64).count();
                    prop_assert_eq!(recovery.head, Seq(whole as u64));
                    let read: Vec<Op> =
                        read_all(&journal, Seq(0)).into_iter().map(|(r, _)| r.op).collect();
                    prop_assert_eq!(&read[..], &ops[..whole]);
                }
                // Garbage in place of a cut header, on a file longer than a header, is
                // indistinguishable from a damaged header.
                Err(Error::Corrupt { offset, .. }) => {
                    prop_assert!(kept < 44);
                    prop_assert!(damaged.len() > 44);
                    prop_assert_eq!(offset, 0);
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
        }

        #[test]
        fn frame_reader_survives_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..200),
            extra in 0u64..300,
        ) {
            let remaining = bytes.len() as u64 + extra;
            let frame = read_frame(&mut &bytes[..], remaining, Seq(1)).unwrap();
            let is_record = matches!(frame, Frame::Record { .. });
            prop_assert!(!is_record, "random bytes passed every check");
        }
    }
}
