//! Resync: the ops that turn a mirror's tree into the backing tree, and [`resync`], which
//! applies them through the [`Mirror`] trait.
//!
//! Ops are produced lazily: a regular file is read from the backing directory one chunk per
//! `Write` op, so a large file is never held in memory. Backing reads resolve every path
//! through directory descriptors with `O_NOFOLLOW`, as scans do.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use log::info;

use crate::journal::{Op, RelPath};
use crate::mirror::{Error, Mirror, at};

use super::{CHUNK_BYTES, Entry, EntryKind, Manifest, diff, scan_tree};

/// Counts from one [`resync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResyncStats {
    /// Paths compared: those in the backing tree or on the mirror.
    pub entries_checked: u64,
    /// Differences found before the repair, as [`diff`] lists them.
    pub differences: u64,
    /// Regular files written to the mirror in full.
    pub files_copied: u64,
    /// Bytes written to the mirror.
    pub bytes_copied: u64,
    /// Entries removed from the mirror, including those removed to be created again.
    pub removed: u64,
}

/// One planned change, before its backing data is read.
enum Step<'a> {
    Remove {
        path: &'a RelPath,
        kind: EntryKind,
    },
    Mkdir {
        path: &'a RelPath,
        mode: u32,
    },
    Copy {
        path: &'a RelPath,
        mode: u32,
        xattrs: Option<&'a BTreeMap<Vec<u8>, u32>>,
    },
    Link {
        existing: &'a RelPath,
        path: &'a RelPath,
    },
    Symlink {
        path: &'a RelPath,
        target: &'a [u8],
    },
    Mknod {
        path: &'a RelPath,
        kind: EntryKind,
    },
    SetMode {
        path: &'a RelPath,
        mode: u32,
    },
    /// Copies the value of a `user.` extended attribute from the backing entry.
    SetXattr {
        path: &'a RelPath,
        name: &'a [u8],
    },
    RemoveXattr {
        path: &'a RelPath,
        name: &'a [u8],
    },
}

/// A backing file being copied: its extended attributes first, then one chunk per `Write`
/// op, then its mode.
struct FileCopy {
    path: RelPath,
    file: File,
    offset: u64,
    mode: u32,
    /// Names of the `user.` extended attributes still to copy.
    xattrs: VecDeque<Vec<u8>>,
}

/// The ops that make a mirror equal to the backing tree, returned by [`repair_ops`].
///
/// The ops come in three groups. First the entries to remove, deepest first. Then the entries
/// to create or change, in path order, so a directory comes before its contents. Last the
/// modes of directories, deepest first, so that a read-only directory is filled before it
/// becomes read-only. Extended attributes are set before the final mode of their entry.
pub struct RepairOps<'a> {
    backing_root: OwnedFd,
    steps: std::vec::IntoIter<Step<'a>>,
    copy: Option<FileCopy>,
}

/// Returns the ops that turn the tree listed in `mirror` into the one listed in `backing`,
/// reading file content and owners from `backing_root` as the ops are taken.
///
/// A regular file that differs in any way but its mode is removed and copied again, so a
/// file that the mirror shares with a hard link elsewhere is never changed in place.
pub fn repair_ops<'a>(
    backing_root: &Path,
    backing: &'a Manifest,
    mirror: &'a Manifest,
) -> Result<RepairOps<'a>, Error> {
    let root = at::open_root(backing_root).map_err(|source| Error::BackingCopy {
        path: RelPath::root(),
        source,
    })?;
    Ok(RepairOps {
        backing_root: root,
        steps: plan(backing, mirror).into_iter(),
        copy: None,
    })
}

fn plan<'a>(backing: &'a Manifest, mirror: &'a Manifest) -> Vec<Step<'a>> {
    let backing_leaders = backing.link_leaders();
    let mirror_leaders = mirror.link_leaders();
    let mut steps = Vec::new();

    // A path sorts after its directory, so reverse order removes children before parents.
    let mut removed = HashSet::new();
    for (path, current) in mirror.entries.iter().rev() {
        let keep = backing.entries.get(path).is_some_and(|wanted| {
            let leaders = (backing_leaders.get(path), mirror_leaders.get(path));
            is_reusable(wanted, current) && leaders.0 == leaders.1
        });
        if !keep {
            steps.push(Step::Remove {
                path,
                kind: current.kind,
            });
            removed.insert(path);
        }
    }

    let mut dir_modes = Vec::new();
    for (path, wanted) in &backing.entries {
        let current = mirror.entries.get(path).filter(|_| !removed.contains(path));
        let Some(current) = current else {
            steps.push(create_step(
                path,
                wanted,
                backing_leaders.get(path).copied(),
            ));
            if wanted.kind == EntryKind::Dir {
                let names = wanted.xattrs.iter().flat_map(|x| x.keys());
                steps.extend(names.map(|name| Step::SetXattr { path, name }));
                dir_modes.push(Step::SetMode {
                    path,
                    mode: wanted.mode,
                });
            }
            continue;
        };
        for (name, backing_crc, _) in super::xattr_differences(wanted, current) {
            steps.push(match backing_crc {
                Some(_) => Step::SetXattr { path, name },
                None => Step::RemoveXattr { path, name },
            });
        }
        if wanted.kind == EntryKind::Symlink || current.mode == wanted.mode {
            continue;
        }
        let set_mode = Step::SetMode {
            path,
            mode: wanted.mode,
        };
        match wanted.kind {
            EntryKind::Dir => dir_modes.push(set_mode),
            _ => steps.push(set_mode),
        }
    }
    dir_modes.reverse();
    steps.extend(dir_modes);
    steps
}

