//! Byte layout of journal segments: the segment header, the record frame and the op encoding.
//!
//! The writer encodes with these functions and the reader decodes with them; nothing here
//! touches a file. All integers are little-endian. The layout is also described, with a hex
//! example, in docs/FORMAT.md.
//!
//! A segment is one header followed by frames, back to back:
//!
//! ```text
//! segment header (44 bytes)
//! +----------+---------+------------+------------+-----------+---------------+--------+
//! | magic    | version | header_len | journal_id | first_seq | base_position | crc32c |
//! | 8 bytes  | u32     | u32 (=44)  | u64        | u64       | u64           | u32    |
//! +----------+---------+------------+------------+-----------+---------------+--------+
//!  0          8         12           16           24          32              40     44
//!
//! record frame (24 + payload_len bytes)
//! +-------------+--------+-----+-----------------+---------------------------+
//! | payload_len | crc32c | seq | committed_at_ns | payload (encoded Op)      |
//! | u32         | u32    | u64 | u64             | payload_len bytes         |
//! +-------------+--------+-----+-----------------+---------------------------+
//!  0             4        8     16                24
//!                         \___________ covered by the frame's crc32c ________/
//! ```
//!
//! The header's CRC32C covers its first 40 bytes. `magic` is `LMJRNL\0\x01`. The stream
//! position of a frame is `base_position` plus the frame bytes before it in the segment and
//! the data bytes those frames refer to (tag 18), so headers never count toward a `Position`
//! and a write counts its data once, whether the frame carries it or refers to it.
//!
//! The payload is one tag byte followed by the op's fields in declaration order. Integers take
//! their natural width, byte strings and paths are a u32 length followed by the bytes, and an
//! `Option` is a flag byte (0 = `None`, 1 = `Some`) followed by the value when present. A
//! `Timestamp` is an i64 of seconds followed by a u32 of nanoseconds.
//!
//! | tag | op          | fields after the tag                                    |
//! |-----|-------------|---------------------------------------------------------|
//! | 1   | Write       | path, offset u64, data bytes                            |
//! | 2   | Create      | path, mode u32, uid u32, gid u32                        |
//! | 3   | Mknod       | path, mode u32, rdev u64, uid u32, gid u32              |
//! | 4   | Mkdir       | path, mode u32, uid u32, gid u32                        |
//! | 5   | Symlink     | path, target bytes, uid u32, gid u32                    |
//! | 6   | Link        | existing path, path                                     |
//! | 7   | Unlink      | path                                                    |
//! | 8   | Rmdir       | path                                                    |
//! | 9   | Rename      | from path, to path, flags u32                           |
//! | 10  | Truncate    | path, size u64                                          |
//! | 11  | SetMode     | path, mode u32                                          |
//! | 12  | SetOwner    | path, uid Option<u32>, gid Option<u32>                  |
//! | 13  | SetTimes    | path, atime Option<Timestamp>, mtime Option<Timestamp>  |
//! | 14  | Fallocate   | path, mode i32, offset u64, length u64                  |
//! | 15  | SetXattr    | path, name bytes, value bytes, flags i32                |
//! | 16  | RemoveXattr | path, name bytes                                        |
//! | 17  | CloseWrite  | path                                                    |
//! | 18  | Write by reference, old | path, offset u64, length u32, data crc32c u32    |
//! | 19  | Write by reference | as tag 18, then ino u64, generation Option<u32>     |
//!
//! Tag 19 is a write whose data the frame does not carry: `length` bytes at `offset` of the
//! backing file with inode number `ino` and inode generation `generation` (absent where the
//! filesystem has none), with the CRC32C `data crc32c`. The journal keeps the bytes in
//! memory until every mirror confirmed the record. A reader that no longer finds them there
//! reads them from the file at the path, and uses them only if that file has the recorded
//! inode number and generation and the bytes have the CRC. Tag 18 is the same write
//! without the file's identity, as releases before tag 19 wrote it. It is still decoded,
//! but its data is never read back, because CRC32C cannot tell forged bytes in another
//! file from the written ones. Neither tag occurs in S3 journal objects, which always carry
//! the data (tag 1).

use super::Position;
use super::identity::FileIdentity;
use super::record::{Op, Record, RelPath, Seq, Timestamp};

/// First 8 bytes of every segment file.
pub(super) const MAGIC: [u8; 8] = *b"LMJRNL\0\x01";

/// Version written in new segment headers; the only version this code reads.
pub(super) const FORMAT_VERSION: u32 = 1;

/// Size of the segment header in bytes, CRC included.
pub(super) const HEADER_LEN: usize = 44;

/// Size of the fixed part of a record frame (payload_len, crc32c, seq, committed_at_ns).
pub(super) const FRAME_HEADER_LEN: usize = 24;

