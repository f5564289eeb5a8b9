//! Manifests: a listing of a tree (type, mode, size, CRC32C, symlink target) used to compare
//! the backing directory with a mirror (verify) and to bring a mirror back in line (resync).
//!
//! Scans resolve every entry through directory descriptors with `O_NOFOLLOW`, so a symbolic
//! link inside the tree is listed as a link and never followed.

mod repair;

pub use repair::{RepairOps, ResyncStats, repair_ops, resync, resync_selected};

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::journal::RelPath;

use super::at;

/// Size of the reads that checksum a file and copy it in a resync.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

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

impl EntryKind {
    /// Returns the kind for the file type bits (`S_IFMT`) of a mode, or `None` for an unknown
    /// type.
    pub fn from_mode(mode: u32) -> Option<EntryKind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(EntryKind::File),
            libc::S_IFDIR => Some(EntryKind::Dir),
            libc::S_IFLNK => Some(EntryKind::Symlink),
            libc::S_IFIFO => Some(EntryKind::Fifo),
            libc::S_IFSOCK => Some(EntryKind::Socket),
            libc::S_IFCHR => Some(EntryKind::CharDevice),
            libc::S_IFBLK => Some(EntryKind::BlockDevice),
            _ => None,
        }
    }

    /// Returns the file type bits (`S_IFMT`) of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            EntryKind::File => libc::S_IFREG,
            EntryKind::Dir => libc::S_IFDIR,
            EntryKind::Symlink => libc::S_IFLNK,
            EntryKind::Fifo => libc::S_IFIFO,
            EntryKind::Socket => libc::S_IFSOCK,
            EntryKind::CharDevice => libc::S_IFCHR,
            EntryKind::BlockDevice => libc::S_IFBLK,
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            EntryKind::File => "file",
            EntryKind::Dir => "directory",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "FIFO",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
        };
        f.write_str(name)
    }
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
    /// Names of the `user.` extended attributes of a regular file or directory, with the
    /// CRC32C of each value. `None` for other kinds, and where the filesystem has no
    /// extended attributes.
    pub xattrs: Option<BTreeMap<Vec<u8>, u32>>,
}

/// A tree listing keyed by path relative to the tree's root (the root itself excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: BTreeMap<RelPath, Entry>,
}

impl Manifest {
    /// Returns, for each regular file that shares its inode with another listed path, the
    /// first such path in path order (the file itself excluded). Paths that are the first of
    /// their group, or not hard links, are absent.
    pub fn link_leaders(&self) -> HashMap<&RelPath, &RelPath> {
        let mut first: HashMap<(u64, u64), &RelPath> = HashMap::new();
        let mut leaders = HashMap::new();
        for (path, entry) in &self.entries {
            let Some(key) = entry.hard_link else { continue };
            match first.get(&key) {
                Some(leader) => {
                    leaders.insert(path, *leader);
                }
                None => {
                    first.insert(key, path);
                }
            }
        }
        leaders
    }
}

/// A failure to list a tree, with the entry that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to read {path} while listing the tree")]
pub struct ScanError {
    pub path: RelPath,
    #[source]
    pub source: io::Error,
}

/// Lists the tree at `root` with a CRC32C of every regular file, leaving out the names in
/// `skip_at_root` directly below the root. Entries that disappear during the scan are left
/// out, so a tree that changes while it is scanned gives a listing of some mix of its states.
pub fn scan_tree(root: &Path, skip_at_root: &[&OsStr]) -> Result<Manifest, ScanError> {
    let fd = at::open_root(root).map_err(|source| ScanError {
        path: RelPath::root(),
        source,
    })?;
    scan_fd(fd.as_fd(), skip_at_root)
}

/// Lists the tree below the open directory `root`, as [`scan_tree`] does.
pub(crate) fn scan_fd(root: BorrowedFd, skip_at_root: &[&OsStr]) -> Result<Manifest, ScanError> {
    let mut scan = Scan {
        manifest: Manifest::default(),
        buf: vec![0; CHUNK_BYTES],
        skip_at_root,
    };
    scan.dir(root, &RelPath::root())?;
    Ok(scan.manifest)
}

