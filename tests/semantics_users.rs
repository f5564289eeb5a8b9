//! A process running as `nobody` on the mount, which the daemon (root) mounts with
//! `allow_other` and `default_permissions`: it writes in a world-writable directory, gets
//! EACCES and EPERM where a local disk refuses, and owns what it creates on the backing
//! directory and on the mirror.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use std::time::Duration;

use common::semantics::{NOBODY, lstat, python_as_nobody, set_xattr, with_case};
use common::{Mode, wait_until};

both_modes!(unprivileged_writer, acl_not_enforced, setid_bits_cleared);

/// Runs as nobody in the directory given as argv[1] and prints `name errno` per attempt,
/// errno 0 for success.
const AS_NOBODY: &str = r#"
import errno, os, sys
os.chdir(sys.argv[1])
os.umask(0o022)
def attempt(name, call):
    try:
        call()
        print(name, 0)
    except OSError as e:
        print(name, errno.errorcode[e.errno])
def create(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"hello from nobody\n")
    os.close(fd)
attempt("create_in_sticky", lambda: create("pub/nobody.log"))
attempt("mkdir_in_sticky", lambda: os.mkdir("pub/nobody.dir"))
attempt("write_root_file", lambda: os.open("pub/root.log", os.O_WRONLY))
attempt("append_root_file", lambda: os.open("pub/root.log", os.O_WRONLY | os.O_APPEND))
attempt("read_secret", lambda: os.open("secret.log", os.O_RDONLY))
attempt("read_shared", lambda: os.close(os.open("pub/root.log", os.O_RDONLY)))
attempt("unlink_root_file", lambda: os.unlink("pub/root.log"))
attempt("rename_root_file", lambda: os.rename("pub/root.log", "pub/taken.log"))
attempt("chmod_root_file", lambda: os.chmod("pub/root.log", 0o666))
attempt("chown_own_file", lambda: os.chown("pub/nobody.log", 0, 0))
attempt("truncate_root_file", lambda: os.truncate("pub/root.log", 0))
attempt("utime_now_root_file", lambda: os.utime("pub/root.log"))
attempt("utime_set_root_file", lambda: os.utime("pub/root.log", (1, 1)))
attempt("xattr_root_file", lambda: os.setxattr("pub/root.log", "user.tag", b"x"))
attempt("xattr_own_file", lambda: os.setxattr("pub/nobody.log", "user.tag", b"mine"))
attempt("create_in_closed", lambda: create("closed/x.log"))
attempt("list_closed", lambda: os.listdir("closed"))
attempt("list_private", lambda: os.listdir("private"))
attempt("create_in_setgid", lambda: create("sgid/nobody.log"))
attempt("mkdir_in_setgid", lambda: os.mkdir("sgid/sub"))
attempt("rename_own_file", lambda: os.rename("pub/nobody.log", "pub/renamed.log"))
attempt("symlink_in_sticky", lambda: os.symlink("renamed.log", "pub/link"))
attempt("hardlink_root_file", lambda: os.link("pub/root.log", "pub/stolen.log"))
"#;

const EXPECTED: &str = "create_in_sticky 0
mkdir_in_sticky 0
write_root_file EACCES
append_root_file EACCES
read_secret EACCES
read_shared 0
unlink_root_file EPERM
rename_root_file EPERM
chmod_root_file EPERM
chown_own_file EPERM
truncate_root_file EACCES
utime_now_root_file EACCES
utime_set_root_file EPERM
xattr_root_file EACCES
xattr_own_file 0
create_in_closed EACCES
list_closed 0
list_private EACCES
create_in_setgid 0
mkdir_in_setgid 0
rename_own_file 0
symlink_in_sticky 0
hardlink_root_file EPERM
";

/// Lays out the directories nobody works in, as root.
fn prepare(root: &Path) {
    let mode = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    for dir in ["pub", "closed", "private", "sgid"] {
        fs::create_dir(root.join(dir)).expect("mkdir");
    }
    mode(&root.join("pub"), 0o1777);
    mode(&root.join("closed"), 0o755);
    mode(&root.join("private"), 0o700);
    mode(&root.join("sgid"), 0o2777);
    std::os::unix::fs::lchown(root.join("sgid"), None, Some(1234)).expect("chgrp");
    fs::write(root.join("pub/root.log"), b"root\n").expect("create");
    mode(&root.join("pub/root.log"), 0o644);
    fs::write(root.join("secret.log"), b"secret\n").expect("create");
    mode(&root.join("secret.log"), 0o600);
}

/// Returns `(path, mode, uid, gid)` of what `nobody` created.
fn created(root: &Path) -> Vec<(&'static str, u32, u32, u32)> {
    [
        "pub/renamed.log",
        "pub/nobody.dir",
        "pub/link",
        "sgid/nobody.log",
        "sgid/sub",
    ]
    .into_iter()
    .map(|rel| {
        let meta = lstat(&root.join(rel));
        (rel, meta.mode(), meta.uid(), meta.gid())
    })
    .collect()
}

