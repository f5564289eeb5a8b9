//! The copier's state per file: the state of its copy in the store, which bytes changed
//! since the copy was written, and the file's size at the copier's journal position.
//!
//! [`Tracker::apply`] takes the journal's ops in order. Changes to content only mark a file;
//! changes to names return the store actions (delete, move) that keep the keys in line with
//! the paths. Nothing here does I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::journal::{Op, RelPath};

use super::plan::Checkpoints;

/// `renameat2` flag that swaps two names.
const RENAME_EXCHANGE: u32 = 2;

/// `fallocate` mode bits that keep the file size.
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;

/// State of the object at a file's key, as far as the copier has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Not looked up yet: a file the copier has not written since it started.
    Unknown,
    /// No object, or one whose content is not trusted, so the next update writes it whole.
    Absent,
    /// An object whose content the copier has CRC32C checkpoints of.
    Present(StoredObject),
}

/// A copy in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// ETag, quotes included, for copying its bytes only while it is unchanged.
    pub etag: String,
    pub checkpoints: Checkpoints,
}

impl StoredObject {
    pub fn size(&self) -> u64 {
        self.checkpoints.size()
    }
}

/// The file's size at the copier's journal position, as far as the records give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeTrack {
    /// Exactly this size.
    Known(u64),
    /// At least this size, and the size of the stored copy if that is larger: the file
    /// grew by writes since its copy was written.
    AtLeast(u64),
    /// Not known; the backing file's current size is taken.
    Unknown,
}

/// A file whose content changed after its copy was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    /// First byte that may differ from the copy.
    pub from: u64,
    /// When the file first changed after its copy was written.
    pub since: Instant,
}

/// The copier's state of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileCopy {
    pub stored: Stored,
    /// `None` while the copy is as new as the file.
    pub dirty: Option<Dirty>,
    pub size: SizeTrack,
    /// Update at the next pass instead of after the interval: the file was closed or
    /// renamed.
    pub urgent: bool,
}

impl FileCopy {
    /// Returns the state of a file just created, empty, with no copy yet.
    fn created(now: Instant) -> FileCopy {
        FileCopy {
            stored: Stored::Absent,
            dirty: Some(Dirty {
                from: 0,
                since: now,
            }),
            size: SizeTrack::Known(0),
            urgent: false,
        }
    }

    /// Returns the state of a file the copier knew nothing about.
    fn unknown() -> FileCopy {
        FileCopy {
            stored: Stored::Unknown,
            dirty: None,
            size: SizeTrack::AtLeast(0),
            urgent: false,
        }
    }

    /// Marks bytes from `from` on as changed.
    pub fn mark(&mut self, from: u64, now: Instant) {
        match &mut self.dirty {
            Some(dirty) => dirty.from = dirty.from.min(from),
            None => self.dirty = Some(Dirty { from, since: now }),
        }
    }

    /// Records a new copy of `size` bytes.
    pub fn written(&mut self, object: StoredObject) {
        self.size = SizeTrack::Known(object.size());
        self.stored = Stored::Present(object);
        self.dirty = None;
        self.urgent = false;
    }

    fn grow(&mut self, end: u64) {
        self.size = match self.size {
            SizeTrack::Known(size) => SizeTrack::Known(size.max(end)),
            SizeTrack::AtLeast(size) => SizeTrack::AtLeast(size.max(end)),
            SizeTrack::Unknown => SizeTrack::Unknown,
        };
    }
}

/// Change of a file's content or name that an op makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Bytes from `from` on changed. `end` is the end of the bytes written, when the op
    /// only writes and so grows the file to at least that. `size` is the new size, when the
    /// op sets one.
    Data {
        path: RelPath,
        from: u64,
        end: Option<u64>,
        size: Option<u64>,
    },
    /// Like `Data`, but the new size is not known (some `fallocate` modes).
    Reshaped {
        path: RelPath,
        from: u64,
    },
    Created {
        path: RelPath,
    },
    Closed {
        path: RelPath,
    },
    Removed {
        path: RelPath,
    },
    Renamed {
        from: RelPath,
        to: RelPath,
        exchange: bool,
    },
    Linked {
        path: RelPath,
    },
    /// Nothing that a copy shows (directories, links, modes, owners, times, xattrs).
    Nothing,
}

