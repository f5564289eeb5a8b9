//! Replay of an S3 mirror's history into a directory, for verify, resync, folds and
//! `logmirror restore`: the newest snapshot, then the journal objects after it, in order.
//!
//! Every object is downloaded and checked whole (the store's CRC32C, its header, every
//! frame's length, CRC32C and path) before any of it is applied through a [`DirMirror`],
//! which reaches each path from the directory's descriptor with `O_NOFOLLOW`. Each object's
//! `previous` digest is checked against the SHA-256 of the object before it, or of the
//! object the snapshot covers last (the hash chain), so a removed, replaced, reordered or
//! renumbered object stops the replay at the first break. A replay may stop early at a seq
//! or a time, for point-in-time restores. Nothing here writes to the bucket.

use std::collections::HashMap;

use crate::journal::{Record, Seq};

use super::super::Error;
use super::super::dir::DirMirror;
use super::object::{self, DecodedObject, Sha256Digest, journal_prefix, parse_object_key};
use super::seal::Seal;
use super::snapshot::{self, PartEntry, SnapshotIndex, SnapshotKey};
use super::store::{Store, checksum_header};
use crate::mirror::Mirror;

/// The objects of a mirror's history, as listed.
#[derive(Debug, Default)]
pub struct History {
    /// The newest complete snapshot, if any.
    pub snapshot: Option<SnapshotIndex>,
    /// Journal objects after the snapshot, as (number, key), in number order.
    pub objects: Vec<(u64, String)>,
    /// Journal objects that the snapshot covers, left behind by an interrupted fold.
    pub covered: Vec<String>,
    /// Every key below the snapshot prefix, with what it names.
    pub snapshot_keys: Vec<(SnapshotKey, String)>,
}

impl History {
    /// Returns the number of the newest journal object covered by a snapshot, 0 without one.
    pub fn snapshot_number(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.number)
    }
}

/// Point at which a replay stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayTarget {
    /// Apply the whole history.
    End,
    /// Stop right after the first record with this seq.
    Seq(Seq),
    /// Stop before the first frame committed after this time (ns since the Unix epoch).
    /// The ops of one resync go in whole or not at all, decided by the time of the first.
    Time(u64),
    /// Apply whole journal objects whose newest frame was committed before this time, and
    /// stop at the first other one. Used by folds.
    ObjectsBefore(u64),
}

/// Outcome of a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayEnd {
    /// The history was applied to its end.
    Complete,
    /// The replay stopped at its target; later objects were not applied.
    Reached,
    /// The target lies before the earliest point the history can restore, which is the
    /// state after the frame with `seq` (0 for an op of a resync) committed at `at_ns`.
    BeforeEarliest { seq: Seq, at_ns: u64 },
    /// No record has the target seq: the history goes from record `before` to `after`,
    /// usually because a resync replaced the records between them. Nothing after `before`
    /// but the resync ops between the two was applied.
    SeqMissing { before: Seq, after: Seq },
    /// The history ends before a record with the target seq.
    SeqAfterEnd,
}

/// Counts from replaying a mirror's history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Number of the snapshot applied, if one was.
    pub snapshot: Option<u64>,
    /// Frames applied from the snapshot.
    pub snapshot_frames: u64,
    /// Journal objects downloaded, checked and applied (whole or, at the target, in part).
    pub objects: u64,
    /// Journal object frames applied.
    pub records: u64,
    /// Records left out because an earlier object already carried their seq (a flush that
    /// was stored although its response was lost, and then sent again).
    pub repeated_records: u64,
    /// Journal of the newest record applied; 0 when none was.
    pub journal_id: u64,
    /// Newest journal seq applied; 0 when only resync ops were.
    pub last_seq: Seq,
    /// Commit time of record `last_seq`, in ns since the Unix epoch; 0 when none.
    pub last_seq_at_ns: u64,
    /// Commit time of the newest frame applied, a record or an op of a resync.
    pub last_frame_at_ns: u64,
    /// True when the newest frame applied is an op of a resync.
    pub ends_in_resync: bool,
    pub bytes_downloaded: u64,
    /// Number of the newest journal object applied whole, or of the snapshot when no object
    /// after it was; 0 when neither was.
    pub chain_number: u64,
    /// SHA-256 of that object as stored, taken from the snapshot index after a snapshot.
    /// Zeros when a version 1 snapshot index does not record it, or nothing was applied.
    pub chain_digest: Sha256Digest,
}

