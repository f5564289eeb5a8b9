//! Helpers of the `semantics_*` tests, which compare a logmirror mount with a local disk.
//!
//! A [`Case`] mounts one directory mirror and keeps a plain directory on the same filesystem
//! beside it, so a test can run the same syscalls on both. When the test body returns, the
//! case checks that `sync` and `verify` exit 0 and that backing, mount and mirror list the
//! same tree, names compared as raw bytes.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{
    COMMAND_TIMEOUT, CmdOutput, Mode, Mount, STATE_DIR, SYNC_TIMEOUT_SECS, TestDirs, can_mount,
};

/// Defines `NAME::sync_mode` and `NAME::async_mode` tests that call `NAME(Mode)`.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sync_mode() {
                    super::$name($crate::common::Mode::Sync);
                }

                #[test]
                fn async_mode() {
                    super::$name($crate::common::Mode::Async);
                }
            }
        )*
    };
}

/// uid and gid of `nobody` on Debian, used for the unprivileged process in tests.
pub const NOBODY: u32 = 65534;

/// A mount with one directory mirror, and a plain directory on the same filesystem.
pub struct Case<'a> {
    pub dirs: &'a TestDirs,
    pub mode: Mode,
    /// Directory beside the mount, on the filesystem of the backing directory.
    pub plain: PathBuf,
    mount: Option<Mount<'a>>,
}

/// Runs `body` against a fresh mount in `mode`, then asserts that the mirror is complete
/// (see [`Case::assert_mirror_complete`]). Skips like every FUSE test without root.
pub fn with_case(mode: Mode, body: impl FnOnce(&mut Case)) {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    // The unprivileged tests run as nobody, which must reach the mount point.
    fs::set_permissions(&dirs.root, fs::Permissions::from_mode(0o755)).expect("chmod test root");
    let plain = dirs.root.join("plain");
    fs::create_dir(&plain).expect("create plain directory");
    let mount = Mount::new(&dirs, mode);
    let mut case = Case {
        dirs: &dirs,
        mode,
        plain,
        mount: Some(mount),
    };
    body(&mut case);
    case.assert_mirror_complete();
}

impl<'a> Case<'a> {
    pub fn mount(&self) -> &Mount<'a> {
        self.mount.as_ref().expect("mounted")
    }

    pub fn mnt(&self) -> &Path {
        &self.dirs.mnt
    }

    pub fn backing(&self) -> &Path {
        &self.dirs.backing
    }

    pub fn mirror(&self) -> &Path {
        &self.dirs.mirrors[0]
    }

    /// Returns `rel` inside the mount point.
    pub fn in_mount(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dirs.mnt.join(rel)
    }

    pub fn in_backing(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dirs.backing.join(rel)
    }

    pub fn in_mirror(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dirs.mirrors[0].join(rel)
    }

    pub fn in_plain(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.plain.join(rel)
    }

    /// Runs `op` with the mount point and then with the plain directory as its root, and
    /// returns both results (mount first).
    pub fn on_both<T>(&self, mut op: impl FnMut(&Path) -> T) -> (T, T) {
        let through_mount = op(self.mnt());
        let plain = op(&self.plain);
        (through_mount, plain)
    }

    /// Runs `logmirror sync` and asserts exit 0.
    pub fn sync(&self) {
        self.mount()
            .sync(SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync");
    }

    /// Unmounts (waiting for the daemon to drain and exit) and mounts again with the same
    /// options.
    pub fn remount(&mut self) {
        let mount = self.mount.take().expect("mounted");
        let options = mount.options.clone();
        mount.unmount();
        self.mount = Some(Mount::with_options(self.dirs, &options));
    }

    /// Asserts that `logmirror sync` and `logmirror verify` exit 0, and that the backing
    /// directory, the mount and the mirror list the same [`exact_tree`].
    pub fn assert_mirror_complete(&self) {
        self.sync();
        let backing = exact_tree(self.backing(), &[STATE_DIR]);
        let view = exact_tree(self.mnt(), &[]);
        let copy = exact_tree(self.mirror(), &[]);
        assert_same_exact("backing", &backing, "mount", &view);
        assert_same_exact("backing", &backing, "mirror", &copy);
        assert_eq!(backing.digest, copy.digest);
        let out = self.mount().verify();
        assert_eq!(out.code(), 0, "logmirror verify found differences: {out}");
    }
}

/// Listing of a tree with every name as raw bytes, and a sha256 over the whole listing.
#[derive(Debug, PartialEq, Eq)]
pub struct ExactTree {
    pub entries: BTreeMap<Vec<u8>, String>,
    pub digest: String,
}