/// Maximum size in bytes of one encoded op (the frame payload).
pub(super) const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Reason that bytes read from a segment are not a valid header or record. Its text becomes
/// the `reason` of `Error::Corrupt`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("segment header needs {HEADER_LEN} bytes but the file has {len}")]
    ShortHeader { len: u64 },
    #[error("invalid magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported format version {0}, expected {FORMAT_VERSION}")]
    UnsupportedVersion(u32),
    #[error("invalid header length {0}, expected {HEADER_LEN}")]
    BadHeaderLength(u32),
    #[error("header CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderCrcMismatch { stored: u32, computed: u32 },
    #[error("record needs {needed} bytes but only {available} remain")]
    Incomplete { needed: u64, available: u64 },
    #[error("invalid payload length {0}, expected 1 to {MAX_PAYLOAD_BYTES}")]
    BadPayloadLength(u32),
    #[error("record CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("expected seq {expected}, found {found}")]
    SeqMismatch { expected: Seq, found: Seq },
    #[error("unknown op tag {0}")]
    UnknownTag(u8),
    #[error("payload ends inside a field")]
    PayloadTruncated,
    #[error("{0} bytes after the end of the op")]
    TrailingBytes(usize),
    #[error("invalid path {0:?}")]
    InvalidPath(String),
    #[error("invalid option flag {0}, expected 0 or 1")]
    InvalidOptionFlag(u8),
    #[error("a write by reference (tag 18 or 19) outside a journal segment")]
    ReferenceOutsideSegment,
}

/// Tag of a write whose data stays in the backing file, naming the file by path only. Only
/// journals written before [`WRITE_REF_TAG`] existed contain it.
const PATH_ONLY_WRITE_REF_TAG: u8 = 18;

/// Tag of a write whose data stays in the backing file, naming the file by path and
/// identity.
const WRITE_REF_TAG: u8 = 19;

/// The data that a tag-18 or tag-19 frame refers to instead of carrying it: `len` bytes at
/// the write's offset in the backing file `file`, whose CRC32C is `crc`. `file` is `None`
/// for tag 18, which did not record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DataRef {
    pub len: u32,
    pub crc: u32,
    pub file: Option<FileIdentity>,
}

/// The fixed fields at the start of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SegmentHeader {
    /// Random id chosen when the journal was created, the same in all of its segments.
    pub journal_id: u64,
    /// Sequence number of the first record in the segment (or of the next record to be
    /// written, while the segment is empty).
    pub first_seq: Seq,
    /// Stream position at the start of the segment's first frame.
    pub base_position: Position,
}

impl SegmentHeader {
    /// Encodes the header, CRC included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        bytes[16..24].copy_from_slice(&self.journal_id.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.first_seq.0.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.base_position.0.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[..40]);
        bytes[40..44].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// Decodes and checks a header from the first bytes of a segment file.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
        let Some(bytes) = bytes.get(..HEADER_LEN) else {
            return Err(FormatError::ShortHeader {
                len: bytes.len() as u64,
            });
        };
        let magic: [u8; 8] = array_at(bytes, 0);
        if magic != MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        let version = u32::from_le_bytes(array_at(bytes, 8));
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let header_len = u32::from_le_bytes(array_at(bytes, 12));
        if header_len as usize != HEADER_LEN {
            return Err(FormatError::BadHeaderLength(header_len));
        }
        let stored = u32::from_le_bytes(array_at(bytes, 40));
        let computed = crc32c::crc32c(&bytes[..40]);
        if stored != computed {
            return Err(FormatError::HeaderCrcMismatch { stored, computed });
        }

        Ok(SegmentHeader {
            journal_id: u64::from_le_bytes(array_at(bytes, 16)),
            first_seq: Seq(u64::from_le_bytes(array_at(bytes, 24))),
            base_position: Position(u64::from_le_bytes(array_at(bytes, 32))),
        })
    }
}

/// Returns the version of a well-formed header of another format version: the magic, the
/// length and the CRC32C as this version lays them out, and a version other than this one
/// (and other than 0, which a torn write leaves). Such a segment comes from another
/// logmirror release, never from a crash.
pub(super) fn other_version(bytes: &[u8]) -> Option<u32> {
    let bytes = bytes.get(..HEADER_LEN)?;
    let version = u32::from_le_bytes(array_at(bytes, 8));
    let header_len = u32::from_le_bytes(array_at(bytes, 12));
    let stored = u32::from_le_bytes(array_at(bytes, 40));
    let is_well_formed = array_at::<8>(bytes, 0) == MAGIC
        && header_len as usize == HEADER_LEN
        && stored == crc32c::crc32c(&bytes[..40]);
    let is_other = version != FORMAT_VERSION && version != 0;
    (is_well_formed && is_other).then_some(version)
}

