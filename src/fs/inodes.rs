//! The inode table: one O_PATH descriptor per inode the kernel has looked up, and the names
//! it was looked up by. Every operation reaches the backing file through its descriptor, and
//! every journal record names the file by its current path.
//!
//! FUSE inode numbers are the backing inode numbers (stable across remounts), except that
//! the backing root is inode 1 as FUSE requires.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::passthrough::OpenModes;
use crate::journal::{FileIdentity, RelPath};

pub const ROOT_INO: u64 = 1;

/// Maximum directory depth followed when building a path. A path of more levels could not
/// be used anyway, because the kernel's PATH_MAX is 4096 bytes.
const MAX_DEPTH: usize = 4096;

/// One name of an inode: the directory inode and the entry name in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub parent: u64,
    pub name: OsString,
}

/// An inode the kernel holds a reference to.
pub struct Inode {
    pub ino: u64,
    /// O_PATH | O_NOFOLLOW descriptor of the backing entry.
    pub fd: OwnedFd,
    lookups: AtomicU64,
    links: Mutex<Vec<Link>>,
    /// Serializes a change to this file's data with its journal append, so that the journal
    /// lists changes to one file in the order the backing file got them.
    pub data_lock: Mutex<()>,
    /// Path found by searching the backing tree when no known name leads to the inode;
    /// checked again before each use (see `find.rs`).
    pub found_path: Mutex<Option<RelPath>>,
    /// Open handles that may write to the file.
    pub writers: AtomicU64,
    /// The file's content changed since the last `CloseWrite` record, so the release of
    /// the last writer must journal one.
    pub changed: AtomicBool,
    /// Path rule of the file's records, with the [`InodeTable::names_generation`] it was
    /// found at. A rename, link or unlink anywhere makes it stale.
    pub rule: Mutex<Option<(u64, usize)>>,
    /// Open handles by the I/O mode the kernel gave them (see `passthrough.rs`).
    pub open_modes: Mutex<OpenModes>,
    /// Identity of the backing file, which writes journaled by reference record. Read
    /// through an open handle by the first write that needs it, because ioctl rejects the
    /// `O_PATH` descriptor.
    pub identity: OnceLock<FileIdentity>,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn links(&self) -> Vec<Link> {
        self.links.lock().expect("links lock").clone()
    }

    pub fn add_link(&self, parent: u64, name: &OsStr) {
        let mut links = self.links.lock().expect("links lock");
        if !links.iter().any(|l| l.parent == parent && l.name == name) {
            links.push(Link {
                parent,
                name: name.to_os_string(),
            });
        }
    }

    pub fn remove_link(&self, parent: u64, name: &OsStr) {
        let mut links = self.links.lock().expect("links lock");
        links.retain(|l| !(l.parent == parent && l.name == name));
    }
}

/// All inodes the kernel may refer to, keyed by FUSE inode number.
pub struct InodeTable {
    inodes: RwLock<HashMap<u64, Arc<Inode>>>,
    /// Backing inode number of the root, which FUSE calls 1.
    root_backing_ino: u64,
    /// Count of renames, links and unlinks, which may change the path of any inode.
    names_generation: AtomicU64,
}

impl InodeTable {
    /// Notes a rename, link or unlink. Call it with the namespace lock held exclusively.
    pub fn names_changed(&self) {
        self.names_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Returns the count of renames, links and unlinks so far. It stays the same while the
    /// namespace lock is held, shared or exclusively.
    pub fn names_generation(&self) -> u64 {
        self.names_generation.load(Ordering::SeqCst)
    }

    pub fn new(root_fd: OwnedFd, root_backing_ino: u64) -> InodeTable {
        let root = Arc::new(Inode {
            ino: ROOT_INO,
            fd: root_fd,
            lookups: AtomicU64::new(1),
            links: Mutex::new(Vec::new()),
            data_lock: Mutex::new(()),
            found_path: Mutex::new(None),
            writers: AtomicU64::new(0),
            changed: AtomicBool::new(false),
            rule: Mutex::new(None),
            open_modes: Mutex::new(OpenModes::default()),
            identity: OnceLock::new(),
        });
        let mut inodes = HashMap::new();
        inodes.insert(ROOT_INO, root);
        InodeTable {
            inodes: RwLock::new(inodes),
            root_backing_ino,
            names_generation: AtomicU64::new(0),
        }
    }

    /// Maps a backing inode number to the FUSE inode number.
    pub fn fuse_ino(&self, backing_ino: u64) -> u64 {
        if backing_ino == self.root_backing_ino {
            ROOT_INO
        } else {
            backing_ino
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.inodes
            .read()
            .expect("inode table lock")
            .get(&ino)
            .cloned()
    }

    /// Records one more kernel reference to the inode, creating the entry with `fd` if the
    /// kernel did not know it yet, and records `link` as one of its names.
    pub fn remember(&self, ino: u64, fd: OwnedFd, link: Link) -> Arc<Inode> {
        let mut inodes = self.inodes.write().expect("inode table lock");
        let inode = inodes.entry(ino).or_insert_with(|| {
            Arc::new(Inode {
                ino,
                fd,
                lookups: AtomicU64::new(0),
                links: Mutex::new(Vec::new()),
                data_lock: Mutex::new(()),
                found_path: Mutex::new(None),
                writers: AtomicU64::new(0),
                changed: AtomicBool::new(false),
                rule: Mutex::new(None),
                open_modes: Mutex::new(OpenModes::default()),
                identity: OnceLock::new(),
            })
        });
        inode.lookups.fetch_add(1, Ordering::Relaxed);
        inode.add_link(link.parent, &link.name);
        inode.clone()
    }

    /// Drops `count` kernel references; the entry goes when none remain.
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut inodes = self.inodes.write().expect("inode table lock");
        if let Some(inode) = inodes.get(&ino) {
            let left = inode.lookups.load(Ordering::Relaxed).saturating_sub(count);
            inode.lookups.store(left, Ordering::Relaxed);
            if left == 0 {
                inodes.remove(&ino);
            }
        }
    }

    /// Returns the current path of an inode from the first of its known names that leads
    /// to the root, or `None` when none does (an unlinked file, or names the kernel never
    /// looked up).
    pub fn path_of(&self, inode: &Inode) -> Option<RelPath> {
        self.path_below(inode, 0)
    }

    fn path_below(&self, inode: &Inode, depth: usize) -> Option<RelPath> {
        if inode.ino == ROOT_INO {
            return Some(RelPath::root());
        }
        if depth > MAX_DEPTH {
            return None;
        }
        for link in inode.links() {
            let Some(parent) = self.get(link.parent) else {
                continue;
            };
            if let Some(path) = self.path_below(&parent, depth + 1) {
                return Some(path.join(&link.name));
            }
        }
        None
    }
}
