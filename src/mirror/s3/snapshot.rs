//! Snapshots of the S3 mirror: keys and byte layout of the tree at one point of the history,
//! stored so that the journal objects before that point can be removed (`retention=`).
//!
//! This file only encodes and decodes bytes; `fold.rs` builds and stores snapshots, and
//! `replay.rs` reads them. A snapshot numbered K gives the tree that replaying journal
//! objects 1 to K gives. It consists of parts and an index, stored last:
//!
//! ```text
//! PREFIX/.logmirror/snapshot/00000000000000000042/00000001.lms   part 1
//! PREFIX/.logmirror/snapshot/00000000000000000042/00000002.lms   part 2
//! PREFIX/.logmirror/snapshot/00000000000000000042.lmi            index
//! ```
//!
//! A part has exactly the layout of a journal object (`object.rs`). The header's
//! `journal_id` field contains the snapshot number K and `number` the part number. Every
//! frame has seq 0 and carries an op (mkdir, create, write, symlink, link, mknod, set mode)
//! that recreates part of the tree, and parts are applied in order.
//!
//! ```text
//! index, version 2 (112 bytes, then 16 per part, then 28 when sealed, then 4)
//! offset size field
//! 0      8    magic            LMSNAP\0\x01
//! 8      4    version          2
//! 12     4    header_len       112
//! 16     8    number           K: the newest journal object the snapshot covers
//! 24     8    journal_id       journal of the newest record covered; 0 when none
//! 32     8    last_seq         seq of that record; 0 when none
//! 40     8    last_seq_at_ns   its commit time, ns since the Unix epoch; 0 when none
//! 48     8    last_frame_at_ns commit time of the newest frame covered (a record or a resync op)
//! 56     8    frame_count      frames in all parts together
//! 64     4    part_count
//! 68     4    flags            bit 0: the newest frame covered has seq 0 (a resync op)
//!                              bit 1: sealed with the encrypt_key (nonce and tag follow parts)
//! 72     32   chain            SHA-256 of the stored bytes of journal object K
//! 104    8    key_id           id of the encryption key; 0 when not sealed
//! 112    16*n parts            per part: bytes u64, frame_count u32, CRC32C of the part u32
//! ...    28   seal             when sealed: nonce (12) and the AES-GCM tag (16) of an empty
//!                              plaintext with every byte before it as associated data
//! end-4  4    crc32c           of every byte before it
//! ```
//!
//! All integers are little-endian. An index without all of its parts, or parts without an
//! index, are the remains of an interrupted fold: the snapshot is complete only when its
//! index is stored, and the fold stores the index after reading every part back.
//!
//! `chain` carries the hash chain across the fold: journal object K + 1 records the SHA-256
//! of object K, which the fold removes, so replay checks it against this field instead. A
//! version 1 index (72 bytes of header, the fields up to `flags`) has no `chain` and no
//! seal; the object after it is not checked against its predecessor.

use crate::journal::Seq;

use super::object::Sha256Digest;
use super::seal::{NONCE_BYTES, OpenFailed, Seal, TAG_BYTES};

/// First 8 bytes of every snapshot index.
pub const INDEX_MAGIC: [u8; 8] = *b"LMSNAP\0\x01";

/// Version written in new indexes.
pub const INDEX_VERSION: u32 = 2;

/// The first version, still read: no chain and no seal.
pub const INDEX_VERSION_1: u32 = 1;

/// Size of the fixed part of a version 2 index, before the part list.
pub const INDEX_HEADER_LEN: usize = 112;

/// Size of the fixed part of a version 1 index.
pub const INDEX_HEADER_LEN_V1: usize = 72;

/// Size of one part's entry in an index.
const PART_ENTRY_LEN: usize = 16;

/// Size of the nonce and tag of a sealed index.
const SEAL_LEN: usize = NONCE_BYTES + TAG_BYTES;

/// Flag bit: the newest frame covered is an op of a resync (seq 0).
const FLAG_ENDS_IN_RESYNC: u32 = 1;

/// Flag bit: the index is sealed with the encrypt_key.
const FLAG_SEALED: u32 = 2;

/// Folder, below the mirror's prefix, that contains the snapshots.
const SNAPSHOT_FOLDER: &str = ".logmirror/snapshot/";

const INDEX_SUFFIX: &str = ".lmi";
const PART_SUFFIX: &str = ".lms";
const NUMBER_DIGITS: usize = 20;
const PART_DIGITS: usize = 8;