/// The fixed part of a record frame, as read, before any check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FrameHeader {
    pub payload_len: u32,
    pub crc: u32,
    pub seq: Seq,
    pub committed_at_ns: u64,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            payload_len: u32::from_le_bytes(array_at(bytes, 0)),
            crc: u32::from_le_bytes(array_at(bytes, 4)),
            seq: Seq(u64::from_le_bytes(array_at(bytes, 8))),
            committed_at_ns: u64::from_le_bytes(array_at(bytes, 16)),
        }
    }

    /// Rejects a payload length that no writer produces: zero (every op has a tag) or
    /// above the maximum.
    pub fn check_payload_len(&self) -> Result<(), FormatError> {
        let len = self.payload_len as usize;
        if len == 0 || len > MAX_PAYLOAD_BYTES {
            return Err(FormatError::BadPayloadLength(self.payload_len));
        }
        Ok(())
    }

    /// Returns the whole frame's size in bytes, which is how far it advances the position.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// Checks the frame CRC, which covers the header bytes after the CRC field and the payload.
pub(super) fn check_crc(
    header_bytes: &[u8; FRAME_HEADER_LEN],
    payload: &[u8],
) -> Result<(), FormatError> {
    let stored = u32::from_le_bytes(array_at(header_bytes, 4));
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[8..]), payload);
    if stored != computed {
        return Err(FormatError::CrcMismatch { stored, computed });
    }
    Ok(())
}

/// Returns the encoded size of `op` in bytes, which `encode_frame` writes as payload_len.
pub(super) fn payload_len(op: &Op) -> usize {
    let path = |p: &RelPath| 4 + p.as_bytes().len();
    let bytes = |b: &[u8]| 4 + b.len();
    let time = |t: &Option<Timestamp>| if t.is_some() { 13 } else { 1 };
    let id = |v: &Option<u32>| if v.is_some() { 5 } else { 1 };

    let fields = match op {
        Op::Write { path: p, data, .. } => path(p) + 8 + bytes(data),
        Op::Create { path: p, .. } | Op::Mkdir { path: p, .. } => path(p) + 12,
        Op::Mknod { path: p, .. } => path(p) + 20,
        Op::Symlink {
            path: p, target, ..
        } => path(p) + bytes(target) + 8,
        Op::Link { existing, path: p } => path(existing) + path(p),
        Op::Unlink { path: p } | Op::Rmdir { path: p } | Op::CloseWrite { path: p } => path(p),
        Op::Rename { from, to, .. } => path(from) + path(to) + 4,
        Op::Truncate { path: p, .. } => path(p) + 8,
        Op::SetMode { path: p, .. } => path(p) + 4,
        Op::SetOwner { path: p, uid, gid } => path(p) + id(uid) + id(gid),
        Op::SetTimes {
            path: p,
            atime,
            mtime,
        } => path(p) + time(atime) + time(mtime),
        Op::Fallocate { path: p, .. } => path(p) + 20,
        Op::SetXattr {
            path: p,
            name,
            value,
            ..
        } => path(p) + bytes(name) + bytes(value) + 4,
        Op::RemoveXattr { path: p, name } => path(p) + bytes(name),
    };
    1 + fields
}

/// Returns the encoded size of a write by reference to `data` of the file at `path`.
pub(super) fn ref_payload_len(path: &RelPath, data: &DataRef) -> usize {
    let identity = match data.file {
        None => 0,
        Some(FileIdentity {
            generation: None, ..
        }) => 8 + 1,
        Some(FileIdentity {
            generation: Some(_),
            ..
        }) => 8 + 1 + 4,
    };
    1 + 4 + path.as_bytes().len() + 8 + 4 + 4 + identity
}

