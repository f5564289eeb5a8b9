//! Confined file access for the directory mirror and for manifest scans: safe wrappers over
//! the `*at` system calls.
//!
//! Paths below a tree's root are resolved one component at a time with `O_NOFOLLOW`, so a
//! symbolic link planted inside a mirror or the backing directory never leads an access
//! outside that tree. Only the root itself is opened by path.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use libc::c_int;

use crate::journal::{RelPath, Timestamp};

/// Identity of an inode: `(st_dev, st_ino)`.
pub(crate) type FileId = (u64, u64);

/// Returns the identity of the inode described by `st`.
pub(crate) fn file_id(st: &libc::stat) -> FileId {
    (st.st_dev, st.st_ino)
}

/// Returns the file type bits (`S_IFMT`) of `st`.
pub(crate) fn file_type(st: &libc::stat) -> libc::mode_t {
    st.st_mode & libc::S_IFMT
}

/// Converts a name or path to a C string. An interior NUL byte gives `EINVAL`.
pub(crate) fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn owned(fd: c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by a successful open call, so it is a valid descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the root directory of a tree by path. This is the one lookup that follows symbolic
/// links, because the operator chose the path.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let path = c_name(path.as_os_str())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

/// Returns a reader of byte ranges of the regular files below the directory `root`, for the
/// journal's writes by reference whose data it no longer holds in memory. Paths are
/// resolved as everywhere here, so a symbolic link never leads the read outside `root`.
/// The reader rejects files on another filesystem than `root`, because inode numbers are
/// unique only within one, and returns the identity of the file it read.
pub fn backing_reader(root: &Path) -> io::Result<crate::journal::BackingReader> {
    let root = open_root(root)?;
    let root_dev = fstat(root.as_fd())?.st_dev;
    Ok(Box::new(move |rel, offset, buf| {
        let (dir, name) = walk_parent(root.as_fd(), rel)?;
        // O_NONBLOCK keeps a FIFO put at the path from blocking the open.
        let fd = open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        let st = fstat(fd.as_fd())?;
        if file_type(&st) != libc::S_IFREG {
            return Err(io::Error::other("the path names no regular file"));
        }
        if st.st_dev != root_dev {
            return Err(io::Error::other(
                "the file is on another filesystem than the backing root",
            ));
        }
        let identity = crate::journal::FileIdentity::of(fd.as_fd(), st.st_ino);
        let file = std::fs::File::from(fd);
        let mut done = 0;
        while done < buf.len() {
            let read =
                std::os::unix::fs::FileExt::read_at(&file, &mut buf[done..], offset + done as u64)?;
            if read == 0 {
                break;
            }
            done += read;
        }
        Ok((identity, done))
    }))
}

/// Opens `name` inside `dir`, never following a symbolic link in `name`.
pub(crate) fn open_at(
    dir: BorrowedFd,
    name: &CStr,
    flags: c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is an open descriptor and `name` a NUL-terminated string, both valid for
    // the duration of the call.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) };
    owned(fd)
}

/// Opens the directory `name` inside `dir`. A symbolic link there fails with `ENOTDIR`.
pub(crate) fn open_dir_at(dir: BorrowedFd, name: &CStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

/// Opens the directory `rel` below `root`, one component at a time.
pub(crate) fn walk_dir(root: BorrowedFd, rel: &RelPath) -> io::Result<OwnedFd> {
    let mut dir = root.try_clone_to_owned()?;
    for component in rel.components() {
        dir = open_dir_at(dir.as_fd(), &c_name(component)?)?;
    }
    Ok(dir)
}

/// Opens the directory holding `rel` and returns it with the final name. For the root
/// itself it returns the root and `.`, so calls that take a name act on the root.
pub(crate) fn walk_parent(root: BorrowedFd, rel: &RelPath) -> io::Result<(OwnedFd, CString)> {
    match rel.split_last() {
        Some((parent, name)) => Ok((walk_dir(root, &parent)?, c_name(name)?)),
        None => Ok((root.try_clone_to_owned()?, c".".to_owned())),
    }
}

/// Returns the status of `name` inside `dir` without following a symbolic link.
pub(crate) fn stat_at(dir: BorrowedFd, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` and `name` are valid for the call and `st` points to writable memory of
    // the size fstatat expects.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled every field of `st`.
    Ok(unsafe { st.assume_init() })
}

/// Like [`stat_at`], but a missing name is `Ok(None)`.
pub(crate) fn stat_at_if_exists(dir: BorrowedFd, name: &CStr) -> io::Result<Option<libc::stat>> {
    match stat_at(dir, name) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Returns the status of an open descriptor.
pub(crate) fn fstat(fd: BorrowedFd) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open and `st` points to writable memory of the size fstat expects.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled every field of `st`.
    Ok(unsafe { st.assume_init() })
}

/// Returns the mount id of an open descriptor, or `None` where the kernel does not report
/// one (before Linux 5.8).
pub(crate) fn mount_id(fd: BorrowedFd) -> Option<u64> {
    let mut stx = MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `fd` is open, the empty path is a NUL-terminated string, and `stx` points to
    // writable memory of the size statx expects.
    let ret = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            stx.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return None;
    }
    // SAFETY: statx succeeded, and the buffer was zeroed before, so every field is initialized.
    let stx = unsafe { stx.assume_init() };
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Returns the target of the symbolic link `name` inside `dir`, as raw bytes.
pub(crate) fn read_link_at(dir: BorrowedFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `dir` and `name` are valid for the call and `buf` is writable for
        // `buf.len()` bytes.
        let len = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let Ok(len) = usize::try_from(len) else {
            return Err(io::Error::last_os_error());
        };
        // A result that fills the buffer may have been cut short, so retry with more room.
        if len < buf.len() {
            buf.truncate(len);
            return Ok(buf);
        }
        if buf.len() >= 1 << 20 {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// Closes a directory stream on drop.
struct DirStream(*mut libc::DIR);

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful fdopendir and is closed only here.
        unsafe { libc::closedir(self.0) };
    }
}

/// Returns the names in directory `dir`, without `.` and `..`, in the order readdir returns.
pub(crate) fn list_names(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    // A fresh open file description keeps the stream's position apart from `dir`.
    let fd = open_dir_at(dir, c".")?;
    // SAFETY: `fd` is an open directory descriptor, and on success the stream owns it.
    let stream = unsafe { libc::fdopendir(fd.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    let _ = fd.into_raw_fd();
    let stream = DirStream(stream);

    let mut names = Vec::new();
    loop {
        // SAFETY: __errno_location returns this thread's errno, which readdir64 leaves
        // untouched at the end of the stream, so clearing it distinguishes the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream.0` is an open directory stream owned by `stream`.
        let entry = unsafe { libc::readdir64(stream.0) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(0) => Ok(names),
                _ => Err(err),
            };
        }
        // SAFETY: readdir64 returned a valid entry whose d_name is NUL-terminated, and it
        // stays valid until the next readdir64 call on this stream.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
}

/// Creates directory `name` inside `dir`.
pub(crate) fn mkdir_at(dir: BorrowedFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `dir` and `name` are valid for the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// Creates a FIFO, socket or device node `name` inside `dir`.
pub(crate) fn mknod_at(
    dir: BorrowedFd,
    name: &CStr,
    mode: libc::mode_t,
    rdev: libc::dev_t,
) -> io::Result<()> {
    // SAFETY: `dir` and `name` are valid for the call.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })
}

/// Creates symbolic link `name` inside `dir` holding `target`.
pub(crate) fn symlink_at(target: &[u8], dir: BorrowedFd, name: &CStr) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `target`, `dir` and `name` are valid for the call.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// Creates `new_name` in `new_dir` as a hard link to `old_name` in `old_dir`. A symbolic link
/// is linked itself, not followed.
pub(crate) fn link_at(
    old_dir: BorrowedFd,
    old_name: &CStr,
    new_dir: BorrowedFd,
    new_name: &CStr,
) -> io::Result<()> {
    // SAFETY: both directories and both names are valid for the call.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            0,
        )
    })
}

