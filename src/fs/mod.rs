//! The filesystem: FUSE requests become changes to the backing directory, each followed by a
//! journal record, and the reply waits for whatever the mode promises (see `mirror::acks`).
//!
//! `fuse.rs` adapts fuser callbacks, `ops.rs` does the work against the backing directory,
//! `inodes.rs` and `handles.rs` keep the descriptors, `sys.rs` wraps the libc calls.
//! `find.rs` searches the backing tree for an inode without a known name, `deferred.rs`
//! runs writes that wait for room in the async backlog, `background.rs` runs fsync
//! requests off the FUSE threads, and `passthrough.rs` lets read-only opens reach the
//! backing file without the daemon.

mod background;
mod deferred;
mod error;
mod find;
mod fuse;
mod handles;
mod inodes;
mod mount;
mod ops;
mod passthrough;
mod sys;

pub use error::Error;
pub use mount::{FS_TYPE, mount_kernel};
pub use passthrough::{Reads, ReadsStatus};

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::STATE_DIR_NAME;
use crate::journal::Journal;
use crate::mirror::acks::Acks;

use background::Background;
use deferred::DeferredWrites;
use handles::HandleTable;
use inodes::InodeTable;

/// How long the kernel may cache attributes and names. Every change goes through this
/// filesystem, so the cache is kept coherent by the kernel itself.
const TTL: Duration = Duration::from_secs(1);

/// Largest write request the kernel may send; the kernel caps it at its own limit
/// (`/proc/sys/fs/fuse/max_pages_limit`, 1 MiB by default).
pub const MAX_WRITE_BYTES: u32 = 1 << 20;

/// Threads that run fsync and fsyncdir requests. Requests beyond them wait in a queue,
/// not on a FUSE thread.
const FSYNC_THREADS: usize = 4;

/// Settings of the filesystem that come from the mount configuration.
#[derive(Clone)]
pub struct FsOptions {
    /// Hide `.logmirror` at the root, because the state directory lives there.
    pub hide_state_dir: bool,
    /// Async writers wait for room when the backlog is full (otherwise they get ENOSPC).
    pub when_full_blocks: bool,
    /// Journal a `CloseWrite` record when the last writer of a changed file closes it. Only
    /// the readable copies of S3 mirrors use them.
    pub journal_closes: bool,
    /// Read passthrough setting and counters, shared with status.
    pub reads: Arc<Reads>,
}

/// The mounted filesystem. Handlers take `&self` and run on several FUSE threads at once.
/// A clone shares every table, so a request can finish on another thread (`deferred.rs`).
#[derive(Clone)]
pub struct LogFs {
    inodes: Arc<InodeTable>,
    handles: Arc<HandleTable>,
    /// Writes waiting for room in the async backlog, off the FUSE threads.
    deferred: Arc<DeferredWrites>,
    journal: Arc<Journal>,
    acks: Arc<Acks>,
    /// Taken shared by every change while it reaches the backing directory and the journal.
    /// Changes to names take it exclusively, so a record's path is valid at its place in the
    /// journal, and so does a mirror resync, which needs a backing tree that does not change.
    namespace: Arc<RwLock<()>>,
    options: FsOptions,
    /// Threads that run fsync requests, so that FUSE threads do not wait on the disk.
    background: Arc<Background>,
    /// The daemon runs as root, so new entries must be given to the caller.
    is_root: bool,
}

/// Opens the backing root as an O_PATH descriptor, the anchor of every later *at() call.
pub fn open_root(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    sys::openat(
        std::os::fd::AsFd::as_fd(&std::fs::File::open("/")?),
        path.as_os_str(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
}

impl LogFs {
    pub fn new(
        root_fd: OwnedFd,
        journal: Arc<Journal>,
        acks: Arc<Acks>,
        namespace: Arc<RwLock<()>>,
        options: FsOptions,
    ) -> std::io::Result<LogFs> {
        let st = sys::fstat(std::os::fd::AsFd::as_fd(&root_fd))?;
        Ok(LogFs {
            inodes: Arc::new(InodeTable::new(root_fd, st.st_ino)),
            handles: Arc::new(HandleTable::default()),
            deferred: DeferredWrites::start()?,
            journal,
            acks,
            namespace,
            options,
            background: Arc::new(Background::start(FSYNC_THREADS)?),
            // SAFETY: geteuid has no preconditions.
            is_root: unsafe { libc::geteuid() } == 0,
        })
    }

    fn is_reserved(&self, parent: u64, name: &OsStr) -> bool {
        self.options.hide_state_dir && parent == inodes::ROOT_INO && name == STATE_DIR_NAME
    }
}