/// Encodes the frame of a write by reference into `buf`, replacing its contents: tag 19, or
/// tag 18 when `data` names no file (only tests write that). Its op reads back as
/// `Op::Write` with empty data, plus the `DataRef`.
pub(super) fn encode_ref_frame(
    seq: Seq,
    committed_at_ns: u64,
    path: &RelPath,
    offset: u64,
    data: DataRef,
    buf: &mut Vec<u8>,
) {
    let payload_len = ref_payload_len(path, &data);
    buf.clear();
    buf.reserve(FRAME_HEADER_LEN + payload_len);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.0.to_le_bytes());
    buf.extend_from_slice(&committed_at_ns.to_le_bytes());
    let mut out = Encoder(buf);
    out.u8(match data.file {
        Some(_) => WRITE_REF_TAG,
        None => PATH_ONLY_WRITE_REF_TAG,
    });
    out.path(path);
    out.u64(offset);
    out.u32(data.len);
    out.u32(data.crc);
    if let Some(file) = data.file {
        out.u64(file.ino);
        out.option_u32(file.generation);
    }
    debug_assert_eq!(buf.len(), FRAME_HEADER_LEN + payload_len);
    let crc = crc32c::crc32c(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes one record frame into `buf`, replacing its contents.
///
/// The caller checks `payload_len` against `MAX_PAYLOAD_BYTES` first, so the cast to the u32
/// length field cannot truncate.
pub(super) fn encode_frame(
    seq: Seq,
    committed_at_ns: u64,
    op: &Op,
    payload_len: usize,
    buf: &mut Vec<u8>,
) {
    buf.clear();
    append_frame(seq, committed_at_ns, op, payload_len, buf);
}

/// Encodes one record frame at the end of `buf`, as `encode_frame` does.
pub(super) fn append_frame(
    seq: Seq,
    committed_at_ns: u64,
    op: &Op,
    payload_len: usize,
    buf: &mut Vec<u8>,
) {
    debug_assert!(payload_len <= MAX_PAYLOAD_BYTES);
    debug_assert_eq!(payload_len, self::payload_len(op));

    let start = buf.len();
    buf.reserve(FRAME_HEADER_LEN + payload_len);
    buf.extend_from_slice(&(payload_len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.0.to_le_bytes());
    buf.extend_from_slice(&committed_at_ns.to_le_bytes());
    encode_op(op, buf);
    debug_assert_eq!(buf.len() - start, FRAME_HEADER_LEN + payload_len);

    let crc = crc32c::crc32c(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the start of `bytes` with every check a segment reader makes except
/// the seq, which the caller checks. Returns the record and the frame's length in bytes.
pub(super) fn decode_frame_at(bytes: &[u8]) -> Result<(Record, usize), FormatError> {
    let incomplete = |needed: usize| FormatError::Incomplete {
        needed: needed as u64,
        available: bytes.len() as u64,
    };
    let Some(header_bytes) = bytes.get(..FRAME_HEADER_LEN) else {
        return Err(incomplete(FRAME_HEADER_LEN));
    };
    let header_bytes: [u8; FRAME_HEADER_LEN] = array_at(header_bytes, 0);
    let header = FrameHeader::parse(&header_bytes);
    header.check_payload_len()?;
    // The payload length was checked against the maximum, so this cannot overflow.
    let frame_len = header.frame_len() as usize;
    let Some(payload) = bytes.get(FRAME_HEADER_LEN..frame_len) else {
        return Err(incomplete(frame_len));
    };
    check_crc(&header_bytes, payload)?;
    match decode_record(&header, payload)? {
        (record, None) => Ok((record, frame_len)),
        (_, Some(_)) => Err(FormatError::ReferenceOutsideSegment),
    }
}

/// Builds the record from a frame whose length, CRC and seq were already checked. A write by
/// reference comes back as `Op::Write` with empty data, and the `DataRef` to fill it from.
pub(super) fn decode_record(
    header: &FrameHeader,
    payload: &[u8],
) -> Result<(Record, Option<DataRef>), FormatError> {
    let (op, data) = decode_op(payload)?;
    let record = Record {
        seq: header.seq,
        committed_at_ns: header.committed_at_ns,
        op,
    };
    Ok((record, data))
}

fn encode_op(op: &Op, buf: &mut Vec<u8>) {
    let mut out = Encoder(buf);
    match op {
        Op::Write { path, offset, data } => {
            out.u8(1);
            out.path(path);
            out.u64(*offset);
            out.bytes(data);
        }
        Op::Create {
            path,
            mode,
            uid,
            gid,
        } => {
            out.u8(2);
            out.path(path);
            out.u32(*mode);
            out.u32(*uid);
            out.u32(*gid);
        }
        Op::Mknod {
            path,
            mode,
            rdev,
            uid,
            gid,
        } => {
            out.u8(3);
            out.path(path);
            out.u32(*mode);
            out.u64(*rdev);
            out.u32(*uid);
            out.u32(*gid);
        }
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => {
            out.u8(4);
            out.path(path);
            out.u32(*mode);
            out.u32(*uid);
            out.u32(*gid);
        }
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => {
            out.u8(5);
            out.path(path);
            out.bytes(target);
            out.u32(*uid);
            out.u32(*gid);
        }
        Op::Link { existing, path } => {
            out.u8(6);
            out.path(existing);
            out.path(path);
        }
        Op::Unlink { path } => {
            out.u8(7);
            out.path(path);
        }
        Op::Rmdir { path } => {
            out.u8(8);
            out.path(path);
        }
        Op::Rename { from, to, flags } => {
            out.u8(9);
            out.path(from);
            out.path(to);
            out.u32(*flags);
        }
        Op::Truncate { path, size } => {
            out.u8(10);
            out.path(path);
            out.u64(*size);
        }
        Op::SetMode { path, mode } => {
            out.u8(11);
            out.path(path);
            out.u32(*mode);
        }
        Op::SetOwner { path, uid, gid } => {
            out.u8(12);
            out.path(path);
            out.option_u32(*uid);
            out.option_u32(*gid);
        }
        Op::SetTimes { path, atime, mtime } => {
            out.u8(13);
            out.path(path);
            out.option_time(*atime);
            out.option_time(*mtime);
        }
        Op::Fallocate {
            path,
            mode,
            offset,
            length,
        } => {
            out.u8(14);
            out.path(path);
            out.i32(*mode);
            out.u64(*offset);
            out.u64(*length);
        }
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => {
            out.u8(15);
            out.path(path);
            out.bytes(name);
            out.bytes(value);
            out.i32(*flags);
        }
        Op::RemoveXattr { path, name } => {
            out.u8(16);
            out.path(path);
            out.bytes(name);
        }
        Op::CloseWrite { path } => {
            out.u8(17);
            out.path(path);
        }
    }
}

fn decode_op(payload: &[u8]) -> Result<(Op, Option<DataRef>), FormatError> {
    let mut input = Decoder(payload);
    let mut data_ref = None;
    let op = match input.u8()? {
        1 => Op::Write {
            path: input.path()?,
            offset: input.u64()?,
            data: input.bytes()?,
        },
        2 => Op::Create {
            path: input.path()?,
            mode: input.u32()?,
            uid: input.u32()?,
            gid: input.u32()?,
        },
        3 => Op::Mknod {
            path: input.path()?,
            mode: input.u32()?,
            rdev: input.u64()?,
            uid: input.u32()?,
            gid: input.u32()?,
        },
        4 => Op::Mkdir {
            path: input.path()?,
            mode: input.u32()?,
            uid: input.u32()?,
            gid: input.u32()?,
        },
        5 => Op::Symlink {
            path: input.path()?,
            target: input.bytes()?,
            uid: input.u32()?,
            gid: input.u32()?,
        },
        6 => Op::Link {
            existing: input.path()?,
            path: input.path()?,
        },
        7 => Op::Unlink {
            path: input.path()?,
        },
        8 => Op::Rmdir {
            path: input.path()?,
        },
        9 => Op::Rename {
            from: input.path()?,
            to: input.path()?,
            flags: input.u32()?,
        },
        10 => Op::Truncate {
            path: input.path()?,
            size: input.u64()?,
        },
        11 => Op::SetMode {
            path: input.path()?,
            mode: input.u32()?,
        },
        12 => Op::SetOwner {
            path: input.path()?,
            uid: input.option_u32()?,
            gid: input.option_u32()?,
        },
        13 => Op::SetTimes {
            path: input.path()?,
            atime: input.option_time()?,
            mtime: input.option_time()?,
        },
        14 => Op::Fallocate {
            path: input.path()?,
            mode: input.i32()?,
            offset: input.u64()?,
            length: input.u64()?,
        },
        15 => Op::SetXattr {
            path: input.path()?,
            name: input.bytes()?,
            value: input.bytes()?,
            flags: input.i32()?,
        },
        16 => Op::RemoveXattr {
            path: input.path()?,
            name: input.bytes()?,
        },
        17 => Op::CloseWrite {
            path: input.path()?,
        },
        tag @ (PATH_ONLY_WRITE_REF_TAG | WRITE_REF_TAG) => {
            let op = Op::Write {
                path: input.path()?,
                offset: input.u64()?,
                data: Vec::new(),
            };
            let len = input.u32()?;
            let crc = input.u32()?;
            let file = if tag == WRITE_REF_TAG {
                Some(FileIdentity {
                    ino: input.u64()?,
                    generation: input.option_u32()?,
                })
            } else {
                None
            };
            data_ref = Some(DataRef { len, crc, file });
            op
        }
        tag => return Err(FormatError::UnknownTag(tag)),
    };
    if !input.0.is_empty() {
        return Err(FormatError::TrailingBytes(input.0.len()));
    }
    Ok((op, data_ref))
}

/// Returns the `N` bytes at `at`; callers pass slices they already checked to be long enough.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

struct Encoder<'a>(&'a mut Vec<u8>);

impl Encoder<'_> {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn i32(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, value: &[u8]) {
        // The payload size check bounds every field below 4 GiB.
        self.u32(value.len() as u32);
        self.0.extend_from_slice(value);
    }

    fn path(&mut self, path: &RelPath) {
        self.bytes(path.as_bytes());
    }

    fn option_u32(&mut self, value: Option<u32>) {
        match value {
            Some(value) => {
                self.u8(1);
                self.u32(value);
            }
            None => self.u8(0),
        }
    }

    fn option_time(&mut self, value: Option<Timestamp>) {
        match value {
            Some(time) => {
                self.u8(1);
                self.0.extend_from_slice(&time.secs.to_le_bytes());
                self.u32(time.nanos);
            }
            None => self.u8(0),
        }
    }
}

/// Reads fields from the front of the remaining payload bytes.
struct Decoder<'a>(&'a [u8]);

