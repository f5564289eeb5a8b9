//! Identity of the backing file that a write by reference names (tag-19 frames): its inode
//! number and, where the filesystem reports one, its inode generation.
//!
//! A path can name another file after a rename. So a reader that reads a referenced range
//! back by path after a restart first checks that it opened the file the write went to.
//! The number alone is not unique over time, because a filesystem gives a freed number to
//! a new file. The generation, which ext4, XFS and Btrfs set when they allocate an inode,
//! distinguishes such files.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Inode number and generation of a backing file. The device is not part of it: the reader
/// accepts only files on the backing root's filesystem, and device numbers can change
/// across a reboot (device-mapper numbers are assigned at activation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub ino: u64,
    /// Inode generation from `FS_IOC_GETVERSION`; `None` where the filesystem rejects that
    /// ioctl (tmpfs returns ENOTTY on Linux 6.18).
    pub generation: Option<u32>,
}

impl FileIdentity {
    /// Reads the identity of the open file `fd`, whose inode number `ino` the caller already
    /// has from fstat. `fd` must not be an `O_PATH` descriptor, which ioctl rejects.
    pub fn of(fd: BorrowedFd<'_>, ino: u64) -> FileIdentity {
        FileIdentity {
            ino,
            generation: generation(fd),
        }
    }
}

/// Returns the inode generation of `fd`, or `None` when the filesystem does not report one.
fn generation(fd: BorrowedFd<'_>) -> Option<u32> {
    // The request is declared with a `long` argument, but ext4, XFS and Btrfs store an
    // `int`, so the value is read from the first 4 bytes of a zeroed `long`.
    let mut value: libc::c_long = 0;
    // SAFETY: `fd` is open and `value` is writable memory of the size the request declares.
    let ret = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::FS_IOC_GETVERSION,
            &mut value as *mut libc::c_long,
        )
    };
    if ret == -1 {
        return None;
    }
    let bytes = value.to_ne_bytes();
    Some(u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    fn identity_of(file: &std::fs::File) -> FileIdentity {
        FileIdentity::of(file.as_fd(), file.metadata().unwrap().ino())
    }

    #[test]
    fn identity_follows_the_file_not_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let first = std::fs::File::create(&path).unwrap();
        let before = identity_of(&first);
        assert_eq!(identity_of(&std::fs::File::open(&path).unwrap()), before);

        std::fs::rename(&path, tmp.path().join("b.log")).unwrap();
        let second = std::fs::File::create(&path).unwrap();
        assert_ne!(identity_of(&second), before);
        let moved = std::fs::File::open(tmp.path().join("b.log")).unwrap();
        assert_eq!(identity_of(&moved), before);
    }
}