impl Change {
    /// Returns what `op` changes in the readable copies.
    pub fn of(op: &Op) -> Change {
        match op {
            Op::Write { path, offset, data } => Change::Data {
                path: path.clone(),
                from: *offset,
                end: Some(offset.saturating_add(data.len() as u64)),
                size: None,
            },
            Op::Truncate { path, size } => Change::Data {
                path: path.clone(),
                from: *size,
                end: None,
                size: Some(*size),
            },
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => fallocate_change(path, *mode, *offset, *length),
            Op::Create { path, .. } => Change::Created { path: path.clone() },
            Op::CloseWrite { path } => Change::Closed { path: path.clone() },
            Op::Unlink { path } => Change::Removed { path: path.clone() },
            Op::Rename { from, to, flags } => Change::Renamed {
                from: from.clone(),
                to: to.clone(),
                exchange: flags & RENAME_EXCHANGE != 0,
            },
            Op::Link { path, .. } => Change::Linked { path: path.clone() },
            Op::Mknod { .. }
            | Op::Mkdir { .. }
            | Op::Symlink { .. }
            | Op::Rmdir { .. }
            | Op::SetMode { .. }
            | Op::SetOwner { .. }
            | Op::SetTimes { .. }
            | Op::SetXattr { .. }
            | Op::RemoveXattr { .. } => Change::Nothing,
        }
    }

    /// Merges `next`, the change that follows this one, into it when both only change the
    /// content of the same file, so that a queue of small writes stays short.
    pub fn merge(&mut self, next: &Change) -> bool {
        let (
            Change::Data {
                path,
                from,
                end,
                size,
            },
            Change::Data {
                path: next_path,
                from: next_from,
                end: next_end,
                size: next_size,
            },
        ) = (&mut *self, next)
        else {
            return matches!(next, Change::Nothing);
        };
        if path != next_path {
            return false;
        }
        *from = (*from).min(*next_from);
        match (next_size, next_end) {
            (Some(new_size), _) => {
                *size = Some(*new_size);
                *end = None;
            }
            (None, Some(new_end)) => match size {
                Some(set) => *set = (*set).max(*new_end),
                None => *end = Some(end.unwrap_or(0).max(*new_end)),
            },
            (None, None) => {}
        }
        true
    }
}

/// Returns the change a `fallocate` makes to content and size.
fn fallocate_change(path: &RelPath, mode: i32, offset: u64, length: u64) -> Change {
    let path = path.clone();
    if mode == 0 {
        // Plain allocation: zeros past the end, and the size grows to cover the range.
        return Change::Data {
            path,
            from: offset,
            end: Some(offset.saturating_add(length)),
            size: None,
        };
    }
    if mode & FALLOC_FL_KEEP_SIZE != 0 && mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) == 0
    {
        // Allocation or a punched hole that keeps the size: bytes may become zeros.
        return Change::Data {
            path,
            from: offset,
            end: None,
            size: None,
        };
    }
    // Zero, collapse or insert range: the size may change in ways the op does not give.
    Change::Reshaped { path, from: offset }
}

/// A change to make in the store, in journal order, before any later copy is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Delete the copy of a removed file.
    Delete(RelPath),
    /// Move the copies of `from` and everything below it to `to`, replacing the copy at
    /// `to`. The copy of a file replaced at `to` is deleted when `from` has none.
    Move { from: RelPath, to: RelPath },
    /// Swap the copies of two paths and of everything below them.
    Exchange { a: RelPath, b: RelPath },
}

/// Every file the copier has state for, by path at its journal position.
#[derive(Debug, Default)]
pub struct Tracker {
    files: BTreeMap<RelPath, FileCopy>,
}