/// Returns the key prefix under which the snapshots of the mirror at `prefix` lie.
pub fn snapshot_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        SNAPSHOT_FOLDER.to_string()
    } else {
        format!("{prefix}/{SNAPSHOT_FOLDER}")
    }
}

/// Returns the key of the index of snapshot `number`.
pub fn index_key(prefix: &str, number: u64) -> String {
    format!(
        "{}{number:0width$}{INDEX_SUFFIX}",
        snapshot_prefix(prefix),
        width = NUMBER_DIGITS
    )
}

/// Returns the key of part `part` (from 1) of snapshot `number`.
pub fn part_key(prefix: &str, number: u64, part: u32) -> String {
    format!(
        "{}{number:0width$}/{part:0part_width$}{PART_SUFFIX}",
        snapshot_prefix(prefix),
        width = NUMBER_DIGITS,
        part_width = PART_DIGITS
    )
}

/// Kind of object that a key below [`snapshot_prefix`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKey {
    Index { number: u64 },
    Part { number: u64, part: u32 },
}

impl SnapshotKey {
    /// Returns the snapshot number in the key.
    pub fn number(self) -> u64 {
        match self {
            SnapshotKey::Index { number } | SnapshotKey::Part { number, .. } => number,
        }
    }
}

/// Returns what `key`, listed under [`snapshot_prefix`], names, or `None` when it is neither
/// an index nor a part.
pub fn parse_snapshot_key(prefix: &str, key: &str) -> Option<SnapshotKey> {
    let name = key.strip_prefix(&snapshot_prefix(prefix))?;
    if let Some(digits) = name.strip_suffix(INDEX_SUFFIX) {
        let number = parse_digits(digits, NUMBER_DIGITS)?;
        return (number > 0).then_some(SnapshotKey::Index { number });
    }
    let (number, part) = name.strip_suffix(PART_SUFFIX)?.split_once('/')?;
    let number = parse_digits(number, NUMBER_DIGITS)?;
    let part = u32::try_from(parse_digits(part, PART_DIGITS)?).ok()?;
    (number > 0 && part > 0).then_some(SnapshotKey::Part { number, part })
}

fn parse_digits(text: &str, width: usize) -> Option<u64> {
    if text.len() != width || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Size, frame count and CRC32C of one stored part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartEntry {
    pub bytes: u64,
    pub frame_count: u32,
    pub crc32c: u32,
}

/// The decoded index of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotIndex {
    /// The newest journal object the snapshot covers.
    pub number: u64,
    /// Journal of the newest record covered; 0 when no record is covered.
    pub journal_id: u64,
    /// Seq of the newest record covered; `Seq(0)` when none is.
    pub last_seq: Seq,
    /// Commit time of that record, in ns since the Unix epoch; 0 when none is covered.
    pub last_seq_at_ns: u64,
    /// Commit time of the newest frame covered, a record or an op of a resync. The snapshot
    /// is the tree as of this time.
    pub last_frame_at_ns: u64,
    /// True when the newest frame covered is an op of a resync, so that the ops of the same
    /// resync that follow in later journal objects belong to it.
    pub ends_in_resync: bool,
    pub frame_count: u64,
    pub parts: Vec<PartEntry>,
    /// SHA-256 of journal object `number` as stored; `None` in a version 1 index.
    pub chain: Option<Sha256Digest>,
    /// Id of the key that sealed the index; `None` when it is not sealed.
    pub key_id: Option<u64>,
}

/// Reason that bytes are not a valid snapshot index.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("snapshot index needs at least {min} bytes but has {len}")]
    Short { len: usize, min: usize },
    #[error("invalid magic {found:02x?}, expected {INDEX_MAGIC:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error(
        "unsupported snapshot index version {0}, expected {INDEX_VERSION_1} or \
         {INDEX_VERSION}; a newer logmirror wrote it"
    )]
    UnsupportedVersion(u32),
    #[error("invalid header length {found}, expected {expected}")]
    BadHeaderLength { found: u32, expected: usize },
    #[error("index of {parts} parts needs {expected} bytes but has {len}")]
    Length {
        parts: u32,
        expected: usize,
        len: usize,
    },
    #[error("snapshot index CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("index names snapshot {found}, but the key names {expected}")]
    NumberMismatch { expected: u64, found: u64 },
    #[error("unknown flags {0:#x}")]
    UnknownFlags(u32),
    #[error("the parts hold {found} frames, but the index gives {expected}")]
    FrameCount { expected: u64, found: u64 },
    #[error(
        "the index is sealed with key id {key_id:016x} and no key was given; set \
         encrypt_key=FILE (mount, or -o of fold) or pass --key FILE (restore)"
    )]
    KeyRequired { key_id: u64 },
    #[error(
        "the index is sealed with key id {found:016x}, but the key given has id \
         {expected:016x}; use the key file the mount used"
    )]
    WrongKey { found: u64, expected: u64 },
    #[error(
        "the index fails authentication with key id {key_id:016x}: it was changed after the \
         fold sealed it"
    )]
    Unauthentic { key_id: u64 },
}

