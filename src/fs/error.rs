//! Errors of filesystem operations and the errno each one returns to the program.

use std::io;

use crate::journal;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backing filesystem refused the operation; its errno goes to the program as is.
    #[error("{op} failed on the backing directory")]
    Backing {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The change reached the backing directory but could not be journaled, so no mirror
    /// will get it until a resync.
    #[error("{op} could not be journaled")]
    Journal {
        op: &'static str,
        #[source]
        source: journal::Error,
    },
    #[error("inode {0} is not known (forgotten by the kernel or never looked up)")]
    UnknownInode(u64),
    #[error("file handle {0} is not open")]
    UnknownHandle(u64),
    #[error("the name {0:?} is reserved for logmirror's state directory")]
    Reserved(String),
    #[error("the mirror backlog reached max_backlog and when_full=fail")]
    BacklogFull,
    #[error("operation not supported: {0}")]
    Unsupported(&'static str),
    /// A read-write open while read-only handles of the file pass through to the backing
    /// file (see `passthrough.rs`).
    #[error(
        "read-write open of inode {0} refused while read-only handles pass through; \
         mount with passthrough=off to allow it"
    )]
    PassthroughReaders(u64),
}

impl Error {
    /// Returns the errno for the program.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Backing { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            // The local commit is incomplete; the program must not believe the write is safe.
            // A full disk keeps its own errno, so that the program reacts as it would to a
            // full local disk (ENOSPC) rather than to damage (EIO).
            Error::Journal { source, .. } => source.no_space_errno().unwrap_or(libc::EIO),
            Error::UnknownInode(_) => libc::ESTALE,
            Error::UnknownHandle(_) => libc::EBADF,
            // EPERM rather than EACCES: no permission change would allow it.
            Error::Reserved(_) => libc::EPERM,
            // Like a full disk: the program's usual reaction (retry later, alert) fits.
            Error::BacklogFull => libc::ENOSPC,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            // What a local filesystem returns for an open for writing of a running program.
            Error::PassthroughReaders(_) => libc::ETXTBSY,
        }
    }

    /// Returns true for errors that mean logmirror itself failed, as opposed to the
    /// program asking for something the filesystem refuses (ENOENT, EEXIST, EACCES, ...).
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Journal { .. } | Error::BacklogFull)
            || matches!(self, Error::Backing { source, .. } if source.raw_os_error() == Some(libc::EIO))
    }
}

/// Wraps a backing I/O error with the name of the operation.
pub fn backing(op: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Backing { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_error(errno: i32) -> Error {
        let path = std::path::Path::new("/state/journal/00000000000000000001.seg");
        let source = journal::Error::Io {
            action: "write journal segment",
            path: path.to_path_buf(),
            source: io::Error::from_raw_os_error(errno),
        };
        Error::Journal {
            op: "write",
            source,
        }
    }

    #[test]
    fn journal_full_disk_keeps_errno() {
        assert_eq!(journal_error(libc::ENOSPC).errno(), libc::ENOSPC);
        assert_eq!(journal_error(libc::EDQUOT).errno(), libc::EDQUOT);
    }

    #[test]
    fn journal_other_failure_is_eio() {
        assert_eq!(journal_error(libc::EIO).errno(), libc::EIO);
        assert_eq!(journal_error(libc::EBADF).errno(), libc::EIO);
    }
}