/// Lists the history of the mirror at `prefix`: the newest complete snapshot (its index is
/// downloaded and checked) and the journal objects after it.
///
/// Any other key below the journal or snapshot prefix is an error, because it may be an
/// object this version cannot read. Parts without an index are the remains of an
/// interrupted fold and are left out.
///
/// NOTE: a fold in another process may remove listed objects before they are downloaded.
/// The replay then fails with NoSuchKey, and a new listing starts from the new snapshot.
pub fn list_history(
    store: &Store,
    prefix: &str,
    name: &str,
    seal: Option<&Seal>,
) -> Result<History, Error> {
    let objects = list_objects(store, prefix, name)?;
    let snapshot_keys = list_snapshot_keys(store, prefix, name)?;
    let newest = snapshot_keys
        .iter()
        .filter_map(|(parsed, key)| match parsed {
            SnapshotKey::Index { number } => Some((*number, key)),
            SnapshotKey::Part { .. } => None,
        })
        .max();
    let snapshot = match newest {
        Some((number, key)) => Some(fetch_index(store, name, key, number, seal)?),
        None => None,
    };
    let covered_through = snapshot.as_ref().map_or(0, |s| s.number);
    let (covered, objects): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(number, _)| *number <= covered_through);
    Ok(History {
        snapshot,
        objects,
        covered: covered.into_iter().map(|(_, key)| key).collect(),
        snapshot_keys,
    })
}

/// Lists the journal objects as (number, key), in number order.
pub fn list_objects(store: &Store, prefix: &str, name: &str) -> Result<Vec<(u64, String)>, Error> {
    let listed_prefix = journal_prefix(prefix);
    let keys = list(store, &listed_prefix, name)?;
    let mut objects = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(number) = parse_object_key(prefix, &key) else {
            return Err(stray_key(
                name,
                key,
                "a journal object's (NUMBER.lmj with 20 digits)",
            ));
        };
        objects.push((number, key));
    }
    objects.sort();
    Ok(objects)
}

/// Lists the keys below the snapshot prefix with what each names.
pub fn list_snapshot_keys(
    store: &Store,
    prefix: &str,
    name: &str,
) -> Result<Vec<(SnapshotKey, String)>, Error> {
    let keys = list(store, &snapshot::snapshot_prefix(prefix), name)?;
    let mut parsed = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(what) = snapshot::parse_snapshot_key(prefix, &key) else {
            return Err(stray_key(
                name,
                key,
                "a snapshot's (NUMBER.lmi or NUMBER/PART.lms)",
            ));
        };
        parsed.push((what, key));
    }
    Ok(parsed)
}

fn list(store: &Store, listed_prefix: &str, name: &str) -> Result<Vec<String>, Error> {
    store.list(listed_prefix).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "listing of",
        key: listed_prefix.to_string(),
        source: Box::new(source),
    })
}

fn stray_key(name: &str, key: String, expected: &str) -> Error {
    Error::CorruptObject {
        mirror: name.to_string(),
        key,
        offset: 0,
        reason: format!("the key is not {expected}; move it out of the .logmirror prefix"),
    }
}

/// The store, the mirror's name and its key, which every download of a replay needs.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub store: &'a Store,
    pub name: &'a str,
    pub seal: Option<&'a Seal>,
}