/// Lists the entry at `path` below `root`, and everything below it when it is a directory,
/// as [`scan_tree`] does. Returns `None` when `path` does not exist.
pub fn scan_path(root: &Path, path: &RelPath) -> Result<Option<Manifest>, ScanError> {
    let error = |source| ScanError {
        path: path.clone(),
        source,
    };
    let root = at::open_root(root).map_err(error)?;
    let (dir, name) = match at::walk_parent(root.as_fd(), path) {
        Ok(found) => found,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(None);
        }
        Err(e) => return Err(error(e)),
    };
    let mut scan = Scan {
        manifest: Manifest::default(),
        buf: vec![0; CHUNK_BYTES],
        skip_at_root: &[],
    };
    match scan.entry(dir.as_fd(), &name, path) {
        Ok(()) => Ok(Some(scan.manifest)),
        Err(EntryError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(EntryError::Io(e)) => Err(error(e)),
        Err(EntryError::Below(e)) => Err(e),
    }
}

struct Scan<'a> {
    manifest: Manifest,
    buf: Vec<u8>,
    skip_at_root: &'a [&'a OsStr],
}

impl Scan<'_> {
    fn dir(&mut self, dir: BorrowedFd, rel: &RelPath) -> Result<(), ScanError> {
        let names = at::list_names(dir).map_err(|source| ScanError {
            path: rel.clone(),
            source,
        })?;
        for name in names {
            if rel.is_root() && self.skip_at_root.contains(&name.as_os_str()) {
                continue;
            }
            let path = rel.join(&name);
            let result = at::c_name(&name)
                .map_err(EntryError::Io)
                .and_then(|c_name| self.entry(dir, &c_name, &path));
            match result {
                Ok(()) => {}
                Err(EntryError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(EntryError::Io(source)) => return Err(ScanError { path, source }),
                Err(EntryError::Below(e)) => return Err(e),
            }
        }
        Ok(())
    }

    fn entry(&mut self, dir: BorrowedFd, name: &CStr, path: &RelPath) -> Result<(), EntryError> {
        let st = at::stat_at(dir, name)?;
        let Some(kind) = EntryKind::from_mode(st.st_mode) else {
            // NOTE: entries of an unknown file type are left out of manifests.
            return Ok(());
        };
        let mut entry = Entry {
            kind,
            mode: st.st_mode & 0o7777,
            size: 0,
            crc32c: None,
            target: None,
            hard_link: None,
            xattrs: None,
        };
        match kind {
            EntryKind::File => self.file(dir, name, &mut entry)?,
            EntryKind::Symlink => entry.target = Some(at::read_link_at(dir, name)?),
            EntryKind::Dir => {
                let child = at::open_dir_at(dir, name)?;
                entry.xattrs = at::user_xattrs(child.as_fd())?;
                self.manifest.entries.insert(path.clone(), entry);
                self.dir(child.as_fd(), path).map_err(EntryError::Below)?;
                return Ok(());
            }
            _ => {}
        }
        self.manifest.entries.insert(path.clone(), entry);
        Ok(())
    }

    /// Fills in size, checksum, mode and link key from the open file, so the values describe
    /// one inode even if the name changed after the first look.
    fn file(&mut self, dir: BorrowedFd, name: &CStr, entry: &mut Entry) -> io::Result<()> {
        // O_NONBLOCK keeps the open from waiting if the name was swapped for a FIFO.
        let fd = at::open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let st = at::fstat(fd.as_fd())?;
        if at::file_type(&st) != libc::S_IFREG {
            return Err(io::Error::other(
                "changed type while being read; scan again",
            ));
        }
        let mut file = File::from(fd);
        let mut crc = 0u32;
        let mut size = 0u64;
        loop {
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            crc = crc32c::crc32c_append(crc, &self.buf[..n]);
            size += n as u64;
        }
        entry.mode = st.st_mode & 0o7777;
        entry.size = size;
        entry.crc32c = Some(crc);
        entry.hard_link = (st.st_nlink > 1).then_some(at::file_id(&st));
        entry.xattrs = at::user_xattrs(file.as_fd())?;
        Ok(())
    }
}

