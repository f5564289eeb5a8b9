//! Open file and directory handles: the backing descriptor behind each FUSE file handle.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::inodes::Inode;
use super::sys::DirStream;

/// An open regular file.
pub struct FileHandle {
    /// Backing descriptor, opened without O_APPEND: the kernel sends the offset of each
    /// write, and pwrite on an O_APPEND descriptor would ignore it.
    pub fd: OwnedFd,
    /// Opened with O_SYNC or O_DSYNC: each write is made durable before its reply.
    pub sync_writes: bool,
    /// The inode, when the handle was opened for writing; counted in its `writers`.
    pub writes_to: Option<Arc<Inode>>,
    /// The inode, whose `open_modes` counts the handle until its release.
    pub inode: Arc<Inode>,
    /// The kernel opened the handle with FOPEN_PASSTHROUGH.
    pub passthrough: bool,
}

impl FileHandle {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// An open directory stream.
pub struct DirHandle {
    pub ino: u64,
    pub stream: Mutex<DirStream>,
}

/// Handles by FUSE file handle number.
#[derive(Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
}

impl HandleTable {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert_file(&self, handle: FileHandle) -> u64 {
        let id = self.next_id();
        self.files
            .write()
            .expect("handle lock")
            .insert(id, Arc::new(handle));
        id
    }

    pub fn file(&self, id: u64) -> Option<Arc<FileHandle>> {
        self.files.read().expect("handle lock").get(&id).cloned()
    }

    pub fn remove_file(&self, id: u64) -> Option<Arc<FileHandle>> {
        self.files.write().expect("handle lock").remove(&id)
    }

    pub fn insert_dir(&self, handle: DirHandle) -> u64 {
        let id = self.next_id();
        self.dirs
            .write()
            .expect("handle lock")
            .insert(id, Arc::new(handle));
        id
    }

    pub fn dir(&self, id: u64) -> Option<Arc<DirHandle>> {
        self.dirs.read().expect("handle lock").get(&id).cloned()
    }

    pub fn remove_dir(&self, id: u64) {
        self.dirs.write().expect("handle lock").remove(&id);
    }
}