impl SnapshotIndex {
    /// Encodes the index as version 2, sealed with `seal` if given, CRC included.
    pub fn encode(&self, seal: Option<&Seal>) -> std::io::Result<Vec<u8>> {
        let mut bytes =
            Vec::with_capacity(INDEX_HEADER_LEN + self.parts.len() * PART_ENTRY_LEN + SEAL_LEN + 4);
        bytes.extend_from_slice(&INDEX_MAGIC);
        bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(INDEX_HEADER_LEN as u32).to_le_bytes());
        bytes.extend_from_slice(&self.number.to_le_bytes());
        bytes.extend_from_slice(&self.journal_id.to_le_bytes());
        bytes.extend_from_slice(&self.last_seq.0.to_le_bytes());
        bytes.extend_from_slice(&self.last_seq_at_ns.to_le_bytes());
        bytes.extend_from_slice(&self.last_frame_at_ns.to_le_bytes());
        bytes.extend_from_slice(&self.frame_count.to_le_bytes());
        let part_count = u32::try_from(self.parts.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&part_count.to_le_bytes());
        let mut flags = 0;
        if self.ends_in_resync {
            flags |= FLAG_ENDS_IN_RESYNC;
        }
        if seal.is_some() {
            flags |= FLAG_SEALED;
        }
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&self.chain.unwrap_or_default());
        let key_id = seal.map_or(0, Seal::key_id);
        bytes.extend_from_slice(&key_id.to_le_bytes());
        debug_assert_eq!(bytes.len(), INDEX_HEADER_LEN);
        for part in &self.parts {
            bytes.extend_from_slice(&part.bytes.to_le_bytes());
            bytes.extend_from_slice(&part.frame_count.to_le_bytes());
            bytes.extend_from_slice(&part.crc32c.to_le_bytes());
        }
        if let Some(seal) = seal {
            let tag = seal.seal(&bytes, &[])?;
            bytes.extend_from_slice(&tag);
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    /// Decodes and checks the index stored under snapshot number `number`. A sealed index
    /// is authenticated with `seal`.
    pub fn decode(
        bytes: &[u8],
        number: u64,
        seal: Option<&Seal>,
    ) -> Result<SnapshotIndex, IndexError> {
        let min = INDEX_HEADER_LEN_V1 + 4;
        if bytes.len() < min {
            return Err(IndexError::Short {
                len: bytes.len(),
                min,
            });
        }
        let magic: [u8; 8] = array_at(bytes, 0);
        if magic != INDEX_MAGIC {
            return Err(IndexError::BadMagic { found: magic });
        }
        let version = u32_at(bytes, 8);
        let header_len = match version {
            INDEX_VERSION_1 => INDEX_HEADER_LEN_V1,
            INDEX_VERSION => INDEX_HEADER_LEN,
            other => return Err(IndexError::UnsupportedVersion(other)),
        };
        let found_len = u32_at(bytes, 12);
        if found_len as usize != header_len {
            return Err(IndexError::BadHeaderLength {
                found: found_len,
                expected: header_len,
            });
        }
        if bytes.len() < header_len + 4 {
            return Err(IndexError::Short {
                len: bytes.len(),
                min: header_len + 4,
            });
        }
        let flags = u32_at(bytes, 68);
        let known = match version {
            INDEX_VERSION_1 => FLAG_ENDS_IN_RESYNC,
            _ => FLAG_ENDS_IN_RESYNC | FLAG_SEALED,
        };
        if flags & !known != 0 {
            return Err(IndexError::UnknownFlags(flags));
        }
        let sealed = flags & FLAG_SEALED != 0;
        let part_count = u32_at(bytes, 64);
        let seal_len = if sealed { SEAL_LEN } else { 0 };
        let parts_end = header_len + part_count as usize * PART_ENTRY_LEN;
        let expected = parts_end + seal_len + 4;
        if bytes.len() != expected {
            return Err(IndexError::Length {
                parts: part_count,
                expected,
                len: bytes.len(),
            });
        }
        let (body, stored) = bytes.split_at(bytes.len() - 4);
        let stored = u32_at(stored, 0);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(IndexError::CrcMismatch { stored, computed });
        }

        let found = u64_at(bytes, 16);
        if found != number {
            return Err(IndexError::NumberMismatch {
                expected: number,
                found,
            });
        }
        let key_id = if sealed {
            let key_id = u64_at(bytes, 104);
            check_seal(&body[..parts_end], &body[parts_end..], key_id, seal)?;
            Some(key_id)
        } else {
            None
        };
        let parts: Vec<PartEntry> = body[header_len..parts_end]
            .chunks_exact(PART_ENTRY_LEN)
            .map(|entry| PartEntry {
                bytes: u64_at(entry, 0),
                frame_count: u32_at(entry, 8),
                crc32c: u32_at(entry, 12),
            })
            .collect();
        let frame_count = u64_at(bytes, 56);
        let in_parts: u64 = parts.iter().map(|p| u64::from(p.frame_count)).sum();
        if in_parts != frame_count {
            return Err(IndexError::FrameCount {
                expected: frame_count,
                found: in_parts,
            });
        }
        Ok(SnapshotIndex {
            number,
            journal_id: u64_at(bytes, 24),
            last_seq: Seq(u64_at(bytes, 32)),
            last_seq_at_ns: u64_at(bytes, 40),
            last_frame_at_ns: u64_at(bytes, 48),
            ends_in_resync: flags & FLAG_ENDS_IN_RESYNC != 0,
            frame_count,
            parts,
            chain: (version == INDEX_VERSION).then(|| array_at(bytes, 72)),
            key_id,
        })
    }
}