/// Lists `dir` recursively, leaving out the names in `skip_at_root` at the top level. Each
/// entry has its type, permission bits, owner, link count and, by type, the size and a
/// digest of the content (holes and zeros alike), the symlink target or the device number,
/// and the `user.` extended attributes.
pub fn exact_tree(dir: &Path, skip_at_root: &[&str]) -> ExactTree {
    let mut entries = BTreeMap::new();
    walk_exact(dir, b"", skip_at_root, &mut entries);
    let mut hasher = Sha256::new();
    for (path, value) in &entries {
        hasher.update(path);
        hasher.update(b"\0");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    ExactTree {
        entries,
        digest: hex(&hasher.finalize()),
    }
}

fn walk_exact(dir: &Path, prefix: &[u8], skip: &[&str], entries: &mut BTreeMap<Vec<u8>, String>) {
    let listing = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for entry in listing {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
        let name = entry.file_name();
        if prefix.is_empty() && skip.iter().any(|s| OsStr::new(s) == name) {
            continue;
        }
        let mut rel = prefix.to_vec();
        rel.extend_from_slice(name.as_bytes());
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
        let mut value = format!(
            "mode={:o} uid={} gid={} nlink={}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.nlink()
        );
        let kind = meta.mode() & libc::S_IFMT;
        if kind == libc::S_IFREG {
            value.push_str(&format!(
                " size={} content={}",
                meta.size(),
                content_digest(&path)
            ));
        } else if kind == libc::S_IFLNK {
            let target = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {path:?}: {e}"));
            value.push_str(&format!(
                " target={}",
                escape(target.as_os_str().as_bytes())
            ));
        } else if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            value.push_str(&format!(" rdev={}", meta.rdev()));
        }
        if kind != libc::S_IFLNK {
            for (name, data) in user_xattrs(&path) {
                value.push_str(&format!(" xattr:{}={}", escape(&name), escape(&data)));
            }
        }
        entries.insert(rel.clone(), value);
        if kind == libc::S_IFDIR {
            rel.push(b'/');
            walk_exact(&path, &rel, skip, entries);
        }
    }
}

/// Returns a sha256 over the non-zero 64 KiB blocks of a file and their indexes, so that a
/// hole and written zeros give the same digest. Only the data ranges that SEEK_DATA and
/// SEEK_HOLE report are read, which keeps a sparse file of many GiB quick to hash.
pub fn content_digest(path: &Path) -> String {
    const BLOCK: u64 = 1 << 16;
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let size = file.metadata().expect("fstat").len();
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = vec![0u8; BLOCK as usize];
    let mut next_block = 0;
    let mut offset = 0;
    while offset < size {
        let Ok(data) = lseek(&file, offset as i64, libc::SEEK_DATA) else {
            break;
        };
        let hole = lseek(&file, data, libc::SEEK_HOLE).expect("SEEK_HOLE after SEEK_DATA") as u64;
        let first = (data as u64 / BLOCK).max(next_block);
        let end = hole.div_ceil(BLOCK);
        for block in first..end {
            let start = block * BLOCK;
            let len = (size - start).min(BLOCK) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf[..len], start)
                .unwrap_or_else(|e| panic!("read {path:?} at {start}: {e}"));
            if buf[..len].iter().any(|&b| b != 0) {
                hasher.update(block.to_le_bytes());
                hasher.update(&buf[..len]);
            }
        }
        next_block = end;
        offset = hole;
    }
    hex(&hasher.finalize())
}

fn user_xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let names = list_xattrs(path).unwrap_or_default();
    names
        .into_iter()
        .filter(|name| name.starts_with(b"user."))
        .map(|name| {
            let value = get_xattr(path, &name)
                .unwrap_or_else(|e| panic!("getxattr {path:?} {}: {e}", escape(&name)));
            (name, value)
        })
        .collect()
}