/// Returns true if the mirror's entry can stay and at most needs its mode set.
fn is_reusable(wanted: &Entry, current: &Entry) -> bool {
    if wanted.kind != current.kind {
        return false;
    }
    match wanted.kind {
        EntryKind::File => wanted.size == current.size && wanted.crc32c == current.crc32c,
        EntryKind::Symlink => wanted.target == current.target,
        // NOTE: device numbers are not in manifests, so a device node with the right type
        // and mode but another device number is left as it is.
        _ => true,
    }
}

fn create_step<'a>(path: &'a RelPath, wanted: &'a Entry, leader: Option<&'a RelPath>) -> Step<'a> {
    match wanted.kind {
        // Write access lets a process without root fill the directory; the final mode
        // is set at the end.
        EntryKind::Dir => Step::Mkdir {
            path,
            mode: wanted.mode | 0o700,
        },
        EntryKind::File => match leader {
            Some(existing) => Step::Link { existing, path },
            None => Step::Copy {
                path,
                mode: wanted.mode,
                xattrs: wanted.xattrs.as_ref(),
            },
        },
        EntryKind::Symlink => Step::Symlink {
            path,
            target: wanted.target.as_deref().unwrap_or_default(),
        },
        kind => Step::Mknod { path, kind },
    }
}