/// Authenticates `signed`, the index up to its seal, with `tag` (nonce and tag).
fn check_seal(
    signed: &[u8],
    tag: &[u8],
    key_id: u64,
    seal: Option<&Seal>,
) -> Result<(), IndexError> {
    let Some(seal) = seal else {
        return Err(IndexError::KeyRequired { key_id });
    };
    if seal.key_id() != key_id {
        return Err(IndexError::WrongKey {
            found: key_id,
            expected: seal.key_id(),
        });
    }
    seal.open(signed, tag)
        .map(|_| ())
        .map_err(|OpenFailed| IndexError::Unauthentic { key_id })
}

/// Returns the `N` bytes at `at`; callers pass slices they already checked to be long enough.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(array_at(bytes, at))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(array_at(bytes, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SnapshotIndex {
        SnapshotIndex {
            number: 42,
            journal_id: 0x0123_4567_89ab_cdef,
            last_seq: Seq(1234),
            last_seq_at_ns: 1_700_000_000_000_000_000,
            last_frame_at_ns: 1_700_000_000_500_000_000,
            ends_in_resync: true,
            frame_count: 7,
            parts: vec![
                PartEntry {
                    bytes: 4096,
                    frame_count: 5,
                    crc32c: 0xdead_beef,
                },
                PartEntry {
                    bytes: 100,
                    frame_count: 2,
                    crc32c: 0x0102_0304,
                },
            ],
            chain: Some([0xc5; 32]),
            key_id: None,
        }
    }

    #[test]
    fn snapshot_keys() {
        assert_eq!(snapshot_prefix("host1"), "host1/.logmirror/snapshot/");
        assert_eq!(snapshot_prefix(""), ".logmirror/snapshot/");
        assert_eq!(
            index_key("host1", 42),
            "host1/.logmirror/snapshot/00000000000000000042.lmi"
        );
        assert_eq!(
            part_key("a/b", 42, 3),
            "a/b/.logmirror/snapshot/00000000000000000042/00000003.lms"
        );
        assert_eq!(
            parse_snapshot_key("host1", &index_key("host1", 42)),
            Some(SnapshotKey::Index { number: 42 })
        );
        assert_eq!(
            parse_snapshot_key("", &part_key("", u64::MAX, 99_999_999)),
            Some(SnapshotKey::Part {
                number: u64::MAX,
                part: 99_999_999
            })
        );
    }

    #[test]
    fn snapshot_keys_reject_others() {
        let bad = [
            "host1/.logmirror/snapshot/42.lmi",
            "host1/.logmirror/snapshot/00000000000000000000.lmi",
            "host1/.logmirror/snapshot/00000000000000000042.lms",
            "host1/.logmirror/snapshot/00000000000000000042/1.lms",
            "host1/.logmirror/snapshot/00000000000000000042/00000000.lms",
            "host1/.logmirror/snapshot/00000000000000000042/00000001.lmi",
            "host1/.logmirror/snapshot/00000000000000000042/x/00000001.lms",
            "host1/.logmirror/journal/00000000000000000042.lmj",
            "host2/.logmirror/snapshot/00000000000000000042.lmi",
        ];
        for key in bad {
            assert_eq!(parse_snapshot_key("host1", key), None, "{key}");
        }
    }

    #[test]
    fn index_round_trips() {
        let bytes = index().encode(None).unwrap();
        assert_eq!(bytes.len(), INDEX_HEADER_LEN + 2 * PART_ENTRY_LEN + 4);
        assert_eq!(&bytes[72..104], &[0xc5; 32]);
        assert_eq!(&bytes[..8], b"LMSNAP\0\x01");
        assert_eq!(SnapshotIndex::decode(&bytes, 42, None), Ok(index()));

        let empty = SnapshotIndex {
            parts: Vec::new(),
            frame_count: 0,
            ends_in_resync: false,
            ..index()
        };
        assert_eq!(
            SnapshotIndex::decode(&empty.encode(None).unwrap(), 42, None),
            Ok(empty)
        );
    }

    #[test]
    fn index_rejects_every_flipped_byte() {
        let bytes = index().encode(None).unwrap();
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert!(
                SnapshotIndex::decode(&flipped, 42, None).is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn index_rejects_truncation_and_wrong_number() {
        let bytes = index().encode(None).unwrap();
        for len in 0..bytes.len() {
            assert!(
                SnapshotIndex::decode(&bytes[..len], 42, None).is_err(),
                "length {len}"
            );
        }
        assert_eq!(
            SnapshotIndex::decode(&bytes, 43, None),
            Err(IndexError::NumberMismatch {
                expected: 43,
                found: 42
            })
        );
    }

    #[test]
    fn index_rejects_frame_count_mismatch() {
        let mut wrong = index();
        wrong.frame_count = 8;
        assert_eq!(
            SnapshotIndex::decode(&wrong.encode(None).unwrap(), 42, None),
            Err(IndexError::FrameCount {
                expected: 8,
                found: 7
            })
        );
    }

    #[test]
    fn index_sealed_round_trips() {
        let seal = Seal::from_key(&[9; 32]);
        let bytes = index().encode(Some(&seal)).unwrap();
        assert_eq!(
            bytes.len(),
            INDEX_HEADER_LEN + 2 * PART_ENTRY_LEN + SEAL_LEN + 4
        );
        let expected = SnapshotIndex {
            key_id: Some(seal.key_id()),
            ..index()
        };
        assert_eq!(SnapshotIndex::decode(&bytes, 42, Some(&seal)), Ok(expected));
        assert_eq!(
            SnapshotIndex::decode(&bytes, 42, None),
            Err(IndexError::KeyRequired {
                key_id: seal.key_id()
            })
        );
        let other = Seal::from_key(&[8; 32]);
        assert_eq!(
            SnapshotIndex::decode(&bytes, 42, Some(&other)),
            Err(IndexError::WrongKey {
                found: seal.key_id(),
                expected: other.key_id()
            })
        );
    }

    #[test]
    fn index_sealed_rejects_forged_fields() {
        let seal = Seal::from_key(&[9; 32]);
        let mut bytes = index().encode(Some(&seal)).unwrap();
        // A forger changes the chain digest and fixes the CRC, but cannot fix the tag.
        bytes[80] ^= 1;
        let end = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            SnapshotIndex::decode(&bytes, 42, Some(&seal)),
            Err(IndexError::Unauthentic {
                key_id: seal.key_id()
            })
        );
    }

    #[test]
    fn index_v1_still_read() {
        let v2 = index().encode(None).unwrap();
        let mut v1 = v2[..INDEX_HEADER_LEN_V1].to_vec();
        v1[8..12].copy_from_slice(&INDEX_VERSION_1.to_le_bytes());
        v1[12..16].copy_from_slice(&(INDEX_HEADER_LEN_V1 as u32).to_le_bytes());
        v1.extend_from_slice(&v2[INDEX_HEADER_LEN..v2.len() - 4]);
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let expected = SnapshotIndex {
            chain: None,
            ..index()
        };
        assert_eq!(SnapshotIndex::decode(&v1, 42, None), Ok(expected));
    }
}