impl Decoder<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], FormatError> {
        if self.0.len() < len {
            return Err(FormatError::PayloadTruncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        Ok(array_at(self.take(N)?, 0))
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, FormatError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn path(&mut self) -> Result<RelPath, FormatError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        RelPath::from_bytes(bytes)
            .ok_or_else(|| FormatError::InvalidPath(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn flag(&mut self) -> Result<bool, FormatError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(FormatError::InvalidOptionFlag(other)),
        }
    }

    fn option_u32(&mut self) -> Result<Option<u32>, FormatError> {
        if !self.flag()? {
            return Ok(None);
        }
        Ok(Some(self.u32()?))
    }

    fn option_time(&mut self) -> Result<Option<Timestamp>, FormatError> {
        if !self.flag()? {
            return Ok(None);
        }
        let secs = i64::from_le_bytes(self.array()?);
        let nanos = self.u32()?;
        Ok(Some(Timestamp { secs, nanos }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testing::{arb_op, every_op, path};
    use super::*;

    /// Splits an encoded frame and decodes it with every check a reader makes.
    fn decode_frame(frame: &[u8]) -> Result<Record, FormatError> {
        let header_bytes: [u8; FRAME_HEADER_LEN] = array_at(frame, 0);
        let header = FrameHeader::parse(&header_bytes);
        header.check_payload_len()?;
        assert_eq!(header.frame_len(), frame.len() as u64);
        let payload = &frame[FRAME_HEADER_LEN..];
        check_crc(&header_bytes, payload)?;
        decode_record(&header, payload).map(|(record, _)| record)
    }

    fn encode(seq: Seq, committed_at_ns: u64, op: &Op) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_frame(seq, committed_at_ns, op, payload_len(op), &mut buf);
        buf
    }

    /// Returns the bytes of the hex example in docs/FORMAT.md, checking its offset column.
    fn documented_example() -> Vec<u8> {
        let doc = include_str!("../../docs/FORMAT.md");
        let mut bytes = Vec::new();
        for line in doc.lines() {
            let Some((hex, _field)) = line.split_once(" | ") else {
                continue;
            };
            let Some((offset, hex)) = hex.split_once("  ") else {
                continue;
            };
            let Ok(offset) = usize::from_str_radix(offset, 16) else {
                continue;
            };
            assert_eq!(offset, bytes.len(), "offset column of line {line:?}");
            for pair in hex.split_whitespace() {
                bytes.push(u8::from_str_radix(pair, 16).expect("hex byte"));
            }
        }
        bytes
    }

    fn example_op() -> Op {
        Op::Write {
            path: path("app.log"),
            offset: 0,
            data: b"hello\n".to_vec(),
        }
    }

    #[test]
    fn frame_round_trips_every_op() {
        for (i, op) in every_op().into_iter().enumerate() {
            let seq = Seq(i as u64 + 1);
            let frame = encode(seq, 1_700_000_000_123_456_789, &op);
            assert_eq!(frame.len(), FRAME_HEADER_LEN + payload_len(&op), "{op:?}");
            let record = decode_frame(&frame).unwrap();
            assert_eq!(record.seq, seq);
            assert_eq!(record.committed_at_ns, 1_700_000_000_123_456_789);
            assert_eq!(record.op, op);
        }
    }

    #[test]
    fn every_op_variant_has_its_tag() {
        let tags: Vec<u8> = every_op()
            .iter()
            .map(|op| encode(Seq(1), 0, op)[FRAME_HEADER_LEN])
            .collect();
        assert_eq!(
            tags,
            [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 12, 13, 13, 14, 15, 16, 17
            ]
        );
    }

    #[test]
    fn header_round_trips() {
        let header = SegmentHeader {
            journal_id: 0xfeed_f00d_0000_0001,
            first_seq: Seq(42),
            base_position: Position(123_456),
        };
        let bytes = header.encode();
        assert_eq!(&bytes[..8], b"LMJRNL\0\x01");
        assert_eq!(SegmentHeader::decode(&bytes), Ok(header));
    }

    #[test]
    fn header_rejects_damage() {
        let bytes = SegmentHeader {
            journal_id: 1,
            first_seq: Seq(1),
            base_position: Position(0),
        }
        .encode();
        assert_eq!(
            SegmentHeader::decode(&bytes[..43]),
            Err(FormatError::ShortHeader { len: 43 })
        );

        let mut bad_magic = bytes;
        bad_magic[0] = b'X';
        assert!(matches!(
            SegmentHeader::decode(&bad_magic),
            Err(FormatError::BadMagic { .. })
        ));

        let mut bad_version = bytes;
        bad_version[8] = 2;
        assert_eq!(
            SegmentHeader::decode(&bad_version),
            Err(FormatError::UnsupportedVersion(2))
        );

        let mut bad_len = bytes;
        bad_len[12] = 48;
        assert_eq!(
            SegmentHeader::decode(&bad_len),
            Err(FormatError::BadHeaderLength(48))
        );

        for i in 16..HEADER_LEN {
            let mut flipped = bytes;
            flipped[i] ^= 0x10;
            assert!(
                matches!(
                    SegmentHeader::decode(&flipped),
                    Err(FormatError::HeaderCrcMismatch { .. })
                ),
                "byte {i}"
            );
        }
    }

    #[test]
    fn documented_example_decodes() {
        let bytes = documented_example();
        assert_eq!(bytes.len(), 98);

        let header = SegmentHeader::decode(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(header.journal_id, 0x0123_4567_89ab_cdef);
        assert_eq!(header.first_seq, Seq(1));
        assert_eq!(header.base_position, Position(0));

        let frame = &bytes[HEADER_LEN..];
        assert_eq!(frame.len(), 54);
        let record = decode_frame(frame).unwrap();
        assert_eq!(record.seq, Seq(1));
        assert_eq!(record.committed_at_ns, 1_700_000_000_000_000_000);
        assert_eq!(record.op, example_op());
    }

    #[test]
    fn documented_example_matches_encoder() {
        let bytes = documented_example();
        let header = SegmentHeader {
            journal_id: 0x0123_4567_89ab_cdef,
            first_seq: Seq(1),
            base_position: Position(0),
        };
        let mut encoded = header.encode().to_vec();
        encoded.extend(encode(Seq(1), 1_700_000_000_000_000_000, &example_op()));
        assert_eq!(encoded, bytes);
    }

    #[test]
    fn documented_example_opens_as_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("00000000000000000001.seg");
        std::fs::write(&file, documented_example()).unwrap();

        let (journal, recovery) = super::super::Journal::open(tmp.path(), 1 << 20).unwrap();
        assert_eq!(journal.id(), 0x0123_4567_89ab_cdef);
        assert_eq!(recovery.head, Seq(1));
        assert_eq!(recovery.head_position, Position(54));
        assert_eq!(recovery.torn_bytes_cut, 0);
        let records: Vec<_> = journal
            .read_after(Seq(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].0.op, example_op());
        assert_eq!(records[0].1, Position(54));
    }

    #[test]
    fn frame_rejects_flipped_bytes() {
        let frame = encode(Seq(9), 5, &every_op()[0]);
        for i in 4..frame.len() {
            let mut flipped = frame.clone();
            flipped[i] ^= 0x01;
            assert!(
                matches!(decode_frame(&flipped), Err(FormatError::CrcMismatch { .. })),
                "byte {i}"
            );
        }
    }

    #[test]
    fn appended_frames_decode_from_a_slice() {
        let ops = every_op();
        let mut bytes = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            append_frame(Seq(i as u64 + 1), 7, op, payload_len(op), &mut bytes);
        }
        let mut offset = 0;
        for (i, op) in ops.iter().enumerate() {
            let (record, frame_len) = decode_frame_at(&bytes[offset..]).unwrap();
            assert_eq!(record.seq, Seq(i as u64 + 1));
            assert_eq!(&record.op, op);
            assert_eq!(frame_len, FRAME_HEADER_LEN + payload_len(op));
            offset += frame_len;
        }
        assert_eq!(offset, bytes.len());
    }

    #[test]
    fn slice_decoder_rejects_short_frames() {
        let frame = encode(Seq(3), 0, &example_op());
        for len in 0..frame.len() {
            let error = decode_frame_at(&frame[..len]).unwrap_err();
            let needed = if len < FRAME_HEADER_LEN {
                FRAME_HEADER_LEN
            } else {
                frame.len()
            };
            assert_eq!(
                error,
                FormatError::Incomplete {
                    needed: needed as u64,
                    available: len as u64
                }
            );
        }
    }

    #[test]
    fn frame_rejects_bad_payload_length() {
        let mut header = [0u8; FRAME_HEADER_LEN];
        assert_eq!(
            FrameHeader::parse(&header).check_payload_len(),
            Err(FormatError::BadPayloadLength(0))
        );
        header[..4].copy_from_slice(&(MAX_PAYLOAD_BYTES as u32 + 1).to_le_bytes());
        assert_eq!(
            FrameHeader::parse(&header).check_payload_len(),
            Err(FormatError::BadPayloadLength(MAX_PAYLOAD_BYTES as u32 + 1))
        );
        header[..4].copy_from_slice(&(MAX_PAYLOAD_BYTES as u32).to_le_bytes());
        assert_eq!(FrameHeader::parse(&header).check_payload_len(), Ok(()));
    }

    #[test]
    fn payload_rejects_invalid_ops() {
        assert_eq!(decode_op(&[0]), Err(FormatError::UnknownTag(0)));
        assert_eq!(decode_op(&[20]), Err(FormatError::UnknownTag(20)));
        assert_eq!(decode_op(&[18]), Err(FormatError::PayloadTruncated));
        assert_eq!(decode_op(&[19]), Err(FormatError::PayloadTruncated));
        // Unlink of "a" with one byte too many, then one too few.
        assert_eq!(
            decode_op(&[7, 1, 0, 0, 0, b'a', 0]),
            Err(FormatError::TrailingBytes(1))
        );
        assert_eq!(
            decode_op(&[7, 2, 0, 0, 0, b'a']),
            Err(FormatError::PayloadTruncated)
        );
        assert_eq!(
            decode_op(&[7, 2, 0, 0, 0, b'.', b'.']),
            Err(FormatError::InvalidPath("..".to_string()))
        );
        // SetOwner of the root with option flag 2.
        assert_eq!(
            decode_op(&[12, 0, 0, 0, 0, 2]),
            Err(FormatError::InvalidOptionFlag(2))
        );
        assert_eq!(
            decode_op(&[12, 0, 0, 0, 0, 0, 0]),
            Ok((
                Op::SetOwner {
                    path: RelPath::root(),
                    uid: None,
                    gid: None
                },
                None
            ))
        );
    }

    #[test]
    fn write_by_reference_round_trip() {
        let file = path("logs/app.log");
        let identities = [
            None,
            Some(FileIdentity {
                ino: 1 << 40,
                generation: None,
            }),
            Some(FileIdentity {
                ino: 12,
                generation: Some(0x8000_0001),
            }),
        ];
        for identity in identities {
            let data = DataRef {
                len: 4096,
                crc: 0xdead_beef,
                file: identity,
            };
            let mut frame = Vec::new();
            encode_ref_frame(Seq(9), 77, &file, 1 << 33, data, &mut frame);
            assert_eq!(
                frame.len(),
                FRAME_HEADER_LEN + ref_payload_len(&file, &data)
            );
            let tag = match identity {
                Some(_) => WRITE_REF_TAG,
                None => PATH_ONLY_WRITE_REF_TAG,
            };
            assert_eq!(frame[FRAME_HEADER_LEN], tag);

            let header = FrameHeader::parse(&array_at(&frame, 0));
            check_crc(&array_at(&frame, 0), &frame[FRAME_HEADER_LEN..]).unwrap();
            let (record, found) = decode_record(&header, &frame[FRAME_HEADER_LEN..]).unwrap();
            assert_eq!(found, Some(data));
            assert_eq!((record.seq, record.committed_at_ns), (Seq(9), 77));
            assert_eq!(
                record.op,
                Op::Write {
                    path: file.clone(),
                    offset: 1 << 33,
                    data: Vec::new()
                }
            );
            // Other stores (S3 journal objects) must carry the data itself.
            assert_eq!(
                decode_frame_at(&frame),
                Err(FormatError::ReferenceOutsideSegment)
            );
        }
    }

    /// Payloads as releases before tag 19 wrote them still decode, without a file identity.
    #[test]
    fn path_only_reference_still_decodes() {
        let payload = [
            18, // tag
            5, 0, 0, 0, b'a', b'/', b'b', b'.', b'c', // path "a/b.c"
            0, 0x10, 0, 0, 0, 0, 0, 0, // offset 4096
            0, 0x20, 0, 0, // length 8192
            0xef, 0xbe, 0xad, 0xde, // data crc32c 0xdeadbeef
        ];
        let (op, data) = decode_op(&payload).unwrap();
        assert_eq!(
            op,
            Op::Write {
                path: path("a/b.c"),
                offset: 4096,
                data: Vec::new()
            }
        );
        let expected = DataRef {
            len: 8192,
            crc: 0xdead_beef,
            file: None,
        };
        assert_eq!(data, Some(expected));
        assert_eq!(ref_payload_len(&path("a/b.c"), &expected), payload.len());

        // The same write with an identity: inode 7, generation 3.
        let mut with_identity = payload.to_vec();
        with_identity[0] = 19;
        with_identity.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0, 0]);
        let (_, data) = decode_op(&with_identity).unwrap();
        let file = FileIdentity {
            ino: 7,
            generation: Some(3),
        };
        assert_eq!(data.and_then(|d| d.file), Some(file));
        // Tag 18 with identity bytes after it is not a valid old payload.
        with_identity[0] = 18;
        assert_eq!(
            decode_op(&with_identity),
            Err(FormatError::TrailingBytes(13))
        );
    }

    proptest! {
        #[test]
        fn frame_round_trips_arbitrary_op(
            op in arb_op(),
            seq in 1u64..u64::MAX,
            committed_at_ns in any::<u64>(),
        ) {
            let frame = encode(Seq(seq), committed_at_ns, &op);
            prop_assert_eq!(frame.len(), FRAME_HEADER_LEN + payload_len(&op));
            let record = decode_frame(&frame).unwrap();
            prop_assert_eq!(record.seq, Seq(seq));
            prop_assert_eq!(record.committed_at_ns, committed_at_ns);
            prop_assert_eq!(record.op, op);
        }

        #[test]
        fn payload_decoder_survives_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..128),
        ) {
            // Any outcome but a panic is fine; a decoded op must encode back to the input.
            match decode_op(&bytes) {
                Ok((op, None)) => {
                    let frame = encode(Seq(1), 0, &op);
                    prop_assert_eq!(&frame[FRAME_HEADER_LEN..], &bytes[..]);
                }
                Ok((Op::Write { path, offset, .. }, Some(data))) => {
                    let mut frame = Vec::new();
                    encode_ref_frame(Seq(1), 0, &path, offset, data, &mut frame);
                    prop_assert_eq!(&frame[FRAME_HEADER_LEN..], &bytes[..]);
                }
                Ok(other) => prop_assert!(false, "a reference decoded as {:?}", other),
                Err(_) => {}
            }
        }
    }
}