/// A failure at one entry, or one already wrapped below a subdirectory.
enum EntryError {
    Io(io::Error),
    Below(ScanError),
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> EntryError {
        EntryError::Io(e)
    }
}

/// One way a mirror's tree differs from the backing tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The path exists in the backing tree only.
    Missing { path: RelPath, backing: Entry },
    /// The path exists on the mirror only.
    Extra { path: RelPath, mirror: Entry },
    /// The path exists in the backing tree and on the mirror, but the path rules keep it off
    /// this mirror.
    NotHeld { path: RelPath, mirror: Entry },
    /// The path has a different file type on each side.
    Kind {
        path: RelPath,
        backing: EntryKind,
        mirror: EntryKind,
    },
    /// A regular file has a different size on each side.
    Size {
        path: RelPath,
        backing: u64,
        mirror: u64,
    },
    /// Permission bits differ (never reported for symbolic links).
    Mode {
        path: RelPath,
        backing: u32,
        mirror: u32,
    },
    /// A regular file has the same size but different content.
    Content {
        path: RelPath,
        backing_crc: u32,
        mirror_crc: u32,
    },
    /// A symbolic link points somewhere else.
    Target {
        path: RelPath,
        backing: Vec<u8>,
        mirror: Vec<u8>,
    },
    /// A regular file is a hard link to another path on one side but not on the other. Each
    /// side gives the first other path sharing the file's inode, if any.
    Link {
        path: RelPath,
        backing: Option<RelPath>,
        mirror: Option<RelPath>,
    },
    /// A `user.` extended attribute differs: each side gives the CRC32C of its value, or
    /// `None` where the attribute is missing.
    Xattr {
        path: RelPath,
        name: Vec<u8>,
        backing: Option<u32>,
        mirror: Option<u32>,
    },
}

impl Difference {
    /// Returns the path that differs.
    pub fn path(&self) -> &RelPath {
        match self {
            Difference::Missing { path, .. }
            | Difference::Extra { path, .. }
            | Difference::NotHeld { path, .. }
            | Difference::Kind { path, .. }
            | Difference::Size { path, .. }
            | Difference::Mode { path, .. }
            | Difference::Content { path, .. }
            | Difference::Target { path, .. }
            | Difference::Link { path, .. }
            | Difference::Xattr { path, .. } => path,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing { path, backing } => write!(
                f,
                "missing on mirror: {} ({} in backing)",
                Escaped(path.as_bytes()),
                backing.kind
            ),
            Difference::Extra { path, mirror } => write!(
                f,
                "not in backing: {} ({} on mirror)",
                Escaped(path.as_bytes()),
                mirror.kind
            ),
            Difference::NotHeld { path, mirror } => write!(
                f,
                "outside the mirror's rules: {} ({} on mirror, which no rule sends here)",
                Escaped(path.as_bytes()),
                mirror.kind
            ),
            Difference::Kind {
                path,
                backing,
                mirror,
            } => write!(
                f,
                "type differs: {} (backing {backing}, mirror {mirror})",
                Escaped(path.as_bytes())
            ),
            Difference::Size {
                path,
                backing,
                mirror,
            } => write!(
                f,
                "size differs: {} (backing {backing} bytes, mirror {mirror} bytes)",
                Escaped(path.as_bytes())
            ),
            Difference::Mode {
                path,
                backing,
                mirror,
            } => write!(
                f,
                "mode differs: {} (backing {backing:04o}, mirror {mirror:04o})",
                Escaped(path.as_bytes())
            ),
            Difference::Content {
                path,
                backing_crc,
                mirror_crc,
            } => write!(
                f,
                "content differs: {} (backing crc32c {backing_crc:#010x}, mirror {mirror_crc:#010x})",
                Escaped(path.as_bytes())
            ),
            Difference::Target {
                path,
                backing,
                mirror,
            } => write!(
                f,
                "symlink target differs: {} (backing {}, mirror {})",
                Escaped(path.as_bytes()),
                Escaped(backing),
                Escaped(mirror)
            ),
            Difference::Link {
                path,
                backing,
                mirror,
            } => write!(
                f,
                "hard links differ: {} (backing {}, mirror {})",
                Escaped(path.as_bytes()),
                LinkedTo(backing.as_ref()),
                LinkedTo(mirror.as_ref())
            ),
            Difference::Xattr {
                path,
                name,
                backing,
                mirror,
            } => write!(
                f,
                "xattr differs: {} ({}: backing {}, mirror {})",
                Escaped(path.as_bytes()),
                Escaped(name),
                XattrValue(*backing),
                XattrValue(*mirror)
            ),
        }
    }
}

