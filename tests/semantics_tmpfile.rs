//! O_TMPFILE: ext4 creates an unnamed file that linkat can name later. Through the mount the
//! open fails with EOPNOTSUPP, because fuser 0.18 answers the kernel's FUSE_TMPFILE request
//! with ENOSYS before it reaches logmirror (docs/SEMANTICS.md). This test pins both sides, so
//! that a fuser upgrade that passes the request on shows up here.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use common::Mode;
use common::semantics::{errno_of, names_of, with_case};

both_modes!(o_tmpfile_open);

/// Opens an O_TMPFILE in `root`, writes to it and links it as `named.log`. Returns the
/// errno of the open, and the content under the new name when the open worked.
fn tmpfile_then_link(root: &Path) -> (i32, Option<Vec<u8>>) {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o640)
        .open(root);
    let errno = errno_of(&opened);
    let Ok(mut file) = opened else {
        return (errno, None);
    };
    file.write_all(b"written before it had a name\n")
        .expect("write the tmpfile");
    let source = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    let target = CString::new(root.join("named.log").as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            source.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    assert_eq!(ret, 0, "linkat: {}", std::io::Error::last_os_error());
    (errno, Some(fs::read(root.join("named.log")).expect("read")))
}

fn o_tmpfile_open(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(tmpfile_then_link);
        assert_eq!(
            plain,
            (0, Some(b"written before it had a name\n".to_vec())),
            "plain directory"
        );
        assert_eq!(mounted, (libc::EOPNOTSUPP, None), "mount");
        assert!(names_of(case.mnt()).is_empty());
    });
}
