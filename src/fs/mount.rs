//! Mounting: opens /dev/fuse and calls mount(2) with the type `fuse.logmirror`, so that
//! mount(8), /proc/self/mountinfo and the next `logmirror mount` can tell a logmirror mount
//! (alive or left dead by a crash) from any other FUSE mount.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Filesystem type shown in mountinfo.
pub const FS_TYPE: &str = "fuse.logmirror";

/// Mounts a new FUSE connection on `mountpoint` (as root) and returns the /dev/fuse
/// descriptor that serves it. `kernel_options` are `nosuid`, `nodev`, `noexec`, `ro` and
/// their opposites; setuid files and device nodes are off unless asked for.
pub fn mount_kernel(
    backing: &Path,
    mountpoint: &Path,
    kernel_options: &[String],
) -> io::Result<OwnedFd> {
    // SAFETY: the path is a NUL-terminated literal.
    let raw = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    let device = unsafe { OwnedFd::from_raw_fd(raw) };
    let root_mode = std::fs::metadata(mountpoint).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.mode() & libc::S_IFMT
    })?;
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    for option in kernel_options {
        match option.as_str() {
            "suid" => flags &= !libc::MS_NOSUID,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "ro" => flags |= libc::MS_RDONLY,
            _ => {}
        }
    }
    // NOTE: POSIX ACLs are stored but not enforced, because default_permissions checks modes only.
    let data = format!(
        "fd={},rootmode={root_mode:o},user_id=0,group_id=0,default_permissions,allow_other",
        device.as_raw_fd()
    );
    let invalid = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let source = CString::new(backing.as_os_str().as_bytes()).map_err(invalid)?;
    let target = CString::new(mountpoint.as_os_str().as_bytes()).map_err(invalid)?;
    let fstype = CString::new(FS_TYPE).map_err(invalid)?;
    let data = CString::new(data).map_err(invalid)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(device)
}