impl Tracker {
    /// Builds a tracker from the files found by a comparison with the store.
    pub fn from_files(files: BTreeMap<RelPath, FileCopy>) -> Tracker {
        Tracker { files }
    }

    /// Applies the next change in journal order and returns the store actions it needs.
    pub fn apply(&mut self, change: Change, now: Instant) -> Vec<Action> {
        match change {
            Change::Data {
                path,
                from,
                end,
                size,
            } => {
                // NOTE: only the name a write came through is marked, so the copies at a
                // hard-linked file's other names keep their old content.
                let file = self.files.entry(path).or_insert_with(FileCopy::unknown);
                if let Some(size) = size {
                    file.size = SizeTrack::Known(size);
                }
                if let Some(end) = end {
                    file.grow(end);
                }
                file.mark(from, now);
                Vec::new()
            }
            Change::Reshaped { path, from } => {
                let file = self.files.entry(path).or_insert_with(FileCopy::unknown);
                file.size = SizeTrack::Unknown;
                file.mark(from, now);
                Vec::new()
            }
            Change::Created { path } => {
                self.files.insert(path, FileCopy::created(now));
                Vec::new()
            }
            Change::Closed { path } => {
                if let Some(file) = self.files.get_mut(&path)
                    && file.dirty.is_some()
                {
                    file.urgent = true;
                }
                Vec::new()
            }
            Change::Removed { path } => {
                self.files.remove(&path);
                vec![Action::Delete(path)]
            }
            Change::Linked { path } => {
                let mut file = FileCopy::created(now);
                file.size = SizeTrack::Unknown;
                file.urgent = true;
                self.files.insert(path, file);
                Vec::new()
            }
            Change::Renamed { from, to, exchange } if exchange => {
                let moved_a = self.take_below(&from);
                let moved_b = self.take_below(&to);
                self.put_below(&to, &from, moved_a);
                self.put_below(&from, &to, moved_b);
                vec![Action::Exchange { a: from, b: to }]
            }
            Change::Renamed { from, to, .. } => {
                if from == to {
                    return Vec::new();
                }
                self.take_below(&to);
                let moved = self.take_below(&from);
                self.put_below(&to, &from, moved);
                vec![Action::Move { from, to }]
            }
            Change::Nothing => Vec::new(),
        }
    }