fn unprivileged_writer(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(|root| {
            prepare(root);
            let out = python_as_nobody(AS_NOBODY, &[common::path_str(root)]);
            out.assert_success("script as nobody");
            out.stdout
        });
        assert_eq!(plain, EXPECTED, "plain directory");
        assert_eq!(mounted, EXPECTED, "mount");

        let expected = vec![
            ("pub/renamed.log", 0o100644, NOBODY, NOBODY),
            ("pub/nobody.dir", 0o40755, NOBODY, NOBODY),
            ("pub/link", 0o120777, NOBODY, NOBODY),
            ("sgid/nobody.log", 0o100644, NOBODY, 1234),
            ("sgid/sub", 0o42755, NOBODY, 1234),
        ];
        assert_eq!(created(&case.plain), expected, "plain directory");
        assert_eq!(created(case.mnt()), expected, "mount");
        assert_eq!(created(case.backing()), expected, "backing directory");
        case.sync();
        assert_eq!(created(case.mirror()), expected, "mirror");
        assert_eq!(
            fs::read(case.in_mirror("pub/renamed.log")).expect("read mirror"),
            b"hello from nobody\n"
        );
    });
}

/// Returns a POSIX access ACL in the kernel's xattr format (version 2). It grants the owner
/// rw, user 65534 r, the group nothing, mask r and others nothing.
fn acl_granting_nobody_read() -> Vec<u8> {
    let mut acl = 2u32.to_le_bytes().to_vec();
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 6, u32::MAX),
        (0x02, 4, NOBODY),
        (0x04, 0, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ];
    for (tag, perm, id) in entries {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    acl
}

const READ_AS_NOBODY: &str = r#"
import errno, os, sys
try:
    os.close(os.open(sys.argv[1], os.O_RDONLY))
    print(0)
except OSError as e:
    print(errno.errorcode[e.errno])
"#;

/// An ACL that lets `nobody` read a 0600 file is stored through the mount, but the kernel
/// checks only the mode bits there, so `nobody` still gets EACCES.
fn acl_not_enforced(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(|root| {
            let path = root.join("acl.log");
            fs::write(&path, b"x\n").expect("create");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
            set_xattr(
                &path,
                b"system.posix_acl_access",
                &acl_granting_nobody_read(),
                0,
            )
            .expect("set the ACL");
            let out = python_as_nobody(READ_AS_NOBODY, &[common::path_str(&path)]);
            out.assert_success("read as nobody");
            out.stdout
        });
        assert_eq!(plain, "0\n", "plain directory");
        assert_eq!(mounted, "EACCES\n", "mount");

        // Setting the ACL changed the group bits to the mask on the backing file. The
        // kernel shows it through the mount once its cached attributes expire.
        let backing_mode = lstat(&case.in_backing("acl.log")).mode();
        assert_eq!(backing_mode, 0o100640);
        wait_until(
            Duration::from_secs(10),
            "the new mode through the mount",
            || match lstat(&case.in_mount("acl.log")).mode() {
                0o100640 => Ok(()),
                other => Err(format!("mode {other:o}")),
            },
        );
    });
}

/// Truncates (by path and by fd) and preallocates setuid and setgid files as nobody, and
/// prints each file's permission bits afterwards.
const CLEAR_AS_NOBODY: &str = r#"
import os, sys
os.chdir(sys.argv[1])
os.truncate("truncate_suid", 2)
os.truncate("truncate_both", 2)
fd = os.open("ftruncate_suid", os.O_WRONLY)
os.ftruncate(fd, 1)
os.close(fd)
fd = os.open("fallocate_suid", os.O_RDWR)
os.posix_fallocate(fd, 0, 8192)
os.close(fd)
for name in ("truncate_suid", "truncate_both", "ftruncate_suid", "fallocate_suid"):
    print(name, oct(os.stat(name).st_mode & 0o7777))
"#;

/// Returns the permission bits of each file after nobody truncated or preallocated it, then
/// after root ran `chown(path, -1, -1)` on setuid and setgid files.
fn clear_setid_bits(root: &Path) -> String {
    let chmod = |name: &str, mode: u32| {
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(mode)).expect("chmod");
    };
    fs::set_permissions(root, fs::Permissions::from_mode(0o777)).expect("chmod root");
    for (name, mode) in [
        ("truncate_suid", 0o4777),
        ("truncate_both", 0o6777),
        ("ftruncate_suid", 0o4777),
        ("fallocate_suid", 0o4777),
    ] {
        fs::write(root.join(name), b"data\n").expect("create");
        chmod(name, mode);
    }
    let out = python_as_nobody(CLEAR_AS_NOBODY, &[common::path_str(root)]);
    out.assert_success("truncate as nobody");
    let mut report = out.stdout;
    for (name, mode) in [
        ("chown_suid", 0o4755),
        ("chown_sgid", 0o2775),
        ("chown_both", 0o6755),
    ] {
        fs::write(root.join(name), b"data\n").expect("create");
        chmod(name, mode);
        std::os::unix::fs::chown(root.join(name), None, None).expect("chown -1 -1");
        let bits = lstat(&root.join(name)).mode() & 0o7777;
        report.push_str(&format!("{name} {bits:#o}\n"));
    }
    report
}

/// Truncation and preallocation by a process without CAP_FSETID, and any chown, clear the
/// setuid and setgid bits as on a local disk, and the mirror ends with the same bits.
fn setid_bits_cleared(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(clear_setid_bits);
        let expected = "truncate_suid 0o777
truncate_both 0o777
ftruncate_suid 0o777
fallocate_suid 0o777
chown_suid 0o755
chown_sgid 0o775
chown_both 0o755
";
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        case.sync();
        let on_mirror = lstat(&case.in_mirror("truncate_both")).mode() & 0o7777;
        assert_eq!(on_mirror, 0o777, "mirror");
    });
}
