//! Head of the hash chain of an S3 mirror: the newest journal object, whose SHA-256 the next
//! object records. At open it is found in the store, so a restart, a restore or a new host
//! continues the chain. It is also kept in a file of the state directory, so that objects
//! removed from the store while the daemon was stopped are noticed at the next open, and
//! compared after each replay for a manifest, so that verify notices a store that lost or
//! changed the newest objects while the daemon ran. Nothing here writes to the bucket.

use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use log::warn;
use serde::{Deserialize, Serialize};

use super::super::Error;
use super::object::{self, ObjectHeader, Sha256Digest, object_key};
use super::replay::{self, ReplayStats, Source};

/// The newest object of a chain: number 0 with zeros for an empty history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainHead {
    /// Number of the newest journal object, or of the snapshot that covers it.
    pub number: u64,
    /// SHA-256 of that object as stored; zeros when only a version 1 snapshot index
    /// covers it, since such an index does not record it.
    pub digest: Sha256Digest,
}

/// Contents of the chain head file (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct HeadFile {
    mirror: String,
    number: u64,
    sha256: String,
}

/// Finds the head of the chain of the mirror at `prefix`, whose journal objects are
/// `objects` (as listed, in number order), and returns it with the newest object's header
/// when that decodes.
///
/// # Errors
///
/// A failed request, an unreadable snapshot index, or a newest object encrypted with another
/// key than the mount's (or encrypted while the mount has none), since the mount could only
/// continue the chain with objects that replay rejects.
pub fn find_head(
    source: Source<'_>,
    prefix: &str,
    objects: &[(u64, String)],
) -> Result<(ChainHead, Option<ObjectHeader>), Error> {
    let history = replay::list_history(source.store, prefix, source.name, source.seal)?;
    let snapshot_head = history.snapshot.as_ref().map(|index| ChainHead {
        number: index.number,
        digest: index.chain.unwrap_or_default(),
    });
    let Some((number, key)) = objects.last() else {
        return Ok((snapshot_head.unwrap_or_default(), None));
    };
    let bytes = replay::download(source.store, source.name, key, &mut 0)?;
    // An interrupted fold may leave objects that its snapshot covers. The newest one still
    // gives the header for the position check, and the chain continues after the snapshot.
    let head = match snapshot_head {
        Some(snapshot) if snapshot.number > *number => snapshot,
        _ => ChainHead {
            number: *number,
            digest: object::sha256(&bytes),
        },
    };
    let header = match ObjectHeader::decode(&bytes) {
        Ok(header) => header,
        Err(e) => {
            warn!(
                "mirror {}: cannot read the header of the newest journal object {key}: {e}; \
                 the position check against the cursor is skipped",
                source.name
            );
            return Ok((head, None));
        }
    };
    let expected = source.seal.map(|s| s.key_id());
    match (header.key_id, expected) {
        (Some(found), None) => Err(Error::Setup {
            mirror: source.name.to_string(),
            reason: format!(
                "the newest journal object {key} is encrypted with key id {found:016x}; set \
                 encrypt_key=FILE to that key file to continue this history"
            ),
        }),
        (Some(found), Some(expected)) if found != expected => Err(Error::Setup {
            mirror: source.name.to_string(),
            reason: format!(
                "the newest journal object {key} is encrypted with key id {found:016x}, but \
                 encrypt_key has key id {expected:016x}; use the key file that wrote it"
            ),
        }),
        _ => Ok((head, Some(header))),
    }
}

/// Compares the head recorded in `head_file` by an earlier daemon of this state directory
/// with the store, whose chain now ends at `head`. Returns why they contradict each other,
/// if they do: the store lost or changed objects that this state directory stored.
pub fn check_recorded(
    source: Source<'_>,
    prefix: &str,
    head_file: &Path,
    head: &ChainHead,
    objects: &[(u64, String)],
) -> Option<String> {
    let recorded = read_head_file(head_file, source.name)?;
    let digest = parse_digest(&recorded.sha256)?;
    if recorded.number > head.number {
        return Some(format!(
            "tail truncated: this state directory stored journal object {} ({}, SHA-256 {}), \
             but the chain in the store ends at object {}; the newest objects were removed \
             from the store while the daemon was stopped",
            recorded.number,
            object_key(prefix, recorded.number),
            recorded.sha256,
            head.number
        ));
    }
    let stored = if recorded.number == head.number {
        head.digest
    } else {
        // An object that a fold removed cannot be compared, and needs no comparison: the
        // fold checked the chain through it.
        let (_, key) = objects.iter().find(|(n, _)| *n == recorded.number)?;
        match replay::download(source.store, source.name, key, &mut 0) {
            Ok(bytes) => object::sha256(&bytes),
            Err(e) => {
                warn!("{e}; the chain head recorded in {head_file:?} is not compared");
                return None;
            }
        }
    };
    (stored != [0; 32] && stored != digest).then(|| {
        format!(
            "journal object {} ({}) was replaced: this state directory stored it with SHA-256 \
             {}, but the store has {}",
            recorded.number,
            object_key(prefix, recorded.number),
            recorded.sha256,
            object::hex(&stored)
        )
    })
}

