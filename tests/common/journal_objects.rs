//! Hand-made journal objects and segment headers, in the layouts of docs/DESIGN.md ("S3
//! mirror: object layout") and docs/FORMAT.md, for tests that put damaged, foreign or
//! escaping content where logmirror reads it.

/// Size of the header of the journal objects the daemon writes (version 2).
pub const OBJECT_HEADER_BYTES: usize = 104;
/// Size of a version 1 journal object's header, as the hand-made objects here have.
pub const OBJECT_HEADER_V1_BYTES: usize = 56;
/// Size of the fixed part of a record frame.
pub const FRAME_HEADER_BYTES: usize = 24;
/// Size of a journal segment's header.
pub const SEGMENT_HEADER_BYTES: usize = 44;

/// Returns the key of journal object `number` under `prefix` (without a trailing slash).
pub fn object_key(prefix: &str, number: u64) -> String {
    format!("{prefix}/.logmirror/journal/{number:020}.lmj")
}

/// Builds a record frame: payload length, CRC32C of the rest, seq, commit time, payload.
pub fn frame(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    frame.extend_from_slice(payload);
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Builds a version 1 journal object (not chained) holding `payloads` as records with seqs
/// `first_seq`, ...
pub fn journal_object(number: u64, first_seq: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
    journal_object_version(1, number, first_seq, payloads)
}

/// Builds a journal object as [`journal_object`] does, with `version` in its header.
pub fn journal_object_version(
    version: u32,
    number: u64,
    first_seq: u64,
    payloads: &[Vec<u8>],
) -> Vec<u8> {
    let last_seq = first_seq + payloads.len() as u64 - 1;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"LMJOBJ\0\x01");
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(OBJECT_HEADER_V1_BYTES as u32).to_le_bytes());
    bytes.extend_from_slice(&0x5eed_u64.to_le_bytes());
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes.extend_from_slice(&first_seq.to_le_bytes());
    bytes.extend_from_slice(&last_seq.to_le_bytes());
    bytes.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    for (i, payload) in payloads.iter().enumerate() {
        bytes.extend(frame(first_seq + i as u64, payload));
    }
    bytes
}

/// Size of the header of a version 2 journal object.
const OBJECT_HEADER_V2_BYTES: usize = 104;

/// Builds a plain version 2 journal object, chained to a predecessor whose stored bytes have
/// SHA-256 `previous`, holding `payloads` as records with seqs `first_seq`, ...; as an
/// intruder without the key would forge one.
pub fn chained_object(
    number: u64,
    first_seq: u64,
    previous: [u8; 32],
    payloads: &[Vec<u8>],
) -> Vec<u8> {
    let last_seq = first_seq + payloads.len() as u64 - 1;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"LMJOBJ\0\x01");
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&(OBJECT_HEADER_V2_BYTES as u32).to_le_bytes());
    bytes.extend_from_slice(&0x5eed_u64.to_le_bytes());
    bytes.extend_from_slice(&number.to_le_bytes());
    bytes.extend_from_slice(&first_seq.to_le_bytes());
    bytes.extend_from_slice(&last_seq.to_le_bytes());
    bytes.extend_from_slice(&(payloads.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&previous);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    for (i, payload) in payloads.iter().enumerate() {
        bytes.extend(frame(first_seq + i as u64, payload));
    }
    bytes
}

/// Returns the digest of its predecessor that a version 2 journal object records.
pub fn recorded_previous(object: &[u8]) -> [u8; 32] {
    object[56..88].try_into().expect("a version 2 header")
}

/// Returns the SHA-256 of `bytes`, as the hash chain records it.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Formats a digest as lowercase hex, as logmirror's messages show it.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a segment header (magic, version, length, journal id, first seq 1, base position
/// 0, CRC32C) with `version` in it.
pub fn segment_header(version: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"LMJRNL\0\x01");
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    bytes.extend_from_slice(&0x5eed_u64.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Returns the payload of a Create of `path` with mode 0644.
pub fn create_op(path: &str) -> Vec<u8> {
    let mut op = vec![2];
    field(&mut op, path.as_bytes());
    op.extend_from_slice(&0o100644u32.to_le_bytes());
    op.extend_from_slice(&0u32.to_le_bytes());
    op.extend_from_slice(&0u32.to_le_bytes());
    op
}

/// Returns the payload of a Write of `data` at offset 0 of `path`.
pub fn write_op(path: &str, data: &[u8]) -> Vec<u8> {
    let mut op = vec![1];
    field(&mut op, path.as_bytes());
    op.extend_from_slice(&0u64.to_le_bytes());
    field(&mut op, data);
    op
}

/// Returns the payload of a Symlink at `path` pointing to `target`.
pub fn symlink_op(path: &str, target: &str) -> Vec<u8> {
    let mut op = vec![5];
    field(&mut op, path.as_bytes());
    field(&mut op, target.as_bytes());
    op.extend_from_slice(&0u32.to_le_bytes());
    op.extend_from_slice(&0u32.to_le_bytes());
    op
}
