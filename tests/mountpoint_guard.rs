//! The guard README recommends against writing into the bare mount point directory once the
//! mount is gone: `chattr +i` on the empty directory. A FUSE mount over the immutable directory
//! serves writes, and after unmount a write fails with EPERM instead of landing on the disk
//! below, where no mirror would see it.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{COMMAND_TIMEOUT, Mode, Mount, TestDirs, can_mount, list_dir, run, sha256_hex};

/// The immutable attribute on a directory. Dropping it clears the attribute, so that the
/// temporary directory can be removed.
struct Immutable {
    path: PathBuf,
}

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let out = run(Command::new("chattr").arg("+i").arg(path), COMMAND_TIMEOUT);
        out.assert_success("chattr +i");
        Immutable {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let out = run(
            Command::new("chattr").arg("-i").arg(&self.path),
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            eprintln!("chattr -i {:?} failed: {out}", self.path);
        }
    }
}

#[test]
fn immutable_mountpoint_rejects_writes_unmounted() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let _immutable = Immutable::set(&dirs.mnt);

    let mount = Mount::new(&dirs, Mode::Sync);
    let data = b"written through the mount\n";
    fs::write(dirs.mnt.join("file"), data).expect("write through the mount");
    assert_eq!(
        common::file_sha256(&dirs.backing.join("file")),
        sha256_hex(data)
    );
    mount.unmount();

    let error = fs::write(dirs.mnt.join("file"), b"lost\n").expect_err("write to the bare dir");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    assert_eq!(error.kind(), ErrorKind::PermissionDenied);
    let error = fs::create_dir(dirs.mnt.join("dir")).expect_err("mkdir in the bare dir");
    assert_eq!(error.raw_os_error(), Some(libc::EPERM), "{error}");
    assert_eq!(list_dir(&dirs.mnt), Vec::<String>::new());
}