    /// Removes and returns the files at `path` and below it.
    fn take_below(&mut self, path: &RelPath) -> BTreeMap<RelPath, FileCopy> {
        let below: Vec<RelPath> = self
            .files
            .range(path.clone()..)
            .take_while(|(p, _)| p.as_bytes().starts_with(path.as_bytes()))
            .filter(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect();
        below
            .into_iter()
            .filter_map(|p| self.files.remove(&p).map(|file| (p, file)))
            .collect()
    }

    /// Inserts `moved`, files taken from below `old`, below `new`, marked for an update at
    /// the next pass so that renamed files are copied again when they changed.
    fn put_below(&mut self, new: &RelPath, old: &RelPath, moved: BTreeMap<RelPath, FileCopy>) {
        for (path, mut file) in moved {
            let Some(rest) = path.as_bytes().get(old.as_bytes().len()..) else {
                continue;
            };
            let mut bytes = new.as_bytes().to_vec();
            bytes.extend_from_slice(rest);
            let Some(target) = RelPath::from_bytes(&bytes) else {
                continue;
            };
            file.urgent = file.dirty.is_some();
            self.files.insert(target, file);
        }
    }

    pub fn get(&self, path: &RelPath) -> Option<&FileCopy> {
        self.files.get(path)
    }

    pub fn get_mut(&mut self, path: &RelPath) -> Option<&mut FileCopy> {
        self.files.get_mut(path)
    }

    pub fn remove(&mut self, path: &RelPath) -> Option<FileCopy> {
        self.files.remove(path)
    }

    /// Returns the paths of files whose copy is older than the file, in path order.
    pub fn dirty_paths(&self) -> Vec<RelPath> {
        self.files
            .iter()
            .filter(|(_, file)| file.dirty.is_some())
            .map(|(path, _)| path.clone())
            .collect()
    }

    /// Returns true when a file waits for an update at the next pass.
    pub fn has_urgent(&self) -> bool {
        self.files.values().any(|f| f.urgent && f.dirty.is_some())
    }

    /// Returns how many files have a copy older than the file.
    pub fn dirty_count(&self) -> usize {
        self.files.values().filter(|f| f.dirty.is_some()).count()
    }

    /// Returns the earliest time a dirty file started to wait, if any waits.
    pub fn oldest_dirty(&self) -> Option<Instant> {
        self.files
            .values()
            .filter_map(|f| f.dirty.map(|d| d.since))
            .min()
    }

    /// Returns the paths of the files at `path` and below it.
    pub fn paths_below(&self, path: &RelPath) -> Vec<RelPath> {
        self.files
            .range(path.clone()..)
            .take_while(|(p, _)| p.as_bytes().starts_with(path.as_bytes()))
            .filter(|(p, _)| p.starts_with(path))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> RelPath {
        RelPath::from_bytes(text.as_bytes()).expect("valid test path")
    }

    fn write(p: &str, offset: u64, len: usize) -> Op {
        Op::Write {
            path: path(p),
            offset,
            data: vec![b'x'; len],
        }
    }

    fn stored(size: u64) -> StoredObject {
        StoredObject {
            etag: "\"e\"".into(),
            checkpoints: Checkpoints::whole(size, 1),
        }
    }

    #[test]
    fn writes_mark_from_lowest_offset() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(Change::of(&write("a.log", 100, 10)), now);
        tracker.apply(Change::of(&write("a.log", 50, 10)), now);
        tracker.apply(Change::of(&write("a.log", 200, 10)), now);
        let file = tracker.get(&path("a.log")).unwrap();
        assert_eq!(file.stored, Stored::Unknown);
        assert_eq!(file.dirty.map(|d| d.from), Some(50));
        assert_eq!(file.size, SizeTrack::AtLeast(210));
        assert!(!file.urgent);
    }

    #[test]
    fn create_write_close_is_urgent() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        let create = Op::Create {
            path: path("new.log"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert!(tracker.apply(Change::of(&create), now).is_empty());
        tracker.apply(Change::of(&write("new.log", 0, 5)), now);
        let close = Op::CloseWrite {
            path: path("new.log"),
        };
        tracker.apply(Change::of(&close), now);
        let file = tracker.get(&path("new.log")).unwrap();
        assert_eq!(file.stored, Stored::Absent);
        assert_eq!(file.size, SizeTrack::Known(5));
        assert_eq!(file.dirty.map(|d| d.from), Some(0));
        assert!(file.urgent);
        // A close of a file whose copy is current waits for nothing.
        tracker
            .get_mut(&path("new.log"))
            .unwrap()
            .written(stored(5));
        tracker.apply(Change::of(&close), now);
        assert!(!tracker.get(&path("new.log")).unwrap().urgent);
    }

    #[test]
    fn truncate_sets_size_and_marks() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(Change::of(&write("t", 0, 100)), now);
        tracker.get_mut(&path("t")).unwrap().written(stored(100));
        let truncate = Op::Truncate {
            path: path("t"),
            size: 40,
        };
        tracker.apply(Change::of(&truncate), now);
        let file = tracker.get(&path("t")).unwrap();
        assert_eq!(file.size, SizeTrack::Known(40));
        assert_eq!(file.dirty.map(|d| d.from), Some(40));
    }

    #[test]
    fn unlink_deletes() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(Change::of(&write("gone", 0, 1)), now);
        let actions = tracker.apply(Change::of(&Op::Unlink { path: path("gone") }), now);
        assert_eq!(actions, [Action::Delete(path("gone"))]);
        assert!(tracker.get(&path("gone")).is_none());
    }

