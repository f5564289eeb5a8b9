//! Read passthrough: read-only opens of a file that no handle writes get a kernel backing file, so
//! their reads and mmaps reach the backing file without a request to the daemon. Writes
//! never pass through (see "Read passthrough" in docs/DESIGN.md).
//!
//! The kernel keeps one I/O mode per inode: while a handle with FOPEN_PASSTHROUGH is open,
//! every other open of the inode must have it too (or the program gets EIO), and while a
//! handle without it is open, a passthrough open fails. Each inode's [`OpenModes`] counts
//! the handles of each kind, so that a new open gets the kind the kernel accepts. The counts
//! go up before the reply and down at FUSE_RELEASE, which the kernel sends after it dropped
//! the handle's mode, so they never undercount the kernel's.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use fuser::BackingId;
use serde::{Deserialize, Serialize};

/// Registers a descriptor with the kernel as a backing file (FUSE_DEV_IOC_BACKING_OPEN).
pub type OpenBacking<'a> = &'a dyn Fn(BorrowedFd<'_>) -> std::io::Result<BackingId>;

/// The I/O mode of an open's reply.
pub enum Opened {
    /// Reads and writes come to the daemon; the kernel may cache pages.
    Cached,
    /// The kernel opens the backing file behind `id`. With `direct_io`, reads and writes
    /// still come to the daemon and only mmap reaches the backing file.
    Passthrough { id: Arc<BackingId>, direct_io: bool },
}

/// The open handles of one inode, by the I/O mode the kernel gave them.
#[derive(Default)]
pub struct OpenModes {
    cached: u64,
    passthrough: u64,
    /// Backing file of the passthrough handles; one per inode, as the kernel requires.
    backing: Option<Arc<BackingId>>,
}

/// Read passthrough as status shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadsStatus {
    /// active, off (`passthrough=off`) or unavailable (kernel or privileges lack it).
    pub passthrough: String,
    /// Read requests the daemon served, from handles without passthrough.
    pub served: u64,
    /// Opens replied to with passthrough.
    pub passthrough_opens: u64,
    /// Read-write opens refused with ETXTBSY because passthrough handles were open.
    pub read_write_refused: u64,
}

const OFF: u8 = 0;
const ACTIVE: u8 = 1;
const UNAVAILABLE: u8 = 2;

/// The mount's passthrough setting and its counters, shared with status.
pub struct Reads {
    state: AtomicU8,
    /// Set by `passthrough=auto`; `init` then finds out whether the kernel allows it.
    requested: bool,
    served: AtomicU64,
    passthrough_opens: AtomicU64,
    read_write_refused: AtomicU64,
    /// A failed backing registration was logged; later ones are not.
    failure_logged: AtomicBool,
}

impl Reads {
    pub fn new(requested: bool) -> Reads {
        Reads {
            state: AtomicU8::new(OFF),
            requested,
            served: AtomicU64::new(0),
            passthrough_opens: AtomicU64::new(0),
            read_write_refused: AtomicU64::new(0),
            failure_logged: AtomicBool::new(false),
        }
    }

    pub fn requested(&self) -> bool {
        self.requested
    }

    /// Records the outcome of the FUSE init: whether read opens may pass through.
    pub fn set_active(&self, active: bool) {
        let state = if active { ACTIVE } else { UNAVAILABLE };
        self.state.store(state, Ordering::SeqCst);
    }

    fn is_active(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ACTIVE
    }

    pub fn count_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    pub fn status(&self) -> ReadsStatus {
        let passthrough = match self.state.load(Ordering::SeqCst) {
            ACTIVE => "active",
            UNAVAILABLE => "unavailable",
            _ => "off",
        };
        ReadsStatus {
            passthrough: passthrough.to_string(),
            served: self.served.load(Ordering::Relaxed),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            read_write_refused: self.read_write_refused.load(Ordering::Relaxed),
        }
    }

    /// Chooses the I/O mode of a new handle on an inode whose handles are `modes`, and
    /// counts the handle in it. `access` is the open's O_ACCMODE. Returns `None` for a
    /// read-write open while passthrough handles are open: the kernel would give it the
    /// backing file for mmap, and a shared writable mapping would write the backing file
    /// without the daemon.
    pub fn choose(
        &self,
        modes: &mut OpenModes,
        access: i32,
        fd: BorrowedFd<'_>,
        open_backing: OpenBacking<'_>,
    ) -> Option<Opened> {
        if let Some(id) = &modes.backing {
            // NOTE: read-write opens fail with ETXTBSY until the passthrough handles close.
            if access == libc::O_RDWR {
                self.read_write_refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            // An O_WRONLY handle cannot be mapped, and FOPEN_DIRECT_IO sends its writes to
            // the daemon.
            let opened = Opened::Passthrough {
                id: id.clone(),
                direct_io: access != libc::O_RDONLY,
            };
            modes.passthrough += 1;
            self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
            return Some(opened);
        }
        if access == libc::O_RDONLY && modes.cached == 0 && self.is_active() {
            match open_backing(fd) {
                Ok(id) => {
                    let id = Arc::new(id);
                    modes.backing = Some(id.clone());
                    modes.passthrough += 1;
                    self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                    return Some(Opened::Passthrough {
                        id,
                        direct_io: false,
                    });
                }
                Err(e) => self.backing_failed(&e),
            }
        }
        modes.cached += 1;
        Some(Opened::Cached)
    }

    /// Logs the first failed backing registration. Without the privilege it needs, read
    /// passthrough goes off for the mount.
    fn backing_failed(&self, e: &std::io::Error) {
        if e.raw_os_error() == Some(libc::EPERM) {
            self.state.store(UNAVAILABLE, Ordering::SeqCst);
        }
        if !self.failure_logged.swap(true, Ordering::SeqCst) {
            log::info!(
                "read passthrough: the kernel refused a backing file ({e}); reads of such \
                 files go through the daemon"
            );
        }
    }
}

impl OpenModes {
    /// Uncounts a released handle. The last passthrough handle closes the backing id.
    pub fn release(&mut self, passthrough: bool) {
        if passthrough {
            self.passthrough = self.passthrough.saturating_sub(1);
            if self.passthrough == 0 {
                self.backing = None;
            }
        } else {
            self.cached = self.cached.saturating_sub(1);
        }
    }
}