struct XattrValue(Option<u32>);

impl fmt::Display for XattrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(crc) => write!(f, "crc32c {crc:#010x}"),
            None => f.write_str("missing"),
        }
    }
}

/// Shows raw name bytes on one line: control characters and backslashes escaped, bytes that
/// are not UTF-8 as `\xNN`.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() || c == '\\' {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

struct LinkedTo<'a>(Option<&'a RelPath>);

impl fmt::Display for LinkedTo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "linked to {}", Escaped(path.as_bytes())),
            None => f.write_str("not linked to another listed path"),
        }
    }
}

/// Returns every difference between the backing tree and a mirror, in path order. A path
/// whose type differs gets only a `Kind` difference, and a size difference hides the content
/// difference it implies.
pub fn diff(backing: &Manifest, mirror: &Manifest) -> Vec<Difference> {
    let backing_leaders = backing.link_leaders();
    let mirror_leaders = mirror.link_leaders();
    let mut differences = Vec::new();

    let mut backing_iter = backing.entries.iter().peekable();
    let mut mirror_iter = mirror.entries.iter().peekable();
    loop {
        let order = match (backing_iter.peek(), mirror_iter.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((b, _)), Some((m, _))) => b.cmp(m),
        };
        match order {
            std::cmp::Ordering::Less => {
                let (path, entry) = backing_iter.next().expect("peeked an entry");
                differences.push(Difference::Missing {
                    path: path.clone(),
                    backing: entry.clone(),
                });
            }
            std::cmp::Ordering::Greater => {
                let (path, entry) = mirror_iter.next().expect("peeked an entry");
                differences.push(Difference::Extra {
                    path: path.clone(),
                    mirror: entry.clone(),
                });
            }
            std::cmp::Ordering::Equal => {
                let (path, b) = backing_iter.next().expect("peeked an entry");
                let (_, m) = mirror_iter.next().expect("peeked an entry");
                let leaders = (
                    backing_leaders.get(path).copied(),
                    mirror_leaders.get(path).copied(),
                );
                compare_entry(path, b, m, leaders, &mut differences);
            }
        }
    }
    differences
}

fn compare_entry(
    path: &RelPath,
    backing: &Entry,
    mirror: &Entry,
    leaders: (Option<&RelPath>, Option<&RelPath>),
    out: &mut Vec<Difference>,
) {
    let path = path.clone();
    if backing.kind != mirror.kind {
        out.push(Difference::Kind {
            path,
            backing: backing.kind,
            mirror: mirror.kind,
        });
        return;
    }
    if backing.kind == EntryKind::Symlink {
        if backing.target != mirror.target {
            out.push(Difference::Target {
                path,
                backing: backing.target.clone().unwrap_or_default(),
                mirror: mirror.target.clone().unwrap_or_default(),
            });
        }
        return;
    }
    if backing.kind == EntryKind::File {
        if backing.size != mirror.size {
            out.push(Difference::Size {
                path: path.clone(),
                backing: backing.size,
                mirror: mirror.size,
            });
        } else if backing.crc32c != mirror.crc32c {
            out.push(Difference::Content {
                path: path.clone(),
                backing_crc: backing.crc32c.unwrap_or_default(),
                mirror_crc: mirror.crc32c.unwrap_or_default(),
            });
        }
    }
    if backing.mode != mirror.mode {
        out.push(Difference::Mode {
            path: path.clone(),
            backing: backing.mode,
            mirror: mirror.mode,
        });
    }
    if leaders.0 != leaders.1 {
        out.push(Difference::Link {
            path: path.clone(),
            backing: leaders.0.cloned(),
            mirror: leaders.1.cloned(),
        });
    }
    for (name, backing_crc, mirror_crc) in xattr_differences(backing, mirror) {
        out.push(Difference::Xattr {
            path: path.clone(),
            name: name.to_vec(),
            backing: backing_crc,
            mirror: mirror_crc,
        });
    }
}