    #[test]
    fn rename_moves_directory_contents() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(Change::of(&write("logs/a", 0, 1)), now);
        tracker.apply(Change::of(&write("logs/sub/b", 0, 1)), now);
        tracker.apply(Change::of(&write("logsx", 0, 1)), now);
        tracker.apply(Change::of(&write("old/c", 0, 1)), now);
        tracker
            .get_mut(&path("logs/sub/b"))
            .unwrap()
            .written(stored(1));
        let rename = Op::Rename {
            from: path("logs"),
            to: path("old"),
            flags: 0,
        };
        let actions = tracker.apply(Change::of(&rename), now);
        assert_eq!(
            actions,
            [Action::Move {
                from: path("logs"),
                to: path("old")
            }]
        );

        assert_eq!(tracker.paths_below(&path("logs")), Vec::<RelPath>::new());
        assert_eq!(
            tracker.paths_below(&path("old")),
            [path("old/a"), path("old/sub/b")]
        );
        assert!(tracker.get(&path("logsx")).is_some());
        assert!(tracker.get(&path("old/a")).unwrap().urgent);
        assert!(!tracker.get(&path("old/sub/b")).unwrap().urgent);
    }

    #[test]
    fn exchange_swaps() {
        let now = Instant::now();
        let mut tracker = Tracker::default();
        tracker.apply(Change::of(&write("a", 0, 1)), now);
        tracker.apply(Change::of(&write("b/x", 0, 2)), now);
        let exchange = Op::Rename {
            from: path("a"),
            to: path("b"),
            flags: RENAME_EXCHANGE,
        };
        let actions = tracker.apply(Change::of(&exchange), now);
        assert_eq!(
            actions,
            [Action::Exchange {
                a: path("a"),
                b: path("b")
            }]
        );
        assert_eq!(tracker.paths_below(&path("a")), [path("a/x")]);
        assert_eq!(tracker.paths_below(&path("b")), [path("b")]);
        assert_eq!(tracker.get(&path("b")).unwrap().size, SizeTrack::AtLeast(1));
    }

    #[test]
    fn fallocate_modes() {
        let p = path("f");
        let cases = [
            (0, SizeTrack::AtLeast(150)),
            (FALLOC_FL_KEEP_SIZE, SizeTrack::AtLeast(0)),
            (
                FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                SizeTrack::AtLeast(0),
            ),
            (0x10, SizeTrack::Unknown),
            (0x08, SizeTrack::Unknown),
        ];
        for (mode, size) in cases {
            let mut tracker = Tracker::default();
            let op = Op::Fallocate {
                path: p.clone(),
                mode,
                offset: 50,
                length: 100,
            };
            tracker.apply(Change::of(&op), Instant::now());
            let file = tracker.get(&p).unwrap();
            assert_eq!(file.size, size, "mode {mode:#x}");
            assert_eq!(file.dirty.map(|d| d.from), Some(50), "mode {mode:#x}");
        }
    }

    #[test]
    fn merge_keeps_effect() {
        let mut change = Change::of(&write("a", 100, 10));
        assert!(change.merge(&Change::of(&write("a", 110, 10))));
        assert!(change.merge(&Change::Nothing));
        assert!(!change.merge(&Change::of(&write("b", 0, 1))));
        assert_eq!(
            change,
            Change::Data {
                path: path("a"),
                from: 100,
                end: Some(120),
                size: None
            }
        );

        let truncate = Op::Truncate {
            path: path("a"),
            size: 5,
        };
        assert!(change.merge(&Change::of(&truncate)));
        assert!(change.merge(&Change::of(&write("a", 5, 3))));
        assert_eq!(
            change,
            Change::Data {
                path: path("a"),
                from: 5,
                end: None,
                size: Some(8)
            }
        );

        let mut tracker = Tracker::default();
        tracker.apply(change, Instant::now());
        assert_eq!(tracker.get(&path("a")).unwrap().size, SizeTrack::Known(8));
    }
}
