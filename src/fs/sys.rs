//! Thin, safe wrappers over the libc calls the filesystem makes on the backing directory.
//!
//! Every path argument here is a single name relative to a directory file descriptor, so the
//! daemon reaches the backing tree only through descriptors and never follows a symlink it
//! did not mean to.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Returns the `/proc/self/fd/N` path that reopens descriptor `fd`.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// Opens `name` under `dir` with `flags` (O_CLOEXEC is always added).
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    // SAFETY: `name` is a valid NUL-terminated string and `dir` a live descriptor.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reopens the file behind an O_PATH descriptor with new flags, through /proc/self/fd.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    // SAFETY: `path` is a valid NUL-terminated string.
    let new = check(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Returns `lstat` of `name` under `dir`, or of `dir` itself when `name` is empty.
pub fn fstatat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let cname = cstring(name)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: an all-zero `stat` is a valid value of a plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name and a writable stat buffer.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), cname.as_ptr(), &mut st, flags) })?;
    Ok(st)
}

/// Returns `fstat` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, OsStr::new(""))
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) })?;
    Ok(())
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = cstring(target)?;
    let name = cstring(name)?;
    // SAFETY: NUL-terminated strings and a valid descriptor.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })?;
    Ok(())
}

/// Makes `name` under `dir` a new hard link to the file behind the O_PATH descriptor `fd`.
pub fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let source = proc_path(fd);
    let name = cstring(name)?;
    // SAFETY: NUL-terminated strings and valid descriptors; AT_SYMLINK_FOLLOW resolves only
    // the /proc magic link to the file itself.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            source.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    let name = cstring(name)?;
    // SAFETY: valid descriptor and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    Ok(())
}

pub fn renameat2(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let from = cstring(from)?;
    let to = cstring(to)?;
    // SAFETY: valid descriptors and NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        )
    })?;
    Ok(())
}

/// Changes owner and group of the entry behind an O_PATH descriptor without following it;
/// `u32::MAX` leaves an id unchanged.
pub fn fchown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid descriptor and an empty NUL-terminated path with AT_EMPTY_PATH.
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(())
}

/// Sets the permission bits of the file behind an O_PATH descriptor (not for symlinks).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })?;
    Ok(())
}

/// Sets access and modification times of the entry behind an O_PATH descriptor.
pub fn utimens_fd(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH and a two-element array.
    check(unsafe {
        libc::utimensat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            times.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })?;
    Ok(())
}

pub fn readlink_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid descriptor, empty path and a buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
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

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Ok(done)
}

/// Writes all of `data` at `offset`; returns the bytes written, which is less than
/// `data.len()` only when a later part failed after an earlier part was written.
pub fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the pointer and length describe the unwritten part of `data`.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if done > 0 {
                return Ok(done);
            }
            return Err(err);
        }
        done += n as usize;
    }
    Ok(done)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: valid descriptor.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })?;
    Ok(())
}

pub fn fsync(fd: BorrowedFd<'_>, data_only: bool) -> io::Result<()> {
    // SAFETY: valid descriptor.
    let ret = unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    check(ret)?;
    Ok(())
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    // SAFETY: valid descriptor.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            length as libc::off_t,
        )
    })?;
    Ok(())
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid descriptor.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    // SAFETY: an all-zero statvfs is a valid value of a plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a writable buffer.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// Size-probing xattr read: with an empty `buf` returns the value's size.
pub fn getxattr(fd: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let path = proc_path(fd);
    let name = cstring(name)?;
    // SAFETY: NUL-terminated strings and a buffer of the given length (or null and 0).
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

pub fn listxattr(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let path = proc_path(fd);
    // SAFETY: NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

pub fn setxattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let path = proc_path(fd);
    let name = cstring(name)?;
    // SAFETY: NUL-terminated strings and a value buffer of the given length.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let path = proc_path(fd);
    let name = cstring(name)?;
    // SAFETY: NUL-terminated strings.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// Returns whether process `pid` has CAP_FSETID in its effective set, from the `CapEff`
/// line of `/proc/PID/status`. When that file cannot be read (the process already exited),
/// it falls back to `uid == 0`.
pub fn has_cap_fsetid(pid: u32, uid: u32) -> bool {
    // Bit number from linux/capability.h.
    const CAP_FSETID: u32 = 4;
    has_capability(pid, uid, CAP_FSETID)
}

/// Returns true when this process has CAP_SYS_ADMIN, which registering a backing file for
/// FUSE passthrough needs.
pub fn has_cap_sys_admin() -> bool {
    // Bit number from linux/capability.h.
    const CAP_SYS_ADMIN: u32 = 21;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    has_capability(std::process::id(), uid, CAP_SYS_ADMIN)
}

/// Returns true when capability `bit` is in the effective set of process `pid`; when that
/// cannot be read, whether `uid` is root.
fn has_capability(pid: u32, uid: u32, bit: u32) -> bool {
    // NOTE: CapEff is relative to the caller's user namespace, while the kernel checks the initial one.
    let status = match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => status,
        Err(_) => return uid == 0,
    };
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    match effective {
        Some(caps) => caps & (1 << bit) != 0,
        None => uid == 0,
    }
}

/// A directory stream over a descriptor, for readdir with seekable offsets.
pub struct DirStream {
    dir: *mut libc::DIR,
}

// SAFETY: the DIR pointer is used by one thread at a time (callers wrap it in a Mutex), and
// libc directory streams carry no thread-local state.
unsafe impl Send for DirStream {}

/// One directory entry as read from the backing directory.
pub struct DirEntry {
    pub ino: u64,
    /// Offset of the entry after this one, for `seekdir`.
    pub next_offset: i64,
    pub d_type: u8,
    pub name: Vec<u8>,
}

impl DirStream {
    /// Takes ownership of `fd`, an open directory.
    pub fn new(fd: OwnedFd) -> io::Result<DirStream> {
        let raw: RawFd = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: `raw` is an open directory descriptor whose ownership passes to the stream.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(raw) };
            return Err(err);
        }
        Ok(DirStream { dir })
    }

    /// Returns the descriptor of the directory being read.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `dir` is a live stream, so dirfd returns its open descriptor, which stays
        // open as long as the stream and so as long as the returned borrow.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.dir)) }
    }

    pub fn seek(&mut self, offset: i64) {
        // SAFETY: `dir` is a live stream; offsets come from earlier `telldir`/d_off values or 0.
        unsafe {
            if offset == 0 {
                libc::rewinddir(self.dir);
            } else {
                libc::seekdir(self.dir, offset);
            }
        }
    }

    pub fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        // SAFETY: setting errno is always allowed. readdir reads from a live stream, and the
        // returned entry stays valid until the next call on this stream, which `&mut self` holds.
        unsafe {
            *libc::__errno_location() = 0;
            let entry = libc::readdir64(self.dir);
            if entry.is_null() {
                let errno = *libc::__errno_location();
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                return Ok(None);
            }
            let entry = &*entry;
            let name = std::ffi::CStr::from_ptr(entry.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            Ok(Some(DirEntry {
                ino: entry.d_ino,
                next_offset: entry.d_off,
                d_type: entry.d_type,
                name,
            }))
        }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: `dir` is a live stream closed exactly once here.
        unsafe { libc::closedir(self.dir) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_fsetid_falls_back_to_uid() {
        // No process has pid 0, so /proc/0/status does not exist.
        assert!(has_cap_fsetid(0, 0));
        assert!(!has_cap_fsetid(0, 65534));
    }
}