/// Removes `name` from `dir`, with `flags` 0 or `AT_REMOVEDIR`.
pub(crate) fn unlink_at(dir: BorrowedFd, name: &CStr, flags: c_int) -> io::Result<()> {
    // SAFETY: `dir` and `name` are valid for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

/// Renames with `renameat2(2)` flags.
pub(crate) fn rename_at(
    old_dir: BorrowedFd,
    old_name: &CStr,
    new_dir: BorrowedFd,
    new_name: &CStr,
    flags: u32,
) -> io::Result<()> {
    // SAFETY: both directories and both names are valid for the call.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old_name.as_ptr(),
            new_dir.as_raw_fd(),
            new_name.as_ptr(),
            flags,
        )
    })
}

/// Sets the permission bits of `name` inside `dir` without following a symbolic link. The C
/// library refuses symbolic links with `EOPNOTSUPP`, because their mode cannot change.
pub(crate) fn chmod_at(dir: BorrowedFd, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `dir` and `name` are valid for the call.
    check(unsafe {
        libc::fchmodat(
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Sets the permission bits of an open file or directory.
pub(crate) fn fchmod(fd: BorrowedFd, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `fd` is open for the call.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

/// Changes owner and group of `name` inside `dir` without following a symbolic link. `None`
/// keeps that id.
pub(crate) fn chown_at(
    dir: BorrowedFd,
    name: &CStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    // -1 (all bits set) makes fchownat keep the id.
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: `dir` and `name` are valid for the call.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

fn timespec(time: Option<Timestamp>) -> libc::timespec {
    match time {
        Some(t) => libc::timespec {
            tv_sec: t.secs as libc::time_t,
            tv_nsec: t.nanos as libc::c_long,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// Sets access and modification times of `name` inside `dir` without following a symbolic
/// link. `None` keeps that time.
pub(crate) fn utimens_at(
    dir: BorrowedFd,
    name: &CStr,
    atime: Option<Timestamp>,
    mtime: Option<Timestamp>,
) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `dir` and `name` are valid for the call and `times` contains the two entries
    // utimensat reads.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Calls `fallocate(2)` on an open file.
pub(crate) fn fallocate(fd: BorrowedFd, mode: c_int, offset: u64, length: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let length = i64::try_from(length).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `fd` is open for the call, and fallocate accesses no memory of this process.
    check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, offset, length) })
}

/// Maximum buffers in one `pwritev(2)` (`UIO_MAXIOV`); more fail with `EINVAL`.
pub(crate) const MAX_IOVECS: usize = libc::UIO_MAXIOV as usize;

/// Writes `slices` one after another from `offset` with one `pwritev(2)`. Returns the bytes
/// written, which can be fewer than the slices hold.
pub(crate) fn pwritev(fd: BorrowedFd, slices: &[io::IoSlice], offset: u64) -> io::Result<usize> {
    let count = c_int::try_from(slices.len())
        .ok()
        .filter(|&count| count as usize <= MAX_IOVECS)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: `fd` is open for the call. `IoSlice` has the layout of `iovec` on Unix (a
    // documented guarantee of std), and the `count` slices borrow buffers that outlive the call.
    let written = unsafe { libc::pwritev64(fd.as_raw_fd(), slices.as_ptr().cast(), count, offset) };
    usize::try_from(written).map_err(|_| io::Error::last_os_error())
}

/// Target of an extended attribute call: an open descriptor, or a `/proc/self/fd` path for
/// entries that are not opened for reading (symbolic links, FIFOs, sockets, devices).
pub(crate) enum XattrTarget {
    Fd(OwnedFd),
    /// The `/proc/self/fd` path of an `O_PATH` descriptor, which leads to exactly that inode
    /// even when it is a symbolic link. `_fd` keeps the path valid.
    Proc {
        _fd: OwnedFd,
        path: CString,
    },
}

/// Opens `name` inside `dir` for extended attribute calls, without following a symbolic link.
pub(crate) fn open_xattr_target(dir: BorrowedFd, name: &CStr) -> io::Result<XattrTarget> {
    let st = stat_at(dir, name)?;
    let kind = file_type(&st);
    if kind == libc::S_IFREG || kind == libc::S_IFDIR {
        // O_NONBLOCK keeps the open from waiting if the name was swapped for a FIFO.
        let fd = open_at(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
        return Ok(XattrTarget::Fd(fd));
    }
    let fd = open_at(dir, name, libc::O_PATH, 0)?;
    let path = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(XattrTarget::Proc { _fd: fd, path })
}

/// Sets extended attribute `name` to `value`. `flags` is 0, XATTR_CREATE or XATTR_REPLACE.
pub(crate) fn set_xattr(
    target: &XattrTarget,
    name: &CStr,
    value: &[u8],
    flags: c_int,
) -> io::Result<()> {
    let ret = match target {
        // SAFETY: the descriptor, `name` and `value` are valid for the call.
        XattrTarget::Fd(fd) => unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        },
        // SAFETY: the path, `name` and `value` are valid for the call, and the descriptor
        // the path names stays open while `target` lives.
        XattrTarget::Proc { path, .. } => unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        },
    };
    check(ret)
}

/// Removes extended attribute `name`.
pub(crate) fn remove_xattr(target: &XattrTarget, name: &CStr) -> io::Result<()> {
    let ret = match target {
        // SAFETY: the descriptor and `name` are valid for the call.
        XattrTarget::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) },
        // SAFETY: the path and `name` are valid for the call, and the descriptor the path
        // names stays open while `target` lives.
        XattrTarget::Proc { path, .. } => unsafe {
            libc::removexattr(path.as_ptr(), name.as_ptr())
        },
    };
    check(ret)
}

/// Prefix of the extended attributes that manifests list, verify compares and a resync
/// copies.
// NOTE: `security.`, `trusted.` and `system.` attributes (labels, capabilities, ACLs) are
// left out of manifests, so verify and resync do not see them differ.
pub(crate) const USER_XATTR_PREFIX: &[u8] = b"user.";

/// Fills a buffer by calling `read` with a larger one while it fails with ERANGE, which a
/// value or list that grew between the size probe and the read gives.
fn read_sized(mut read: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = read(&mut []);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let len = read(&mut buf);
        if len >= 0 {
            buf.truncate(len as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

/// Returns the names and the CRC32C of the values of the `user.` extended attributes of the
/// open file or directory `fd`, or `None` when its filesystem has no extended attributes.
pub(crate) fn user_xattrs(fd: BorrowedFd) -> io::Result<Option<BTreeMap<Vec<u8>, u32>>> {
    let raw = fd.as_raw_fd();
    // SAFETY: the descriptor is open and the buffer pointer and length describe `buf`.
    let list =
        read_sized(|buf| unsafe { libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len()) });
    let list = match list {
        Ok(list) => list,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut xattrs = BTreeMap::new();
    for name in list.split(|&b| b == 0) {
        if !name.starts_with(USER_XATTR_PREFIX) {
            continue;
        }
        let c_name = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let value = match fd_xattr(fd, &c_name) {
            Ok(value) => value,
            // Removed since the listing.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(e),
        };
        xattrs.insert(name.to_vec(), crc32c::crc32c(&value));
    }
    Ok(Some(xattrs))
}

/// Returns the value of extended attribute `name` of the open file or directory `fd`.
pub(crate) fn fd_xattr(fd: BorrowedFd, name: &CStr) -> io::Result<Vec<u8>> {
    let raw = fd.as_raw_fd();
    // SAFETY: the descriptor is open, `name` is NUL-terminated, and the buffer pointer and
    // length describe `buf`.
    read_sized(|buf| unsafe {
        libc::fgetxattr(raw, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })
}

/// Returns the effective user and group ids of this process.
pub(crate) fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}
