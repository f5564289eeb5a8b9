//! Paths of inodes whose names the inode table does not contain: a file opened under a name
//! that was then unlinked, while another hard link that the kernel never looked up remains.
//!
//! The backing tree is searched for the inode number, and the path found is kept on the
//! inode and checked again before each use. Only reads happen here; callers hold the
//! namespace lock, so no name changes while a path is searched or used.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use super::LogFs;
use super::inodes::{Inode, ROOT_INO};
use super::sys::{self, DirStream};
use crate::config::STATE_DIR_NAME;
use crate::journal::RelPath;

/// Device and inode number of a backing entry.
type FileId = (u64, u64);

impl LogFs {
    /// Returns the current path of `inode`: from the names the kernel looked it up by, else
    /// by searching the backing tree for it. `None` when no name in the mirrored tree leads
    /// to it, or when the search failed (logged); the caller then requests a resync.
    pub(super) fn path_of(&self, inode: &Inode) -> Option<RelPath> {
        if let Some(path) = self.inodes.path_of(inode) {
            return Some(path);
        }
        let st = sys::fstat(inode.fd()).ok()?;
        if st.st_nlink == 0 {
            return None;
        }
        let id = (st.st_dev, st.st_ino);
        let root = self.inodes.get(ROOT_INO)?;
        let mut found = inode.found_path.lock().expect("found path lock");
        if let Some(path) = found.as_ref()
            && is_path_of(root.fd(), path, id)
        {
            return Some(path.clone());
        }
        let skip = self
            .options
            .hide_state_dir
            .then_some(OsStr::new(STATE_DIR_NAME));
        match find_path(root.fd(), id, skip) {
            Ok(path) => {
                log::debug!(
                    "ino={} has no known name; search of the backing tree found {:?}",
                    inode.ino,
                    path
                );
                found.clone_from(&path);
                path
            }
            Err(e) => {
                log::warn!(
                    "ino={} has no known name and the search of the backing tree for it failed: {e}",
                    inode.ino
                );
                None
            }
        }
    }
}

/// Returns whether `path` below `root` names the entry `id` now.
fn is_path_of(root: BorrowedFd, path: &RelPath, id: FileId) -> bool {
    let mut current = None;
    for name in path.components() {
        let dir = current
            .as_ref()
            .map_or(root, |fd: &std::os::fd::OwnedFd| fd.as_fd());
        match sys::openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => current = Some(fd),
            Err(_) => return false,
        }
    }
    let Some(fd) = current else {
        return false;
    };
    sys::fstat(fd.as_fd()).is_ok_and(|st| (st.st_dev, st.st_ino) == id)
}

/// Searches the tree below `root` depth first for a name of the entry `id`, leaving out
/// `skip_at_root` directly below the root and other filesystems mounted inside the tree.
fn find_path(
    root: BorrowedFd,
    id: FileId,
    skip_at_root: Option<&OsStr>,
) -> io::Result<Option<RelPath>> {
    let open_dir = |dir: BorrowedFd, name: &OsStr| {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        sys::openat(dir, name, flags, 0).and_then(DirStream::new)
    };
    // One open stream per level of the walk, so descriptors grow with depth, not width.
    let mut stack = vec![(open_dir(root, OsStr::new("."))?, RelPath::root())];
    while let Some((stream, path)) = stack.last_mut() {
        let Some(entry) = stream.next_entry()? else {
            stack.pop();
            continue;
        };
        let name = OsStr::from_bytes(&entry.name);
        if name == "." || name == ".." || (path.is_root() && Some(name) == skip_at_root) {
            continue;
        }
        let is_dir = entry.d_type == libc::DT_DIR || entry.d_type == libc::DT_UNKNOWN;
        if entry.ino != id.1 && !is_dir {
            continue;
        }
        let st = match sys::fstatat(stream.fd(), name) {
            Ok(st) => st,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT)) => continue,
            Err(e) => return Err(e),
        };
        if (st.st_dev, st.st_ino) == id {
            return Ok(Some(path.join(name)));
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_dev != id.0 {
            continue;
        }
        let child = path.join(name);
        let child_stream = open_dir(stream.fd(), name)?;
        stack.push((child_stream, child));
    }
    Ok(None)
}
