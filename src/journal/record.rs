//! Journal records: one mutating operation made through the mount, named by path.
//!
//! `fs` builds an [`Op`] for every change it commits to the backing directory, the journal
//! frames it (see `format.rs`), and each mirror replays the ops in sequence order. Paths are
//! relative to the backing root, as raw bytes, so any name the kernel accepts survives.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Sequence number of a journal record. The first record of a new journal is 1; 0 means
/// "nothing yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    /// Returns the sequence number after this one.
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Path of an entry relative to the backing root, as raw bytes without a leading slash.
/// The root itself is the empty path. Components never are `.`, `..` or empty.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Returns the path of the backing root.
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// Builds a path from raw bytes, rejecting absolute paths and `.`, `..` or empty
    /// components.
    pub fn from_bytes(bytes: &[u8]) -> Option<RelPath> {
        if bytes.is_empty() {
            return Some(RelPath::root());
        }
        let valid = bytes
            .split(|b| *b == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0));
        valid.then(|| RelPath(bytes.to_vec()))
    }

    /// Returns the path of `name` inside this directory.
    pub fn join(&self, name: &OsStr) -> RelPath {
        let name = name.as_bytes();
        debug_assert!(!name.is_empty() && !name.contains(&b'/'));
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        if !bytes.is_empty() {
            bytes.push(b'/');
        }
        bytes.extend_from_slice(name);
        RelPath(bytes)
    }

    /// Returns true for the backing root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Returns the path as an `OsStr`, for use with `std::path`.
    pub fn as_os_str(&self) -> &OsStr {
        OsStr::from_bytes(&self.0)
    }

    /// Returns the components from the root down.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .map(OsStr::from_bytes)
    }

    /// Splits into the parent directory and the final name; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        if self.0.is_empty() {
            return None;
        }
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Some((
                RelPath(self.0[..i].to_vec()),
                OsStr::from_bytes(&self.0[i + 1..]),
            )),
            None => Some((RelPath::root(), OsStr::from_bytes(&self.0))),
        }
    }

    /// Returns true if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        if other.is_root() {
            return true;
        }
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_os_str())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return write!(f, ".");
        }
        write!(f, "{}", self.as_os_str().to_string_lossy())
    }
}

/// A point in time as seconds and nanoseconds since the Unix epoch, as `utimensat` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// One mutating operation, with every value resolved to what the backing directory got:
/// "now" is replaced by the time stored, and modes are the ones after the umask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Writes `data` at `offset` of a regular file.
    Write {
        path: RelPath,
        offset: u64,
        data: Vec<u8>,
    },
    /// Creates an empty regular file (fails if the name exists).
    Create {
        path: RelPath,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Creates a FIFO, socket or device node; `mode` includes the file type bits.
    Mknod {
        path: RelPath,
        mode: u32,
        rdev: u64,
        uid: u32,
        gid: u32,
    },
    /// Creates a directory.
    Mkdir {
        path: RelPath,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Creates a symbolic link holding `target` as raw bytes.
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
    /// Creates `path` as a hard link to `existing`.
    Link { existing: RelPath, path: RelPath },
    /// Removes a non-directory name.
    Unlink { path: RelPath },
    /// Removes an empty directory.
    Rmdir { path: RelPath },
    /// Renames `from` to `to`; `flags` are `renameat2` flags (RENAME_NOREPLACE,
    /// RENAME_EXCHANGE).
    Rename {
        from: RelPath,
        to: RelPath,
        flags: u32,
    },
    /// Sets the size of a regular file.
    Truncate { path: RelPath, size: u64 },
    /// Sets the permission bits (including setuid, setgid and sticky).
    SetMode { path: RelPath, mode: u32 },
    /// Changes owner and group; `None` leaves that id unchanged.
    SetOwner {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    /// Sets access and modification times; `None` leaves that time unchanged.
    SetTimes {
        path: RelPath,
        atime: Option<Timestamp>,
        mtime: Option<Timestamp>,
    },
    /// Allocates or deallocates a range (`fallocate(2)` mode bits).
    Fallocate {
        path: RelPath,
        mode: i32,
        offset: u64,
        length: u64,
    },
    /// Sets an extended attribute; `flags` are XATTR_CREATE or XATTR_REPLACE.
    SetXattr {
        path: RelPath,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
    },
    /// Removes an extended attribute.
    RemoveXattr { path: RelPath, name: Vec<u8> },
    /// The last handle open for writing on a regular file was released, after the file
    /// changed. Nothing changes on a mirror; the S3 mirror updates the file's readable copy.
    CloseWrite { path: RelPath },
}

impl Op {
    /// Returns the short name of the operation, for logs and status.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Write { .. } => "write",
            Op::Create { .. } => "create",
            Op::Mknod { .. } => "mknod",
            Op::Mkdir { .. } => "mkdir",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Truncate { .. } => "truncate",
            Op::SetMode { .. } => "chmod",
            Op::SetOwner { .. } => "chown",
            Op::SetTimes { .. } => "utimens",
            Op::Fallocate { .. } => "fallocate",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::CloseWrite { .. } => "close",
        }
    }

    /// Returns the path the operation acts on (the source of a rename or link).
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Write { path, .. }
            | Op::Create { path, .. }
            | Op::Mknod { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Truncate { path, .. }
            | Op::SetMode { path, .. }
            | Op::SetOwner { path, .. }
            | Op::SetTimes { path, .. }
            | Op::Fallocate { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::CloseWrite { path } => path,
            Op::Link { existing, .. } => existing,
            Op::Rename { from, .. } => from,
        }
    }
}

impl Op {
    /// Returns the paths whose entry the operation adds, removes or replaces: every path of
    /// a create, link, unlink, rename and the like, and none for a change of data or
    /// attributes.
    pub fn changed_names(&self) -> Vec<&RelPath> {
        match self {
            Op::Create { path, .. }
            | Op::Mknod { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path } => vec![path],
            Op::Rename { from, to, .. } => vec![from, to],
            Op::Write { .. }
            | Op::Truncate { .. }
            | Op::SetMode { .. }
            | Op::SetOwner { .. }
            | Op::SetTimes { .. }
            | Op::Fallocate { .. }
            | Op::SetXattr { .. }
            | Op::RemoveXattr { .. }
            | Op::CloseWrite { .. } => Vec::new(),
        }
    }
}

/// A committed operation with its place in the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: Seq,
    /// Wall-clock time of the commit, in nanoseconds since the Unix epoch; used for lag in
    /// seconds.
    pub committed_at_ns: u64,
    pub op: Op,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_rejects_escapes() {
        assert!(RelPath::from_bytes(b"../x").is_none());
        assert!(RelPath::from_bytes(b"/etc").is_none());
        assert!(RelPath::from_bytes(b"a//b").is_none());
        assert!(RelPath::from_bytes(b"a/./b").is_none());
        assert!(RelPath::from_bytes(b"a/b\0").is_none());
        assert_eq!(RelPath::from_bytes(b"a/b c").unwrap().as_bytes(), b"a/b c");
    }

    #[test]
    fn relpath_join_and_split() {
        let dir = RelPath::root().join(OsStr::new("logs"));
        let file = dir.join(OsStr::from_bytes(b"app\xff.log"));
        assert_eq!(file.as_bytes(), b"logs/app\xff.log");
        let (parent, name) = file.split_last().unwrap();
        assert_eq!(parent, dir);
        assert_eq!(name.as_bytes(), b"app\xff.log");
        assert!(file.starts_with(&dir));
        assert!(!RelPath::from_bytes(b"logsx").unwrap().starts_with(&dir));
    }
}