impl RepairOps<'_> {
    fn backing_error(path: &RelPath, source: io::Error) -> Error {
        Error::BackingCopy {
            path: path.clone(),
            source,
        }
    }

    /// Returns the backing entry's status, checking that it still has the listed type.
    fn backing_stat(&self, path: &RelPath, kind: EntryKind) -> Result<libc::stat, Error> {
        let result = at::walk_parent(self.backing_root.as_fd(), path)
            .and_then(|(dir, name)| at::stat_at(dir.as_fd(), &name))
            .and_then(|st| match EntryKind::from_mode(st.st_mode) == Some(kind) {
                true => Ok(st),
                false => Err(changed_during_resync()),
            });
        result.map_err(|source| Self::backing_error(path, source))
    }

    fn open_backing_file(&self, path: &RelPath) -> io::Result<(File, libc::stat)> {
        let (dir, name) = at::walk_parent(self.backing_root.as_fd(), path)?;
        // O_NONBLOCK keeps the open from waiting if the name was swapped for a FIFO.
        let fd = at::open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let st = at::fstat(fd.as_fd())?;
        if at::file_type(&st) != libc::S_IFREG {
            return Err(changed_during_resync());
        }
        Ok((File::from(fd), st))
    }

    fn start(&mut self, step: Step<'_>) -> Result<Op, Error> {
        let op = match step {
            Step::Remove { path, kind } => match kind {
                EntryKind::Dir => Op::Rmdir { path: path.clone() },
                _ => Op::Unlink { path: path.clone() },
            },
            Step::Mkdir { path, mode } => {
                let st = self.backing_stat(path, EntryKind::Dir)?;
                Op::Mkdir {
                    path: path.clone(),
                    mode,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            }
            Step::Copy { path, mode, xattrs } => {
                let (file, st) = self
                    .open_backing_file(path)
                    .map_err(|source| Self::backing_error(path, source))?;
                self.copy = Some(FileCopy {
                    path: path.clone(),
                    file,
                    offset: 0,
                    mode,
                    xattrs: xattrs.iter().flat_map(|x| x.keys().cloned()).collect(),
                });
                // Owner-only access until the content is in place; the final mode follows
                // the last chunk.
                Op::Create {
                    path: path.clone(),
                    mode: 0o600,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            }
            Step::Link { existing, path } => Op::Link {
                existing: existing.clone(),
                path: path.clone(),
            },
            Step::Symlink { path, target } => {
                let st = self.backing_stat(path, EntryKind::Symlink)?;
                Op::Symlink {
                    path: path.clone(),
                    target: target.to_vec(),
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            }
            Step::Mknod { path, kind } => {
                let st = self.backing_stat(path, kind)?;
                Op::Mknod {
                    path: path.clone(),
                    mode: kind.type_bits() | (st.st_mode & 0o7777),
                    rdev: st.st_rdev,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            }
            Step::SetMode { path, mode } => Op::SetMode {
                path: path.clone(),
                mode,
            },
            Step::SetXattr { path, name } => Op::SetXattr {
                path: path.clone(),
                name: name.to_vec(),
                value: self.backing_xattr(path, name)?,
                flags: 0,
            },
            Step::RemoveXattr { path, name } => Op::RemoveXattr {
                path: path.clone(),
                name: name.to_vec(),
            },
        };
        Ok(op)
    }

    /// Reads the value of extended attribute `name` of the backing file or directory `path`.
    fn backing_xattr(&self, path: &RelPath, name: &[u8]) -> Result<Vec<u8>, Error> {
        let result =
            at::walk_parent(self.backing_root.as_fd(), path).and_then(|(dir, file_name)| {
                // O_NONBLOCK keeps the open from waiting if the name was swapped for a FIFO.
                let fd = at::open_at(
                    dir.as_fd(),
                    &file_name,
                    libc::O_RDONLY | libc::O_NONBLOCK,
                    0,
                )?;
                at::fd_xattr(fd.as_fd(), &at::c_name(OsStr::from_bytes(name))?)
            });
        result.map_err(|source| Self::backing_error(path, source))
    }

    /// Returns the `SetXattr` op of the next extended attribute of the file being copied.
    fn next_copy_xattr(copy: &mut FileCopy) -> Option<Result<Op, Error>> {
        let name = copy.xattrs.pop_front()?;
        let value = at::c_name(OsStr::from_bytes(&name))
            .and_then(|c_name| at::fd_xattr(copy.file.as_fd(), &c_name));
        Some(match value {
            Ok(value) => Ok(Op::SetXattr {
                path: copy.path.clone(),
                name,
                value,
                flags: 0,
            }),
            Err(source) => Err(Self::backing_error(&copy.path, source)),
        })
    }

    /// Returns the next op of the file being copied: a `SetXattr`, a `Write`, or its
    /// `SetMode` at the end.
    fn next_chunk(&mut self) -> Option<Result<Op, Error>> {
        let copy = self.copy.as_mut()?;
        if let Some(op) = Self::next_copy_xattr(copy) {
            if op.is_err() {
                self.copy = None;
            }
            return Some(op);
        }
        let mut data = Vec::with_capacity(CHUNK_BYTES);
        let result = (&mut copy.file)
            .take(CHUNK_BYTES as u64)
            .read_to_end(&mut data);
        if let Err(source) = result {
            let copy = self.copy.take()?;
            return Some(Err(Self::backing_error(&copy.path, source)));
        }
        if data.is_empty() {
            let copy = self.copy.take()?;
            return Some(Ok(Op::SetMode {
                path: copy.path,
                mode: copy.mode,
            }));
        }
        let offset = copy.offset;
        copy.offset += data.len() as u64;
        Some(Ok(Op::Write {
            path: copy.path.clone(),
            offset,
            data,
        }))
    }
}

fn changed_during_resync() -> io::Error {
    io::Error::other("changed type during the resync; run the resync again")
}

impl Iterator for RepairOps<'_> {
    type Item = Result<Op, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.copy.is_some() {
            return self.next_chunk();
        }
        let step = self.steps.next()?;
        Some(self.start(step))
    }
}

/// Brings `mirror` in line with the tree at `backing_root`: lists both, applies the ops of
/// [`repair_ops`], and flushes. Names in `skip_at_root` directly below the backing root are
/// left out of the comparison. The mirror leaves out its own state files.
///
/// Nothing may change the backing tree or the mirror while this runs, or the mirror may end
/// up differing again.
pub fn resync(
    mirror: &mut dyn Mirror,
    backing_root: &Path,
    skip_at_root: &[&OsStr],
) -> Result<ResyncStats, Error> {
    resync_selected(mirror, backing_root, skip_at_root, |_, _| true)
}

/// Resyncs as [`resync`] does, with only the backing entries that `selects` keeps
/// (by path and kind, from the mirror's path rules) as the tree to reach.
pub fn resync_selected(
    mirror: &mut dyn Mirror,
    backing_root: &Path,
    skip_at_root: &[&OsStr],
    selects: impl Fn(&RelPath, EntryKind) -> bool,
) -> Result<ResyncStats, Error> {
    let mut backing = scan_tree(backing_root, skip_at_root).map_err(|e| Error::Backing {
        path: e.path,
        source: e.source,
    })?;
    backing
        .entries
        .retain(|path, entry| selects(path, entry.kind));
    let current = mirror.manifest()?;

    let only_on_mirror = current
        .entries
        .keys()
        .filter(|path| !backing.entries.contains_key(*path))
        .count();
    let mut stats = ResyncStats {
        entries_checked: (backing.entries.len() + only_on_mirror) as u64,
        differences: diff(&backing, &current).len() as u64,
        ..ResyncStats::default()
    };

    for op in repair_ops(backing_root, &backing, &current)? {
        let op = op?;
        match &op {
            Op::Create { .. } => stats.files_copied += 1,
            Op::Write { data, .. } => stats.bytes_copied += data.len() as u64,
            Op::Unlink { .. } | Op::Rmdir { .. } => stats.removed += 1,
            _ => {}
        }
        mirror.apply(&op)?;
    }
    mirror.flush()?;

    info!(
        "mirror {}: resync finished, entries_checked={} differences={} files_copied={} bytes={} removed={}",
        mirror.name(),
        stats.entries_checked,
        stats.differences,
        stats.files_copied,
        stats.bytes_copied,
        stats.removed
    );
    Ok(stats)
}
