//! Manifests: a listing of a tree (type, mode, size, CRC32C, symlink target) used to compare
//! the backing directory with a mirror (verify) and to bring a mirror back in line (resync).

use std::collections::BTreeMap;

use crate::journal::RelPath;

/// Kind of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// One entry of a tree listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission bits, including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes for files; 0 for other kinds.
    pub size: u64,
    /// CRC32C of the content of a regular file.
    pub crc32c: Option<u32>,
    /// Target of a symbolic link, as raw bytes.
    pub target: Option<Vec<u8>>,
    /// `(st_dev, st_ino)` of a regular file with more than one hard link, so that a resync
    /// can recreate the links.
    pub hard_link: Option<(u64, u64)>,
}

/// A tree listing keyed by path relative to the tree's root (the root itself excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<RelPath, Entry>,
}