/// Formats bytes as text, with `\xNN` for anything outside printable ASCII and for `\`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Panics unless two exact listings are equal, naming each path that differs.
pub fn assert_same_exact(
    expected_label: &str,
    expected: &ExactTree,
    actual_label: &str,
    actual: &ExactTree,
) {
    if expected == actual {
        return;
    }
    let mut problems = Vec::new();
    for (path, value) in &expected.entries {
        let path_text = escape(path);
        match actual.entries.get(path) {
            None => problems.push(format!("{path_text}: only in {expected_label}")),
            Some(other) if other != value => problems.push(format!(
                "{path_text}:\n  {expected_label} {value}\n  {actual_label} {other}"
            )),
            Some(_) => {}
        }
    }
    for path in actual.entries.keys() {
        if !expected.entries.contains_key(path) {
            problems.push(format!("{}: only in {actual_label}", escape(path)));
        }
    }
    let shown = problems.len().min(30);
    panic!(
        "{expected_label} and {actual_label} differ in {} paths:\n{}",
        problems.len(),
        problems[..shown].join("\n")
    );
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in a test path")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Returns the errno of a failed call, or 0 for success, so that a test can compare the
/// outcome on the mount with the outcome on the plain directory in one assert.
pub fn errno_of<T>(result: &io::Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

pub fn lseek(fd: &impl AsRawFd, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: lseek has no memory-safety preconditions.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

pub fn fallocate(fd: &impl AsRawFd, mode: i32, offset: i64, length: i64) -> io::Result<()> {
    // SAFETY: fallocate has no memory-safety preconditions.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, length) })
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (from, to) = (cpath(from), cpath(to));
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

/// Sets access and modification time of `path` without following a symlink. Each time is
/// `(seconds, nanoseconds)`, and the nanoseconds may be `UTIME_NOW` or `UTIME_OMIT`.
pub fn utimensat(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let path = cpath(path);
    let times = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: NUL-terminated path and a two-element timespec array.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = cpath(path);
    // SAFETY: an all-zero statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a writable buffer.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

pub fn statfs_type(path: &Path) -> io::Result<i64> {
    let path = cpath(path);
    // SAFETY: an all-zero statfs is a valid value of a plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path and a writable buffer.
    check(unsafe { libc::statfs(path.as_ptr(), &mut st) })?;
    Ok(st.f_type)
}

pub fn set_xattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let (path, name) = (cpath(path), CString::new(name).expect("no NUL in name"));
    // SAFETY: NUL-terminated strings and a value buffer of the given length.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

pub fn get_xattr(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let (path, name) = (cpath(path), CString::new(name).expect("no NUL in name"));
    let mut buf = vec![0u8; 65536];
    // SAFETY: NUL-terminated strings and a writable buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn remove_xattr(path: &Path, name: &[u8]) -> io::Result<()> {
    let (path, name) = (cpath(path), CString::new(name).expect("no NUL in name"));
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })
}

/// Returns the sizes that `llistxattr` and `lgetxattr` report for a size probe (a zero-length
/// buffer), the way `getfattr`, `cp --preserve=xattr` and `rsync -X` ask first.
pub fn xattr_probe_sizes(path: &Path, name: &[u8]) -> (isize, isize) {
    let (path, name) = (cpath(path), CString::new(name).expect("no NUL in name"));
    // SAFETY: NUL-terminated strings; a null buffer with size 0 asks for the size only.
    let list = unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
    // SAFETY: as above.
    let value = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    (list, value)
}

/// Returns the extended attribute names of `path` in the order the filesystem lists them.
pub fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let path = cpath(path);
    let mut buf = vec![0u8; 65536];
    // SAFETY: NUL-terminated path and a writable buffer of the given length.
    let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Takes or releases a `flock` lock; `operation` is `LOCK_SH`, `LOCK_EX` or `LOCK_UN`,
/// optionally with `LOCK_NB`.
pub fn flock(fd: BorrowedFd<'_>, operation: i32) -> io::Result<()> {
    // SAFETY: flock has no memory-safety preconditions.
    check(unsafe { libc::flock(fd.as_raw_fd(), operation) })
}

/// Issues `F_SETLK`, `F_SETLKW` or `F_GETLK` for a lock of `kind` (`F_RDLCK`, `F_WRLCK`,
/// `F_UNLCK`) on `len` bytes from `start`, and returns the lock description as the kernel
/// left it.
pub fn fcntl_lock(
    fd: BorrowedFd<'_>,
    command: i32,
    kind: i32,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: an all-zero flock is a valid value of a plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as i16;
    lock.l_whence = libc::SEEK_SET as i16;
    lock.l_start = start;
    lock.l_len = len;
    // SAFETY: the lock commands read and write one flock struct, which outlives the call.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), command, &mut lock) })?;
    Ok(lock)
}

/// Returns the stat of `path` without following a symlink.
pub fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"))
}

/// Returns the names in a directory as raw bytes, sorted.
pub fn names_of(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
            entry.file_name().into_vec()
        })
        .collect();
    names.sort();
    names
}

pub fn os(bytes: &[u8]) -> OsString {
    OsString::from_vec(bytes.to_vec())
}

/// Runs `/usr/bin/python3 -c SCRIPT ARGS...` as `nobody` (uid and gid 65534, no
/// supplementary groups) through setpriv. The system interpreter is used because the
/// one on PATH may live under a home directory that nobody cannot read.
pub fn python_as_nobody(script: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        "/usr/bin/python3",
        "-c",
        script,
    ])
    .args(args)
    .env("PYTHONDONTWRITEBYTECODE", "1");
    super::run(&mut cmd, COMMAND_TIMEOUT)
}