/// Returns each `user.` extended attribute whose value differs between two entries, with
/// the CRC32C on each side (`None` where it is missing). Entries of which one side has no
/// listing (a filesystem without extended attributes) give none.
pub(crate) fn xattr_differences<'a>(
    backing: &'a Entry,
    mirror: &'a Entry,
) -> Vec<(&'a [u8], Option<u32>, Option<u32>)> {
    let (Some(wanted), Some(current)) = (&backing.xattrs, &mirror.xattrs) else {
        return Vec::new();
    };
    let names: std::collections::BTreeSet<&Vec<u8>> = wanted.keys().chain(current.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| {
            let (b, m) = (wanted.get(name).copied(), current.get(name).copied());
            (b != m).then_some((name.as_slice(), b, m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, crc: u32) -> Entry {
        Entry {
            kind: EntryKind::File,
            mode: 0o644,
            size,
            crc32c: Some(crc),
            target: None,
            hard_link: None,
            xattrs: None,
        }
    }

    #[test]
    fn difference_display_one_line() {
        let path = RelPath::from_bytes(b"logs/a\nb\\c\xff").expect("valid path");
        let missing = Difference::Missing {
            path: path.clone(),
            backing: file(1, 2),
        };
        assert_eq!(
            missing.to_string(),
            "missing on mirror: logs/a\\nb\\\\c\\xff (file in backing)"
        );
        let size = Difference::Size {
            path: path.clone(),
            backing: 10,
            mirror: 4,
        };
        assert_eq!(
            size.to_string(),
            "size differs: logs/a\\nb\\\\c\\xff (backing 10 bytes, mirror 4 bytes)"
        );
        let target = Difference::Target {
            path,
            backing: b"ok".to_vec(),
            mirror: b"\x01".to_vec(),
        };
        assert_eq!(
            target.to_string(),
            "symlink target differs: logs/a\\nb\\\\c\\xff (backing ok, mirror \\u{1})"
        );
    }

    #[test]
    fn diff_size_hides_content() {
        let path = RelPath::from_bytes(b"f").expect("valid path");
        let mut backing = Manifest::default();
        backing.entries.insert(path.clone(), file(10, 1));
        let mut mirror = Manifest::default();
        let mut changed = file(9, 2);
        changed.mode = 0o600;
        mirror.entries.insert(path.clone(), changed);
        assert_eq!(
            diff(&backing, &mirror),
            vec![
                Difference::Size {
                    path: path.clone(),
                    backing: 10,
                    mirror: 9,
                },
                Difference::Mode {
                    path,
                    backing: 0o644,
                    mirror: 0o600,
                },
            ]
        );
    }

    #[test]
    fn diff_ignores_symlink_mode() {
        let path = RelPath::from_bytes(b"l").expect("valid path");
        let link = |mode| Entry {
            kind: EntryKind::Symlink,
            mode,
            size: 0,
            crc32c: None,
            target: Some(b"t".to_vec()),
            hard_link: None,
            xattrs: None,
        };
        let mut backing = Manifest::default();
        backing.entries.insert(path.clone(), link(0o777));
        let mut mirror = Manifest::default();
        mirror.entries.insert(path, link(0o755));
        assert_eq!(diff(&backing, &mirror), Vec::new());
    }
}