/// Checks a replay of the whole history, which ended at `stats.chain_number`, against
/// `head`, the newest object this daemon knows was stored.
pub fn check_end(
    name: &str,
    prefix: &str,
    stats: &ReplayStats,
    head: &ChainHead,
) -> Result<(), Error> {
    let key = object_key(prefix, head.number);
    let corrupt = |reason: String| Error::CorruptObject {
        mirror: name.to_string(),
        key: key.clone(),
        offset: 0,
        reason,
    };
    if stats.chain_number < head.number {
        return Err(corrupt(format!(
            "tail truncated: this mount stored journal object {} (SHA-256 {}), but the chain \
             in the store ends at object {}; the newest objects were removed",
            head.number,
            object::hex(&head.digest),
            stats.chain_number
        )));
    }
    let is_known = stats.chain_digest != [0; 32] && head.digest != [0; 32];
    if stats.chain_number == head.number && is_known && stats.chain_digest != head.digest {
        return Err(corrupt(format!(
            "journal object {} was replaced: this mount stored it with SHA-256 {}, but the \
             store has {}",
            head.number,
            object::hex(&head.digest),
            object::hex(&stats.chain_digest)
        )));
    }
    Ok(())
}

/// Writes `head` to `head_file`, through a temporary file and a rename. It is not synced:
/// after a crash the file may name an older object, which the store still contains, so the
/// check at open stays correct and only compares less.
pub fn record(head_file: &Path, name: &str, head: &ChainHead) {
    let contents = HeadFile {
        mirror: name.to_string(),
        number: head.number,
        sha256: object::hex(&head.digest),
    };
    let written = (|| -> std::io::Result<()> {
        if let Some(dir) = head_file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let temporary = head_file.with_extension("chain.tmp");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(&contents).map_err(std::io::Error::other)?)?;
        std::fs::rename(&temporary, head_file)
    })();
    if let Err(e) = written {
        warn!(
            "mirror {name}: cannot record the chain head in {head_file:?}: {e}; the next open \
             compares the store with an older head"
        );
    }
}

fn read_head_file(head_file: &Path, name: &str) -> Option<HeadFile> {
    let bytes = match std::fs::read(head_file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!("mirror {name}: cannot read the chain head file {head_file:?}: {e}");
            return None;
        }
    };
    match serde_json::from_slice::<HeadFile>(&bytes) {
        // A file of another mirror that had this index before a change of the mount options.
        Ok(head) if head.mirror != name => None,
        Ok(head) => Some(head),
        Err(e) => {
            warn!("mirror {name}: invalid chain head file {head_file:?}: {e}; not compared");
            None
        }
    }
}

fn parse_digest(text: &str) -> Option<Sha256Digest> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(number: u64, digest: u8) -> ReplayStats {
        ReplayStats {
            chain_number: number,
            chain_digest: [digest; 32],
            ..ReplayStats::default()
        }
    }

    #[test]
    fn end_matches_head() {
        let head = ChainHead {
            number: 5,
            digest: [1; 32],
        };
        assert!(check_end("m", "p", &stats(5, 1), &head).is_ok());
        assert!(check_end("m", "p", &stats(6, 9), &head).is_ok());
        assert!(check_end("m", "p", &stats(0, 0), &ChainHead::default()).is_ok());
    }

    #[test]
    fn end_truncated_or_replaced() {
        let head = ChainHead {
            number: 5,
            digest: [1; 32],
        };
        let error = check_end("m", "p", &stats(3, 1), &head)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("p/.logmirror/journal/00000000000000000005.lmj"),
            "{error}"
        );
        assert!(error.contains("ends at object 3"), "{error}");
        let error = check_end("m", "p", &stats(5, 2), &head)
            .unwrap_err()
            .to_string();
        assert!(error.contains("object 5 was replaced"), "{error}");
    }

    #[test]
    fn digest_parse_round_trips() {
        let digest = object::sha256(b"x");
        assert_eq!(parse_digest(&object::hex(&digest)), Some(digest));
        assert_eq!(parse_digest("00"), None);
    }
}
