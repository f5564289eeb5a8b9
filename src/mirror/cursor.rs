//! Mirror cursors: the newest journal record each mirror confirmed, kept in the state
//! directory so a restart resumes where the mirror stopped.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// Contents of one cursor file (JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Mirror name, as in status.
    pub mirror: String,
    /// Id of the journal the sequence numbers belong to.
    pub journal_id: u64,
    pub seq: u64,
    pub position: u64,
    /// The mirror must be compared with the backing tree and repaired before records after
    /// `seq` apply (set after a crash or when a change could not be journaled).
    pub needs_resync: bool,
}

/// Returns the cursor file of a mirror: the name with every byte outside `[A-Za-z0-9._-]`
/// replaced, plus a CRC32C of the whole name so that two names never share a file.
pub fn path(state_dir: &Path, mirror: &str) -> PathBuf {
    let safe: String = mirror
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(120)
        .collect();
    let crc = crc32c::crc32c(mirror.as_bytes());
    state_dir
        .join("cursors")
        .join(format!("{safe}-{crc:08x}.json"))
}

/// File in the state directory with the JSON list of every mirror whose cursor was stored,
/// so that a cursor file that disappeared is distinguished from a mirror that never had one.
const KNOWN_MIRRORS_FILE: &str = "known-mirrors.json";

/// Lock that serializes [`store`]. Each file it replaces has one temporary name, and two
/// threads may replace the same file: the list above, or a cursor that both the worker and
/// the shutdown store.
static STORE_LOCK: Mutex<()> = Mutex::new(());

/// Reads a cursor; a missing file is `None`, and so is an unreadable one (logged), since a
/// resync repairs the mirror either way. A missing file of a mirror whose cursor was stored
/// before is logged at error level.
pub fn load(state_dir: &Path, mirror: &str) -> Option<Cursor> {
    let path = path(state_dir, mirror);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if known_mirrors(state_dir).iter().any(|known| known == mirror) {
                log::error!(
                    "cursor file {path:?} is missing, although a cursor of mirror {mirror} was \
                     stored before; mirror will be resynced"
                );
            }
            return None;
        }
        Err(e) => {
            log::error!("cannot read cursor file {path:?}: {e}; mirror {mirror} will be resynced");
            return None;
        }
    };
    match serde_json::from_slice::<Cursor>(&text) {
        Ok(cursor) if cursor.mirror == mirror => Some(cursor),
        Ok(cursor) => {
            log::error!(
                "cursor file {path:?} belongs to mirror {} instead of {mirror}; mirror will be resynced",
                cursor.mirror
            );
            None
        }
        Err(e) => {
            log::error!("cursor file {path:?} is corrupt ({e}); mirror {mirror} will be resynced");
            None
        }
    }
}

/// Writes a cursor by replacing the file; `durable` adds the fsyncs that make it survive a
/// power loss.
pub fn store(state_dir: &Path, cursor: &Cursor, durable: bool) -> io::Result<()> {
    // Mirror workers store at the same time at the first mount, and two renames of one
    // temporary file would fail with ENOENT and drop a name from the list.
    let _serial = STORE_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    let path = path(state_dir, &cursor.mirror);
    let dir = path.parent().expect("cursor path has a parent");
    std::fs::create_dir_all(dir)?;
    replace_file(
        &path,
        &serde_json::to_vec(cursor).expect("cursor serializes"),
        durable,
    )?;
    // Every store checks the list, so that a state directory of a release without it gets
    // its mirrors listed too.
    remember(state_dir, &cursor.mirror, durable)
}

/// Returns the mirrors listed in [`KNOWN_MIRRORS_FILE`]; an unreadable list counts as empty,
/// which only lowers the log level of a missing cursor.
fn known_mirrors(state_dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(state_dir.join(KNOWN_MIRRORS_FILE)) else {
        return Vec::new();
    };
    serde_json::from_slice(&text).unwrap_or_default()
}

/// Adds a mirror to [`KNOWN_MIRRORS_FILE`].
fn remember(state_dir: &Path, mirror: &str, durable: bool) -> io::Result<()> {
    let mut known = known_mirrors(state_dir);
    if known.iter().any(|name| name == mirror) {
        return Ok(());
    }
    known.push(mirror.to_string());
    let text = serde_json::to_vec(&known).expect("names serialize");
    replace_file(&state_dir.join(KNOWN_MIRRORS_FILE), &text, durable)
}

/// Replaces `path` with `bytes` through a temporary file and a rename; `durable` adds the
/// fsyncs that make it survive a power loss.
fn replace_file(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().expect("state file path has a parent");
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    if durable {
        file.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor {
            mirror: "dir:/mnt/copy".into(),
            journal_id: 7,
            seq: 42,
            position: 4096,
            needs_resync: false,
        };
        assert_eq!(load(dir.path(), "dir:/mnt/copy"), None);
        store(dir.path(), &cursor, true).unwrap();
        assert_eq!(load(dir.path(), "dir:/mnt/copy"), Some(cursor));
        assert_eq!(load(dir.path(), "dir:/mnt/other"), None);
    }

    #[test]
    fn cursor_corrupt_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = path(dir.path(), "dir:/x");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(dir.path(), "dir:/x"), None);
    }

    #[test]
    fn cursor_missing_after_store_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor {
            mirror: "dir:/mnt/copy".into(),
            ..Cursor::default()
        };
        assert!(known_mirrors(dir.path()).is_empty());
        store(dir.path(), &cursor, false).unwrap();
        store(dir.path(), &cursor, false).unwrap();
        assert_eq!(known_mirrors(dir.path()), ["dir:/mnt/copy"]);
        std::fs::remove_file(path(dir.path(), "dir:/mnt/copy")).unwrap();
        assert_eq!(load(dir.path(), "dir:/mnt/copy"), None);
        assert_eq!(known_mirrors(dir.path()), ["dir:/mnt/copy"]);
    }

    #[test]
    fn concurrent_stores_list_every_mirror() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<Vec<String>> = (0..8)
            .map(|t| (0..40).map(|n| format!("dir:/mnt/m{t}-{n}")).collect())
            .collect();
        std::thread::scope(|scope| {
            for part in &names {
                let dir = dir.path();
                scope.spawn(move || {
                    for name in part {
                        let cursor = Cursor {
                            mirror: name.clone(),
                            ..Cursor::default()
                        };
                        store(dir, &cursor, false)
                            .unwrap_or_else(|e| panic!("store cursor of {name}: {e}"));
                    }
                });
            }
        });
        let mut known = known_mirrors(dir.path());
        known.sort();
        let mut expected: Vec<String> = names.concat();
        expected.sort();
        assert_eq!(known, expected);
    }

    #[test]
    fn cursor_names_do_not_collide() {
        let a = path(Path::new("/s"), "dir:/a b");
        let b = path(Path::new("/s"), "dir:/a_b");
        assert_ne!(a, b);
    }
}