/// Replays `history` into `target` until `until`, counting into `stats` and calling
/// `progress` after each object. `stats` is kept up to date also when an error stops the
/// replay; `target` then contains the tree as of the last frame applied.
pub fn replay(
    source: Source<'_>,
    history: &History,
    target: &mut DirMirror,
    until: ReplayTarget,
    stats: &mut ReplayStats,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<ReplayEnd, Error> {
    let name = source.name;
    let mut cut = Cut::new(until);
    let mut chain = Chain::start(history.snapshot.as_ref());
    // Newest seq applied per journal, to leave out records an earlier object carried.
    let mut newest: HashMap<u64, Seq> = HashMap::new();
    if let Some(index) = &history.snapshot {
        if let Some(earliest) = cut.check_snapshot(index) {
            return Ok(earliest);
        }
        apply_snapshot(source, history, index, target, stats, progress)?;
        stats.chain_number = index.number;
        stats.chain_digest = index.chain.unwrap_or_default();
        newest.insert(index.journal_id, index.last_seq);
        cut.after_snapshot(index);
        if cut.reached {
            return Ok(ReplayEnd::Reached);
        }
    }

    let first_number = history.snapshot_number() + 1;
    for (expected, (number, key)) in (first_number..).zip(&history.objects) {
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
        let (decoded, digest) = fetch_object(source, key, *number, stats)?;
        chain
            .check(&decoded, key)
            .map_err(|(offset, reason)| Error::CorruptObject {
                mirror: name.to_string(),
                key: key.clone(),
                offset,
                reason,
            })?;
        if let ReplayTarget::ObjectsBefore(cutoff_ns) = until
            && newest_frame_ns(&decoded) >= cutoff_ns
        {
            return Ok(ReplayEnd::Reached);
        }
        chain.advance(&decoded, key, digest);
        let journal_id = decoded.header.journal_id;
        let journal_newest = newest.entry(journal_id).or_default();
        for (index, record) in decoded.records.into_iter().enumerate() {
            if record.seq != Seq(0) && record.seq <= *journal_newest {
                stats.repeated_records += 1;
                continue;
            }
            match cut.verdict(&record, stats) {
                Verdict::Apply => {}
                Verdict::Stop(end) => {
                    stats.objects += 1;
                    progress(stats);
                    return Ok(end);
                }
            }
            if record.seq != Seq(0) {
                *journal_newest = record.seq;
            }
            target.apply(&record.op).map_err(|source| Error::Replay {
                mirror: name.to_string(),
                key: key.clone(),
                index,
                seq: record.seq,
                source: Box::new(source),
            })?;
            stats.records += 1;
            note_applied(stats, journal_id, &record);
            cut.applied(&record);
        }
        stats.chain_number = *number;
        stats.chain_digest = digest;
        stats.objects += 1;
        progress(stats);
        if cut.reached {
            return Ok(ReplayEnd::Reached);
        }
    }
    Ok(cut.at_end())
}

/// The hash chain as a replay walks it: what the next object must record as its
/// predecessor's digest, and which protections the history already showed, so that an
/// object without them (a downgrade) is rejected.
struct Chain {
    /// SHA-256 the next object must record; `None` when the predecessor's digest is unknown
    /// (after a version 1 snapshot index).
    expected: Option<Sha256Digest>,
    /// Source of `expected`, for messages: an object with its key, or a snapshot index.
    predecessor: String,
    /// A chained object (version 2) or snapshot came before.
    chained: bool,
    /// An encrypted object or sealed snapshot came before.
    sealed: bool,
    /// The next object is the first after a snapshot that is not sealed.
    after_unsealed_snapshot: bool,
}

impl Chain {
    fn start(snapshot: Option<&SnapshotIndex>) -> Chain {
        match snapshot {
            Some(index) => Chain {
                expected: index.chain,
                predecessor: format!(
                    "the index of snapshot {}, which records it for folded object {}",
                    index.number, index.number
                ),
                chained: index.chain.is_some(),
                sealed: index.key_id.is_some(),
                after_unsealed_snapshot: index.key_id.is_none(),
            },
            None => Chain {
                expected: Some([0; 32]),
                predecessor: "the start of the history, which is zeros".to_string(),
                chained: false,
                sealed: false,
                after_unsealed_snapshot: false,
            },
        }
    }

    /// Checks `object`'s place in the chain. Returns the header offset and the reason of a
    /// break.
    fn check(&self, object: &DecodedObject, key: &str) -> Result<(), (u64, String)> {
        let number = object.header.number;
        let Some(recorded) = object.header.previous else {
            if self.chained {
                return Err((
                    8,
                    format!(
                        "hash chain broken at object {number} ({key}): it is a version 1 \
                         object without a chain, but chained objects come before it; an \
                         older object was put in its place"
                    ),
                ));
            }
            return Ok(());
        };
        if self.after_unsealed_snapshot && object.header.key_id.is_some() {
            // Without the key anyone can write a snapshot, and the encrypted object after it
            // binds only the digest that the index repeats, not the tree in its parts.
            // NOTE: a snapshot folded before encrypt_key was set is rejected here too.
            return Err((
                52,
                format!(
                    "object {number} ({key}) is encrypted, but the index of snapshot {} \
                     before it is not sealed; a snapshot before encrypted objects must be \
                     sealed with the same key, so this one was forged or written before \
                     encrypt_key was set",
                    number - 1
                ),
            ));
        }
        if self.sealed && object.header.key_id.is_none() {
            return Err((
                52,
                format!(
                    "object {number} ({key}) is not encrypted, but encrypted objects come \
                     before it; it was not written by the mount that holds the key"
                ),
            ));
        }
        match self.expected {
            Some(expected) if expected != recorded => Err((
                56,
                format!(
                    "hash chain broken at object {number} ({key}): it records SHA-256 {} for \
                     its predecessor, but expected {} from {}; object {} was replaced or \
                     removed, or objects were reordered or renumbered",
                    object::hex(&recorded),
                    object::hex(&expected),
                    self.predecessor,
                    number - 1
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Moves past `object`, whose stored bytes have SHA-256 `digest`.
    fn advance(&mut self, object: &DecodedObject, key: &str, digest: Sha256Digest) {
        self.expected = Some(digest);
        self.predecessor = format!("object {} ({key}) as stored", object.header.number);
        self.after_unsealed_snapshot = false;
        self.chained |= object.header.previous.is_some();
        self.sealed |= object.header.key_id.is_some();
    }
}

/// Updates the newest-frame fields of `stats` after `record` was applied.
fn note_applied(stats: &mut ReplayStats, journal_id: u64, record: &Record) {
    stats.last_frame_at_ns = record.committed_at_ns;
    stats.ends_in_resync = record.seq == Seq(0);
    if record.seq != Seq(0) {
        stats.journal_id = journal_id;
        stats.last_seq = record.seq;
        stats.last_seq_at_ns = record.committed_at_ns;
    }
}

/// Returns the commit time of the newest frame of an object (0 for an object without
/// frames).
pub fn newest_frame_ns(object: &DecodedObject) -> u64 {
    object
        .records
        .iter()
        .map(|r| r.committed_at_ns)
        .max()
        .unwrap_or(0)
}

/// Decision about one frame.
enum Verdict {
    Apply,
    Stop(ReplayEnd),
}

/// Decides, frame by frame, where a replay stops.
struct Cut {
    until: ReplayTarget,
    /// The target seq was applied, so nothing after it may be.
    reached: bool,
    /// The previous frame applied was an op of a resync, so the next one of the same
    /// resync goes in too.
    in_resync: bool,
    has_applied: bool,
}

impl Cut {
    fn new(until: ReplayTarget) -> Cut {
        Cut {
            until,
            reached: false,
            in_resync: false,
            has_applied: false,
        }
    }

    /// Returns the earliest point when the target lies before the snapshot.
    fn check_snapshot(&self, index: &SnapshotIndex) -> Option<ReplayEnd> {
        let before = match self.until {
            ReplayTarget::Seq(seq) => seq < index.last_seq,
            ReplayTarget::Time(ns) => ns < index.last_frame_at_ns,
            ReplayTarget::End | ReplayTarget::ObjectsBefore(_) => false,
        };
        before.then_some(ReplayEnd::BeforeEarliest {
            seq: index.last_seq,
            at_ns: index.last_frame_at_ns,
        })
    }

    fn after_snapshot(&mut self, index: &SnapshotIndex) {
        self.has_applied = true;
        self.in_resync = index.ends_in_resync;
        self.reached = self.until == ReplayTarget::Seq(index.last_seq);
    }

    fn verdict(&mut self, record: &Record, stats: &ReplayStats) -> Verdict {
        if self.reached {
            return Verdict::Stop(ReplayEnd::Reached);
        }
        let is_resync_op = record.seq == Seq(0);
        let admitted = match self.until {
            ReplayTarget::End | ReplayTarget::ObjectsBefore(_) => true,
            ReplayTarget::Time(ns) => {
                (is_resync_op && self.in_resync) || record.committed_at_ns <= ns
            }
            // NOTE: seqs start again in a new journal, so the first journal whose records
            // reach the target seq decides where the replay stops.
            ReplayTarget::Seq(seq) if is_resync_op || record.seq <= seq => true,
            ReplayTarget::Seq(_) if self.has_applied => {
                return Verdict::Stop(ReplayEnd::SeqMissing {
                    before: stats.last_seq,
                    after: record.seq,
                });
            }
            ReplayTarget::Seq(_) => false,
        };
        if admitted {
            return Verdict::Apply;
        }
        if self.has_applied {
            return Verdict::Stop(ReplayEnd::Reached);
        }
        // Nothing was applied, so this is the first frame of the history.
        Verdict::Stop(ReplayEnd::BeforeEarliest {
            seq: record.seq,
            at_ns: record.committed_at_ns,
        })
    }

    fn applied(&mut self, record: &Record) {
        self.has_applied = true;
        self.in_resync = record.seq == Seq(0);
        if self.until == ReplayTarget::Seq(record.seq) {
            self.reached = true;
        }
    }

    fn at_end(&self) -> ReplayEnd {
        match self.until {
            _ if self.reached => ReplayEnd::Reached,
            ReplayTarget::Seq(_) => ReplayEnd::SeqAfterEnd,
            _ => ReplayEnd::Complete,
        }
    }
}

/// Downloads, checks and applies every part of the snapshot `index`.
fn apply_snapshot(
    source: Source<'_>,
    history: &History,
    index: &SnapshotIndex,
    target: &mut DirMirror,
    stats: &mut ReplayStats,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<(), Error> {
    let name = source.name;
    let part_key_of = |part: u32| {
        history
            .snapshot_keys
            .iter()
            .find(|(parsed, _)| {
                *parsed
                    == SnapshotKey::Part {
                        number: index.number,
                        part,
                    }
            })
            .map(|(_, key)| key.clone())
    };
    stats.snapshot = Some(index.number);
    for (part, entry) in (1u32..).zip(&index.parts) {
        let Some(key) = part_key_of(part) else {
            return Err(Error::CorruptObject {
                mirror: name.to_string(),
                key: format!("part {part} of snapshot {}", index.number),
                offset: 0,
                reason: "the part is missing from the bucket".into(),
            });
        };
        let decoded = fetch_part(source, &key, index.number, part, entry, stats)?;
        for (position, record) in decoded.records.into_iter().enumerate() {
            target.apply(&record.op).map_err(|source| Error::Replay {
                mirror: name.to_string(),
                key: key.clone(),
                index: position,
                seq: Seq(0),
                source: Box::new(source),
            })?;
            stats.snapshot_frames += 1;
        }
        progress(stats);
    }
    stats.journal_id = index.journal_id;
    stats.last_seq = index.last_seq;
    stats.last_seq_at_ns = index.last_seq_at_ns;
    stats.last_frame_at_ns = index.last_frame_at_ns;
    stats.ends_in_resync = index.ends_in_resync;
    Ok(())
}

/// Downloads a snapshot's index and checks it.
fn fetch_index(
    store: &Store,
    name: &str,
    key: &str,
    number: u64,
    seal: Option<&Seal>,
) -> Result<SnapshotIndex, Error> {
    let bytes = download(store, name, key, &mut 0)?;
    SnapshotIndex::decode(&bytes, number, seal).map_err(|e| Error::CorruptObject {
        mirror: name.to_string(),
        key: key.to_string(),
        offset: 0,
        reason: e.to_string(),
    })
}

/// Downloads part `part` of snapshot `number` and checks it whole against its index entry.
pub fn fetch_part(
    source: Source<'_>,
    key: &str,
    number: u64,
    part: u32,
    entry: &PartEntry,
    stats: &mut ReplayStats,
) -> Result<DecodedObject, Error> {
    let Source { store, name, seal } = source;
    let corrupt = |offset: u64, reason: String| Error::CorruptObject {
        mirror: name.to_string(),
        key: key.to_string(),
        offset,
        reason,
    };
    let bytes = download(store, name, key, &mut stats.bytes_downloaded)?;
    let crc = crc32c::crc32c(&bytes);
    if bytes.len() as u64 != entry.bytes || crc != entry.crc32c {
        return Err(corrupt(
            0,
            format!(
                "the part has {} bytes with CRC32C {crc:#010x}, but the snapshot index gives \
                 {} bytes with CRC32C {:#010x}",
                bytes.len(),
                entry.bytes,
                entry.crc32c
            ),
        ));
    }
    let decoded = object::decode_object(&bytes, u64::from(part), seal)
        .map_err(|fault| corrupt(fault.offset, fault.error.to_string()))?;
    if decoded.header.journal_id != number {
        return Err(corrupt(
            16,
            format!(
                "the part names snapshot {}, but its key names {number}",
                decoded.header.journal_id
            ),
        ));
    }
    if decoded.header.frame_count != entry.frame_count {
        return Err(corrupt(
            48,
            format!(
                "the part has {} frames, but the snapshot index gives {}",
                decoded.header.frame_count, entry.frame_count
            ),
        ));
    }
    if decoded.header.last_seq != Seq(0) {
        return Err(corrupt(
            40,
            "a snapshot part carries a journal record; only ops without seq belong there".into(),
        ));
    }
    Ok(decoded)
}

/// Downloads one journal object and checks it whole before any of it is applied. Returns
/// it with the SHA-256 of its stored bytes.
pub fn fetch_object(
    source: Source<'_>,
    key: &str,
    number: u64,
    stats: &mut ReplayStats,
) -> Result<(DecodedObject, Sha256Digest), Error> {
    let Source { store, name, seal } = source;
    let bytes = download(store, name, key, &mut stats.bytes_downloaded)?;
    let decoded =
        object::decode_object(&bytes, number, seal).map_err(|fault| Error::CorruptObject {
            mirror: name.to_string(),
            key: key.to_string(),
            offset: fault.offset,
            reason: fault.error.to_string(),
        })?;
    Ok((decoded, object::sha256(&bytes)))
}

/// Downloads an object and checks it against the CRC32C the store keeps for it, if any.
pub fn download(
    store: &Store,
    name: &str,
    key: &str,
    bytes_downloaded: &mut u64,
) -> Result<Vec<u8>, Error> {
    let fetched = store.get(key).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "download of",
        key: key.to_string(),
        source: Box::new(source),
    })?;
    *bytes_downloaded += fetched.bytes.len() as u64;
    if let Some(stored) = &fetched.crc32c {
        let computed = checksum_header(&fetched.bytes);
        if *stored != computed {
            return Err(Error::CorruptObject {
                mirror: name.to_string(),
                key: key.to_string(),
                offset: 0,
                reason: format!(
                    "the store's CRC32C {stored} does not match the downloaded bytes \
                     ({computed})"
                ),
            });
        }
    }
    Ok(fetched.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Op, RelPath};

    /// Returns a frame with `seq` (0 for an op of a resync) committed at `at_ns`.
    fn frame(seq: u64, at_ns: u64) -> Record {
        Record {
            seq: Seq(seq),
            committed_at_ns: at_ns,
            op: Op::Unlink {
                path: RelPath::from_bytes(b"f").expect("valid path"),
            },
        }
    }

    /// Runs the cut over `frames` as `replay` does and returns the (seq, time) of each frame
    /// applied and how the replay ended.
    fn cut_over(
        until: ReplayTarget,
        snapshot: Option<&SnapshotIndex>,
        frames: &[(u64, u64)],
    ) -> (Vec<(u64, u64)>, ReplayEnd) {
        let mut cut = Cut::new(until);
        let mut stats = ReplayStats::default();
        if let Some(index) = snapshot {
            if let Some(end) = cut.check_snapshot(index) {
                return (Vec::new(), end);
            }
            stats.last_seq = index.last_seq;
            cut.after_snapshot(index);
            if cut.reached {
                return (Vec::new(), ReplayEnd::Reached);
            }
        }
        let mut applied = Vec::new();
        for &(seq, at_ns) in frames {
            let record = frame(seq, at_ns);
            if let Verdict::Stop(end) = cut.verdict(&record, &stats) {
                return (applied, end);
            }
            note_applied(&mut stats, 1, &record);
            cut.applied(&record);
            applied.push((seq, at_ns));
        }
        (applied, cut.at_end())
    }

    /// Records 1 and 2, a resync of two ops, then records 5 and 6.
    const HISTORY: [(u64, u64); 6] = [(1, 10), (2, 20), (0, 25), (0, 35), (5, 40), (6, 50)];

    #[test]
    fn cut_time_keeps_resync_whole() {
        let (applied, end) = cut_over(ReplayTarget::Time(30), None, &HISTORY);
        assert_eq!(applied, HISTORY[..4]);
        assert_eq!(end, ReplayEnd::Reached);

        let (applied, end) = cut_over(ReplayTarget::Time(22), None, &HISTORY);
        assert_eq!(applied, HISTORY[..2]);
        assert_eq!(end, ReplayEnd::Reached);

        let (applied, end) = cut_over(ReplayTarget::Time(40), None, &HISTORY);
        assert_eq!(applied, HISTORY[..5]);
        assert_eq!(end, ReplayEnd::Reached);

        let (applied, end) = cut_over(ReplayTarget::Time(100), None, &HISTORY);
        assert_eq!(applied, HISTORY);
        assert_eq!(end, ReplayEnd::Complete);
    }

    #[test]
    fn cut_time_before_first_frame() {
        let (applied, end) = cut_over(ReplayTarget::Time(9), None, &HISTORY);
        assert_eq!(applied, Vec::new());
        assert_eq!(
            end,
            ReplayEnd::BeforeEarliest {
                seq: Seq(1),
                at_ns: 10
            }
        );
    }

    #[test]
    fn cut_seq_stops_after_record() {
        let (applied, end) = cut_over(ReplayTarget::Seq(Seq(2)), None, &HISTORY);
        assert_eq!(applied, HISTORY[..2]);
        assert_eq!(end, ReplayEnd::Reached);

        let (applied, end) = cut_over(ReplayTarget::Seq(Seq(6)), None, &HISTORY);
        assert_eq!(applied, HISTORY);
        assert_eq!(end, ReplayEnd::Reached);
    }

    #[test]
    fn cut_seq_missing_and_after_end() {
        let (applied, end) = cut_over(ReplayTarget::Seq(Seq(3)), None, &HISTORY);
        assert_eq!(applied, HISTORY[..4]);
        assert_eq!(
            end,
            ReplayEnd::SeqMissing {
                before: Seq(2),
                after: Seq(5)
            }
        );

        let (applied, end) = cut_over(ReplayTarget::Seq(Seq(7)), None, &HISTORY);
        assert_eq!(applied, HISTORY);
        assert_eq!(end, ReplayEnd::SeqAfterEnd);

        let (applied, end) = cut_over(ReplayTarget::Seq(Seq(4)), None, &HISTORY[4..]);
        assert_eq!(applied, Vec::new());
        assert_eq!(
            end,
            ReplayEnd::BeforeEarliest {
                seq: Seq(5),
                at_ns: 40
            }
        );
    }

    fn snapshot_index(ends_in_resync: bool) -> SnapshotIndex {
        SnapshotIndex {
            number: 4,
            journal_id: 1,
            last_seq: Seq(10),
            last_seq_at_ns: 90,
            last_frame_at_ns: 100,
            ends_in_resync,
            frame_count: 0,
            parts: Vec::new(),
            chain: Some([0; 32]),
            key_id: None,
        }
    }

    #[test]
    fn cut_before_snapshot() {
        let index = snapshot_index(false);
        let earliest = ReplayEnd::BeforeEarliest {
            seq: Seq(10),
            at_ns: 100,
        };
        let later = [(11, 110)];
        assert_eq!(
            cut_over(ReplayTarget::Seq(Seq(9)), Some(&index), &later),
            (Vec::new(), earliest)
        );
        assert_eq!(
            cut_over(ReplayTarget::Time(99), Some(&index), &later),
            (Vec::new(), earliest)
        );
        assert_eq!(
            cut_over(ReplayTarget::Seq(Seq(10)), Some(&index), &later),
            (Vec::new(), ReplayEnd::Reached)
        );
        assert_eq!(
            cut_over(ReplayTarget::Time(100), Some(&index), &later),
            (Vec::new(), ReplayEnd::Reached)
        );
        assert_eq!(
            cut_over(ReplayTarget::Seq(Seq(11)), Some(&index), &later),
            (later.to_vec(), ReplayEnd::Reached)
        );
    }

    #[test]
    fn cut_continues_resync_after_snapshot() {
        let later = [(0, 150), (0, 160), (11, 170)];
        let index = snapshot_index(true);
        let (applied, end) = cut_over(ReplayTarget::Time(120), Some(&index), &later);
        assert_eq!(applied, later[..2]);
        assert_eq!(end, ReplayEnd::Reached);

        let index = snapshot_index(false);
        let (applied, end) = cut_over(ReplayTarget::Time(120), Some(&index), &later);
        assert_eq!(applied, Vec::new());
        assert_eq!(end, ReplayEnd::Reached);
    }
}
