//! Directory mirror: each op applied to a real directory, repeats of every op, confinement
//! against planted symbolic links, root changes, and resync against a backing tree.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::{get_xattr, set_xattr};
use logmirror::journal::{Op, RelPath, Timestamp};
use logmirror::mirror::manifest::{self, Difference, diff, resync, scan_tree};
use logmirror::mirror::{DirMirror, EntryKind, Error, Mirror};

fn rel(path: &str) -> RelPath {
    RelPath::from_bytes(path.as_bytes()).expect("valid test path")
}

/// A temporary directory holding a mirror root at `<tmp>/mirror`.
struct Setup {
    tmp: tempfile::TempDir,
    root: PathBuf,
    mirror: DirMirror,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("mirror");
    fs::create_dir(&root).expect("create mirror root");
    let mirror = DirMirror::open(&root).expect("open mirror");
    Setup { tmp, root, mirror }
}

fn apply(mirror: &mut DirMirror, op: Op) {
    let kind = op.kind();
    if let Err(e) = mirror.apply(&op) {
        panic!("{kind} failed: {e:#?}");
    }
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

fn errno_of(error: &Error) -> Option<i32> {
    match error {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn is_root_user() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn make_fifo(path: &Path, mode: u32) {
    let path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: path is NUL-terminated.
    let ret = unsafe { libc::mkfifo(path.as_ptr(), mode) };
    assert_eq!(ret, 0, "mkfifo: {}", io::Error::last_os_error());
}

#[test]
fn open_rejects_missing_and_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("absent");
    match DirMirror::open(&missing) {
        Err(Error::Unusable { dir, reason, .. }) => {
            assert_eq!(dir, missing);
            assert_eq!(
                reason,
                "it does not exist; create it or correct the mirror path"
            );
        }
        other => panic!(
            "expected Unusable, got {:?}",
            other.map(|m| m.name().to_owned())
        ),
    }
    let file = tmp.path().join("file");
    fs::write(&file, b"x").expect("write");
    match DirMirror::open(&file) {
        Err(Error::Unusable { reason, .. }) => {
            assert_eq!(
                reason,
                "it is not a directory; point the mirror at a directory"
            );
        }
        other => panic!(
            "expected Unusable, got {:?}",
            other.map(|m| m.name().to_owned())
        ),
    }
    let mirror = DirMirror::open(tmp.path()).expect("open");
    assert_eq!(mirror.name(), format!("dir:{}", tmp.path().display()));
}

#[test]
fn create_write_truncate() {
    let mut s = setup();
    let path = rel("app.log");
    apply(
        &mut s.mirror,
        Op::Create {
            path: path.clone(),
            mode: 0o640,
            uid: 0,
            gid: 0,
        },
    );
    let file = s.root.join("app.log");
    assert_eq!(fs::read(&file).expect("read"), b"");
    assert_eq!(mode_of(&file), 0o640);

    apply(
        &mut s.mirror,
        Op::Write {
            path: path.clone(),
            offset: 0,
            data: b"hello".to_vec(),
        },
    );
    apply(
        &mut s.mirror,
        Op::Write {
            path: path.clone(),
            offset: 3,
            data: b"XY".to_vec(),
        },
    );
    apply(
        &mut s.mirror,
        Op::Write {
            path: path.clone(),
            offset: 8,
            data: b"!".to_vec(),
        },
    );
    assert_eq!(fs::read(&file).expect("read"), b"helXY\0\0\0!");

    apply(
        &mut s.mirror,
        Op::Truncate {
            path: path.clone(),
            size: 4,
        },
    );
    assert_eq!(fs::read(&file).expect("read"), b"helX");
    s.mirror.flush().expect("flush");
}

#[test]
fn create_read_only_file_then_write() {
    let mut s = setup();
    let path = rel("ro.log");
    apply(
        &mut s.mirror,
        Op::Create {
            path: path.clone(),
            mode: 0o444,
            uid: 0,
            gid: 0,
        },
    );
    apply(
        &mut s.mirror,
        Op::Write {
            path,
            offset: 0,
            data: b"data".to_vec(),
        },
    );
    let file = s.root.join("ro.log");
    assert_eq!(fs::read(&file).expect("read"), b"data");
    assert_eq!(mode_of(&file), 0o444);
}

#[test]
fn create_repeat_empties_file() {
    let mut s = setup();
    let create = Op::Create {
        path: rel("f"),
        mode: 0o600,
        uid: 0,
        gid: 0,
    };
    apply(&mut s.mirror, create.clone());
    apply(
        &mut s.mirror,
        Op::Write {
            path: rel("f"),
            offset: 0,
            data: b"partial".to_vec(),
        },
    );
    apply(
        &mut s.mirror,
        Op::Create {
            path: rel("f"),
            mode: 0o4751,
            uid: 0,
            gid: 0,
        },
    );
    assert_eq!(fs::read(s.root.join("f")).expect("read"), b"");
    assert_eq!(mode_of(&s.root.join("f")), 0o4751);

    fs::create_dir(s.root.join("d")).expect("mkdir");
    let err = s
        .mirror
        .apply(&Op::Create {
            path: rel("d"),
            mode: 0o600,
            uid: 0,
            gid: 0,
        })
        .expect_err("create over a directory");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));
}

#[test]
fn mkdir_sets_mode_and_repeats() {
    let mut s = setup();
    let mkdir = |path: &str, mode| Op::Mkdir {
        path: rel(path),
        mode,
        uid: 0,
        gid: 0,
    };
    apply(&mut s.mirror, mkdir("a", 0o750));
    apply(&mut s.mirror, mkdir("a/b", 0o1777));
    assert!(s.root.join("a/b").is_dir());
    assert_eq!(mode_of(&s.root.join("a")), 0o750);
    assert_eq!(mode_of(&s.root.join("a/b")), 0o1777);

    apply(&mut s.mirror, mkdir("a", 0o700));
    assert_eq!(mode_of(&s.root.join("a")), 0o700);

    fs::write(s.root.join("file"), b"").expect("write");
    let err = s
        .mirror
        .apply(&mkdir("file", 0o755))
        .expect_err("mkdir over a file");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));

    let err = s
        .mirror
        .apply(&mkdir("none/x", 0o755))
        .expect_err("missing parent");
    assert_eq!(errno_of(&err), Some(libc::ENOENT));
    match err {
        Error::Io { action, path, .. } => {
            assert_eq!(action, "mkdir");
            assert_eq!(path, rel("none/x"));
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn mknod_fifo_socket_device() {
    let mut s = setup();
    let mknod = |path: &str, mode, rdev| Op::Mknod {
        path: rel(path),
        mode,
        rdev,
        uid: 0,
        gid: 0,
    };
    for _ in 0..2 {
        apply(&mut s.mirror, mknod("fifo", libc::S_IFIFO | 0o640, 0));
        apply(&mut s.mirror, mknod("sock", libc::S_IFSOCK | 0o600, 0));
    }
    let fifo = fs::symlink_metadata(s.root.join("fifo")).expect("lstat");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let sock = fs::symlink_metadata(s.root.join("sock")).expect("lstat");
    assert!(sock.file_type().is_socket());
    assert_eq!(sock.mode() & 0o7777, 0o600);

    let err = s
        .mirror
        .apply(&mknod("fifo", libc::S_IFSOCK | 0o600, 0))
        .expect_err("socket over a FIFO");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));

    let rdev = libc::makedev(1, 3);
    let result = s.mirror.apply(&mknod("null", libc::S_IFCHR | 0o666, rdev));
    if is_root_user() {
        result.expect("mknod of a device as root");
        let dev = fs::symlink_metadata(s.root.join("null")).expect("lstat");
        assert!(dev.file_type().is_char_device());
        assert_eq!(dev.rdev(), rdev);
        assert_eq!(dev.mode() & 0o7777, 0o666);
    } else {
        let err = result.expect_err("mknod of a device without root");
        let message = format!("{:#}", anyhow::Error::from(err));
        assert!(message.contains("CAP_MKNOD"), "{message}");
    }
}

#[test]
fn symlink_create_repeat_replace() {
    let mut s = setup();
    let op = |target: &[u8]| Op::Symlink {
        path: rel("link"),
        target: target.to_vec(),
        uid: 0,
        gid: 0,
    };
    apply(&mut s.mirror, op(b"target/one"));
    apply(&mut s.mirror, op(b"target/one"));
    let link = s.root.join("link");
    assert_eq!(
        fs::read_link(&link)
            .expect("readlink")
            .as_os_str()
            .as_bytes(),
        b"target/one"
    );
    apply(&mut s.mirror, op(b"/elsewhere/\xff"));
    assert_eq!(
        fs::read_link(&link)
            .expect("readlink")
            .as_os_str()
            .as_bytes(),
        b"/elsewhere/\xff"
    );
    // The replacement leaves no temporary name behind.
    let names: Vec<_> = fs::read_dir(&s.root)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![OsStr::new("link").to_owned()]);

    fs::write(s.root.join("plain"), b"x").expect("write");
    apply(
        &mut s.mirror,
        Op::Symlink {
            path: rel("plain"),
            target: b"t".to_vec(),
            uid: 0,
            gid: 0,
        },
    );
    assert_eq!(
        fs::read_link(s.root.join("plain"))
            .expect("readlink")
            .as_os_str()
            .as_bytes(),
        b"t"
    );
}

#[test]
fn link_repeat_and_conflict() {
    let mut s = setup();
    fs::write(s.root.join("a"), b"shared").expect("write");
    fs::write(s.root.join("other"), b"other").expect("write");
    let op = Op::Link {
        existing: rel("a"),
        path: rel("b"),
    };
    apply(&mut s.mirror, op.clone());
    apply(&mut s.mirror, op);
    let a = fs::metadata(s.root.join("a")).expect("stat");
    let b = fs::metadata(s.root.join("b")).expect("stat");
    assert_eq!(a.nlink(), 2);
    assert_eq!(a.ino(), b.ino());

    let err = s
        .mirror
        .apply(&Op::Link {
            existing: rel("a"),
            path: rel("other"),
        })
        .expect_err("link over another file");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));
    assert_eq!(fs::read(s.root.join("other")).expect("read"), b"other");
}

#[test]
fn unlink_rmdir_repeat() {
    let mut s = setup();
    fs::create_dir(s.root.join("d")).expect("mkdir");
    fs::write(s.root.join("d/f"), b"x").expect("write");
    for _ in 0..2 {
        apply(&mut s.mirror, Op::Unlink { path: rel("d/f") });
        apply(&mut s.mirror, Op::Rmdir { path: rel("d") });
    }
    assert!(!s.root.join("d").exists());
    // The directory holding the name is gone as well.
    apply(&mut s.mirror, Op::Unlink { path: rel("d/f") });

    fs::create_dir(s.root.join("full")).expect("mkdir");
    fs::write(s.root.join("full/f"), b"x").expect("write");
    let err = s
        .mirror
        .apply(&Op::Rmdir { path: rel("full") })
        .expect_err("rmdir of a non-empty directory");
    assert_eq!(errno_of(&err), Some(libc::ENOTEMPTY));
    let err = s
        .mirror
        .apply(&Op::Unlink { path: rel("full") })
        .expect_err("unlink of a directory");
    assert_eq!(errno_of(&err), Some(libc::EISDIR));
}

#[test]
fn rename_plain_noreplace_exchange() {
    let mut s = setup();
    fs::write(s.root.join("a"), b"A").expect("write");
    fs::write(s.root.join("b"), b"B").expect("write");
    fs::create_dir(s.root.join("d")).expect("mkdir");

    let err = s
        .mirror
        .apply(&Op::Rename {
            from: rel("a"),
            to: rel("b"),
            flags: libc::RENAME_NOREPLACE,
        })
        .expect_err("NOREPLACE onto an existing name");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));
    match &err {
        Error::Io { action, path, .. } => {
            assert_eq!(*action, "rename");
            assert_eq!(*path, rel("a"));
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(s.root.join("a")).expect("read"), b"A");
    assert_eq!(fs::read(s.root.join("b")).expect("read"), b"B");

    apply(
        &mut s.mirror,
        Op::Rename {
            from: rel("a"),
            to: rel("b"),
            flags: libc::RENAME_EXCHANGE,
        },
    );
    assert_eq!(fs::read(s.root.join("a")).expect("read"), b"B");
    assert_eq!(fs::read(s.root.join("b")).expect("read"), b"A");

    let noreplace = Op::Rename {
        from: rel("a"),
        to: rel("d/c"),
        flags: libc::RENAME_NOREPLACE,
    };
    apply(&mut s.mirror, noreplace.clone());
    apply(&mut s.mirror, noreplace);
    let plain = Op::Rename {
        from: rel("b"),
        to: rel("d/c"),
        flags: 0,
    };
    apply(&mut s.mirror, plain.clone());
    apply(&mut s.mirror, plain);
    assert!(!s.root.join("a").exists());
    assert!(!s.root.join("b").exists());
    assert_eq!(fs::read(s.root.join("d/c")).expect("read"), b"A");

    let err = s
        .mirror
        .apply(&Op::Rename {
            from: rel("missing"),
            to: rel("also-missing"),
            flags: 0,
        })
        .expect_err("rename of a missing name");
    assert_eq!(errno_of(&err), Some(libc::ENOENT));
}

#[test]
fn set_mode_owner_times() {
    let mut s = setup();
    fs::write(s.root.join("f"), b"x").expect("write");
    symlink("f", s.root.join("l")).expect("symlink");
    let link_mode = mode_of(&s.root.join("l"));

    apply(
        &mut s.mirror,
        Op::SetMode {
            path: rel("f"),
            mode: 0o6755,
        },
    );
    assert_eq!(mode_of(&s.root.join("f")), 0o6755);
    // A symlink keeps its mode, and the file it points to is not touched.
    apply(
        &mut s.mirror,
        Op::SetMode {
            path: rel("l"),
            mode: 0o600,
        },
    );
    assert_eq!(mode_of(&s.root.join("l")), link_mode);
    assert_eq!(mode_of(&s.root.join("f")), 0o6755);
    apply(
        &mut s.mirror,
        Op::SetMode {
            path: RelPath::root(),
            mode: 0o751,
        },
    );
    assert_eq!(mode_of(&s.root), 0o751);

    let before = fs::metadata(s.root.join("f")).expect("stat");
    apply(
        &mut s.mirror,
        Op::SetOwner {
            path: rel("f"),
            uid: Some(1234),
            gid: None,
        },
    );
    let after = fs::metadata(s.root.join("f")).expect("stat");
    if is_root_user() {
        assert_eq!(after.uid(), 1234);
    } else {
        assert_eq!(after.uid(), before.uid());
    }
    assert_eq!(after.gid(), before.gid());

    let atime = Timestamp {
        secs: 1_000_000_000,
        nanos: 123_456_789,
    };
    let mtime = Timestamp {
        secs: 1_500_000_000,
        nanos: 5,
    };
    apply(
        &mut s.mirror,
        Op::SetTimes {
            path: rel("f"),
            atime: Some(atime),
            mtime: Some(mtime),
        },
    );
    let meta = fs::metadata(s.root.join("f")).expect("stat");
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_500_000_000, 5));
    apply(
        &mut s.mirror,
        Op::SetTimes {
            path: rel("f"),
            atime: None,
            mtime: Some(Timestamp { secs: 7, nanos: 0 }),
        },
    );
    let meta = fs::metadata(s.root.join("f")).expect("stat");
    assert_eq!(
        (meta.atime(), meta.atime_nsec()),
        (1_000_000_000, 123_456_789)
    );
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (7, 0));

    // Times of a symlink are its own.
    apply(
        &mut s.mirror,
        Op::SetTimes {
            path: rel("l"),
            atime: None,
            mtime: Some(Timestamp { secs: 99, nanos: 0 }),
        },
    );
    let link = fs::symlink_metadata(s.root.join("l")).expect("lstat");
    assert_eq!(link.mtime(), 99);
    assert_eq!(fs::metadata(s.root.join("f")).expect("stat").mtime(), 7);
    s.mirror.flush().expect("flush");
}

#[test]
fn fallocate_modes() {
    let mut s = setup();
    fs::write(s.root.join("f"), b"abcdefgh").expect("write");
    let op = |mode, offset, length| Op::Fallocate {
        path: rel("f"),
        mode,
        offset,
        length,
    };
    for _ in 0..2 {
        apply(&mut s.mirror, op(0, 4, 12));
    }
    assert_eq!(
        fs::read(s.root.join("f")).expect("read"),
        b"abcdefgh\0\0\0\0\0\0\0\0"
    );
    apply(&mut s.mirror, op(libc::FALLOC_FL_KEEP_SIZE, 0, 4096));
    assert_eq!(fs::metadata(s.root.join("f")).expect("stat").len(), 16);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    for _ in 0..2 {
        apply(&mut s.mirror, op(punch, 1, 2));
    }
    assert_eq!(
        fs::read(s.root.join("f")).expect("read"),
        b"a\0\0defgh\0\0\0\0\0\0\0\0"
    );
}

#[test]
fn xattr_set_remove_repeat() {
    let mut s = setup();
    let file = s.root.join("f");
    fs::write(&file, b"x").expect("write");
    if let Err(e) = set_xattr(&file, "user.probe", b"1") {
        eprintln!("skipping: the temporary file system rejects user xattrs: {e}");
        return;
    }
    let set = |value: &[u8], flags| Op::SetXattr {
        path: rel("f"),
        name: b"user.note".to_vec(),
        value: value.to_vec(),
        flags,
    };
    apply(&mut s.mirror, set(b"first", libc::XATTR_CREATE));
    apply(&mut s.mirror, set(b"first", libc::XATTR_CREATE));
    assert_eq!(get_xattr(&file, "user.note").expect("getxattr"), b"first");
    apply(&mut s.mirror, set(b"second\0bin", libc::XATTR_REPLACE));
    assert_eq!(
        get_xattr(&file, "user.note").expect("getxattr"),
        b"second\0bin"
    );

    let remove = Op::RemoveXattr {
        path: rel("f"),
        name: b"user.note".to_vec(),
    };
    apply(&mut s.mirror, remove.clone());
    apply(&mut s.mirror, remove);
    let err = get_xattr(&file, "user.note").expect_err("removed");
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA));

    fs::create_dir(s.root.join("d")).expect("mkdir");
    apply(
        &mut s.mirror,
        Op::SetXattr {
            path: rel("d"),
            name: b"user.dir".to_vec(),
            value: b"v".to_vec(),
            flags: 0,
        },
    );
    assert_eq!(
        get_xattr(&s.root.join("d"), "user.dir").expect("getxattr"),
        b"v"
    );

    if is_root_user() {
        // trusted.* works on symlinks, through the /proc/self/fd path of an O_PATH descriptor.
        symlink("f", s.root.join("l")).expect("symlink");
        apply(
            &mut s.mirror,
            Op::SetXattr {
                path: rel("l"),
                name: b"trusted.link".to_vec(),
                value: b"on-link".to_vec(),
                flags: 0,
            },
        );
        assert_eq!(
            get_xattr(&s.root.join("l"), "trusted.link").expect("getxattr"),
            b"on-link"
        );
        let on_target = get_xattr(&file, "trusted.link").expect_err("target untouched");
        assert_eq!(on_target.raw_os_error(), Some(libc::ENODATA));
    }
    s.mirror.flush().expect("flush");
}

/// Ops covering every kind, valid when applied in order to an empty mirror.
fn script() -> Vec<Op> {
    vec![
        Op::Mkdir {
            path: rel("logs"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Op::Create {
            path: rel("logs/app.log"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: rel("logs/app.log"),
            offset: 0,
            data: b"line one\nline two\n".to_vec(),
        },
        Op::Write {
            path: rel("logs/app.log"),
            offset: 18,
            data: b"line three\n".to_vec(),
        },
        Op::Truncate {
            path: rel("logs/app.log"),
            size: 25,
        },
        Op::Fallocate {
            path: rel("logs/app.log"),
            mode: 0,
            offset: 0,
            length: 40,
        },
        Op::SetMode {
            path: rel("logs/app.log"),
            mode: 0o600,
        },
        Op::SetTimes {
            path: rel("logs/app.log"),
            atime: None,
            mtime: Some(Timestamp {
                secs: 1_700_000_000,
                nanos: 1,
            }),
        },
        Op::SetOwner {
            path: rel("logs/app.log"),
            uid: Some(4321),
            gid: Some(4321),
        },
        Op::SetXattr {
            path: rel("logs/app.log"),
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            flags: libc::XATTR_CREATE,
        },
        Op::RemoveXattr {
            path: rel("logs/app.log"),
            name: b"user.k".to_vec(),
        },
        Op::Link {
            existing: rel("logs/app.log"),
            path: rel("logs/app.hard"),
        },
        Op::Symlink {
            path: rel("logs/current"),
            target: b"app.log".to_vec(),
            uid: 0,
            gid: 0,
        },
        Op::Mknod {
            path: rel("logs/pipe"),
            mode: libc::S_IFIFO | 0o620,
            rdev: 0,
            uid: 0,
            gid: 0,
        },
        Op::Rename {
            from: rel("logs/app.log"),
            to: rel("logs/app.log.1"),
            flags: 0,
        },
        Op::Create {
            path: rel("logs/app.log"),
            mode: 0o640,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: rel("logs/app.log"),
            offset: 0,
            data: b"fresh\n".to_vec(),
        },
        Op::Rename {
            from: rel("logs/app.log.1"),
            to: rel("logs/old.log"),
            flags: libc::RENAME_NOREPLACE,
        },
        Op::Mkdir {
            path: rel("tmp"),
            mode: 0o700,
            uid: 0,
            gid: 0,
        },
        Op::Create {
            path: rel("tmp/scratch"),
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
        Op::Unlink {
            path: rel("tmp/scratch"),
        },
        Op::Rmdir { path: rel("tmp") },
        Op::Fallocate {
            path: rel("logs/old.log"),
            mode: libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset: 5,
            length: 3,
        },
    ]
}

#[test]
fn every_op_repeated_gives_same_tree() {
    let mut once = setup();
    let mut twice = setup();
    for op in script() {
        apply(&mut once.mirror, op.clone());
        apply(&mut twice.mirror, op.clone());
        apply(&mut twice.mirror, op);
    }
    once.mirror.flush().expect("flush");
    twice.mirror.flush().expect("flush");

    let once_tree = scan_tree(&once.root, &[]).expect("scan");
    let twice_tree = scan_tree(&twice.root, &[]).expect("scan");
    assert_eq!(diff(&once_tree, &twice_tree), Vec::<Difference>::new());

    let paths: Vec<String> = twice_tree.entries.keys().map(|p| p.to_string()).collect();
    assert_eq!(
        paths,
        [
            "logs",
            "logs/app.hard",
            "logs/app.log",
            "logs/current",
            "logs/old.log",
            "logs/pipe"
        ]
    );
    // 25 bytes kept by the truncate, zeros up to 40 from fallocate, a hole at 5..8.
    let old = fs::read(twice.root.join("logs/old.log")).expect("read");
    let mut expected = b"line \0\0\0\nline two\nline th".to_vec();
    expected.resize(40, 0);
    assert_eq!(old, expected);
    assert_eq!(
        fs::read(twice.root.join("logs/app.log")).expect("read"),
        b"fresh\n"
    );
    let old_meta = fs::metadata(twice.root.join("logs/old.log")).expect("stat");
    assert_eq!(old_meta.nlink(), 2);
    assert_eq!(old_meta.mode() & 0o7777, 0o600);
    if is_root_user() {
        assert_eq!(old_meta.uid(), 4321);
    }
    assert_eq!(mode_of(&twice.root.join("logs/pipe")), 0o620);
}

/// Lists names, bytes and modes under `dir`, to show that nothing outside a mirror changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let content = if meta.is_file() {
            fs::read(&path).expect("read")
        } else {
            Vec::new()
        };
        out.push((path, meta.mode(), content));
    }
    out
}

#[test]
fn planted_symlink_never_leads_outside() {
    let mut s = setup();
    let outside = s.tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("victim"), b"keep me").expect("write");
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o644)).expect("chmod");
    symlink(&outside, s.root.join("sub")).expect("symlink");
    symlink(outside.join("victim"), s.root.join("victim-link")).expect("symlink");
    let before = snapshot(&outside);

    let through_dir = [
        Op::Create {
            path: rel("sub/new"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: rel("sub/victim"),
            offset: 0,
            data: b"owned".to_vec(),
        },
        Op::Truncate {
            path: rel("sub/victim"),
            size: 0,
        },
        Op::Mkdir {
            path: rel("sub/d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Op::Symlink {
            path: rel("sub/l"),
            target: b"x".to_vec(),
            uid: 0,
            gid: 0,
        },
        Op::Mknod {
            path: rel("sub/p"),
            mode: libc::S_IFIFO | 0o644,
            rdev: 0,
            uid: 0,
            gid: 0,
        },
        Op::Unlink {
            path: rel("sub/victim"),
        },
        Op::Rename {
            from: rel("sub/victim"),
            to: rel("stolen"),
            flags: 0,
        },
        Op::Link {
            existing: rel("sub/victim"),
            path: rel("hard"),
        },
        Op::SetMode {
            path: rel("sub/victim"),
            mode: 0o777,
        },
        Op::SetTimes {
            path: rel("sub/victim"),
            atime: None,
            mtime: Some(Timestamp { secs: 1, nanos: 0 }),
        },
        Op::SetXattr {
            path: rel("sub/victim"),
            name: b"user.x".to_vec(),
            value: b"y".to_vec(),
            flags: 0,
        },
        Op::Fallocate {
            path: rel("sub/victim"),
            mode: 0,
            offset: 0,
            length: 4096,
        },
    ];
    // Opening a symlink with O_NOFOLLOW | O_DIRECTORY fails with ENOTDIR.
    for op in &through_dir {
        let err = s.mirror.apply(op).expect_err(op.kind());
        assert_eq!(
            errno_of(&err),
            Some(libc::ENOTDIR),
            "{}: {err:?}",
            op.kind()
        );
    }

    // A symlink as the final name is acted on itself or rejected, never followed.
    let at_link = [
        Op::Write {
            path: rel("victim-link"),
            offset: 0,
            data: b"owned".to_vec(),
        },
        Op::Truncate {
            path: rel("victim-link"),
            size: 0,
        },
        Op::Fallocate {
            path: rel("victim-link"),
            mode: 0,
            offset: 0,
            length: 4096,
        },
    ];
    for op in &at_link {
        let err = s.mirror.apply(op).expect_err(op.kind());
        assert_eq!(errno_of(&err), Some(libc::ELOOP), "{}: {err:?}", op.kind());
    }
    let err = s
        .mirror
        .apply(&Op::Create {
            path: rel("victim-link"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        })
        .expect_err("create over a symlink");
    assert_eq!(errno_of(&err), Some(libc::EEXIST));
    apply(
        &mut s.mirror,
        Op::SetMode {
            path: rel("victim-link"),
            mode: 0o777,
        },
    );
    apply(
        &mut s.mirror,
        Op::SetTimes {
            path: rel("victim-link"),
            atime: None,
            mtime: Some(Timestamp { secs: 1, nanos: 0 }),
        },
    );
    apply(
        &mut s.mirror,
        Op::SetOwner {
            path: rel("victim-link"),
            uid: Some(4321),
            gid: None,
        },
    );

    assert_eq!(snapshot(&outside), before);
    let victim = fs::metadata(outside.join("victim")).expect("stat");
    assert_ne!(victim.mtime(), 1);
    assert_ne!(victim.uid(), 4321);
    assert!(!s.tmp.path().join("stolen").exists());
}

#[test]
fn root_replaced_between_flushes() {
    let mut s = setup();
    let old_root = s.tmp.path().join("mirror-old");
    apply(
        &mut s.mirror,
        Op::Create {
            path: rel("f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    );
    fs::rename(&s.root, &old_root).expect("move root away");
    fs::create_dir(&s.root).expect("new root");

    // Until a flush, ops still reach the directory the mirror opened.
    apply(
        &mut s.mirror,
        Op::Write {
            path: rel("f"),
            offset: 0,
            data: b"old".to_vec(),
        },
    );
    apply(
        &mut s.mirror,
        Op::Mkdir {
            path: rel("before-flush"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    );
    s.mirror.flush().expect("flush");

    apply(
        &mut s.mirror,
        Op::Create {
            path: rel("f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    );
    apply(
        &mut s.mirror,
        Op::Write {
            path: rel("f"),
            offset: 0,
            data: b"new".to_vec(),
        },
    );
    s.mirror.flush().expect("flush");

    assert_eq!(fs::read(old_root.join("f")).expect("read"), b"old");
    assert!(old_root.join("before-flush").is_dir());
    assert_eq!(fs::read(s.root.join("f")).expect("read"), b"new");
    assert!(!s.root.join("before-flush").exists());
    let manifest = s.mirror.manifest().expect("manifest");
    let paths: Vec<String> = manifest.entries.keys().map(|p| p.to_string()).collect();
    assert_eq!(paths, ["f"]);
}

/// Unmounts a bind mount on drop, also when the test fails.
struct BindMount(CString);

impl Drop for BindMount {
    fn drop(&mut self) {
        // SAFETY: the path is NUL-terminated; unmounting a path we mounted ourselves.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

fn bind_read_only(path: &Path) -> io::Result<BindMount> {
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: the paths are NUL-terminated; the other pointers may be null for a bind mount.
    let ret = unsafe {
        libc::mount(
            c_path.as_ptr(),
            c_path.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let guard = BindMount(c_path);
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    // SAFETY: as above; this makes the bind mount read-only.
    let ret = unsafe {
        libc::mount(
            std::ptr::null(),
            guard.0.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(guard)
}

#[test]
fn read_only_bind_mount_until_removed() {
    let mut s = setup();
    apply(
        &mut s.mirror,
        Op::Create {
            path: rel("f"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    );
    let write = |offset| Op::Write {
        path: rel("f"),
        offset,
        data: b"abc".to_vec(),
    };
    apply(&mut s.mirror, write(0));
    s.mirror.flush().expect("flush");

    let guard = match bind_read_only(&s.root) {
        Ok(guard) => guard,
        Err(e) if !is_root_user() => {
            eprintln!("skipping: bind mounts need root here: {e}");
            return;
        }
        Err(e) => panic!("bind mount as root failed: {e}"),
    };
    // The same directory bound over itself keeps its inode; only the mount differs.
    for offset in [3, 3] {
        let err = s
            .mirror
            .apply(&write(offset))
            .expect_err("write to read-only mount");
        assert_eq!(errno_of(&err), Some(libc::EROFS));
    }
    let err = s
        .mirror
        .apply(&Op::Mkdir {
            path: rel("d"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .expect_err("mkdir on read-only mount");
    assert_eq!(errno_of(&err), Some(libc::EROFS));

    drop(guard);
    apply(&mut s.mirror, write(3));
    s.mirror.flush().expect("flush");
    assert_eq!(fs::read(s.root.join("f")).expect("read"), b"abcabc");
}

#[test]
fn unmounted_mirror_disk_fails_ops() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("mirror");
    fs::create_dir(&root).expect("create mirror root");
    // A bind mount stands in for a mirror disk mounted at the mirror path.
    let guard = match bind_read_only(&root) {
        Ok(guard) => guard,
        Err(e) if !is_root_user() => {
            eprintln!("skipping: bind mounts need root here: {e}");
            return;
        }
        Err(e) => panic!("bind mount as root failed: {e}"),
    };
    let mut mirror = DirMirror::open(&root).expect("open mirror");
    drop(guard);

    let mkdir = Op::Mkdir {
        path: rel("d"),
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    // The first op may still reach the detached mount; every op after it looks at the
    // path again and finds the directory beneath the mount.
    let _ = mirror.apply(&mkdir);
    for _ in 0..2 {
        let err = mirror
            .apply(&mkdir)
            .expect_err("mkdir on an unmounted mirror disk");
        let text = format!("{err:#?}");
        assert!(text.contains("no longer a mount point"), "error: {text}");
    }
    assert!(!root.join("d").exists());
}

/// Builds a backing tree with every entry kind and awkward names.
fn build_backing(root: &Path) -> u64 {
    fs::create_dir_all(root.join("logs/nested/deeper")).expect("mkdir");
    fs::create_dir(root.join("empty dir")).expect("mkdir");
    fs::create_dir(root.join(".logmirror")).expect("mkdir");
    fs::write(root.join(".logmirror/state"), b"skipped").expect("write");

    let big: Vec<u8> = (0..(2 * 1024 * 1024 + 12_345u32))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(root.join("logs/big.log"), &big).expect("write");
    fs::write(root.join("logs/app.log"), b"hello\n").expect("write");
    fs::write(root.join("logs/empty"), b"").expect("write");
    fs::write(root.join("logs/nested/deeper/x"), b"deep").expect("write");
    fs::hard_link(root.join("logs/app.log"), root.join("logs/nested/app-link")).expect("link");
    fs::hard_link(root.join("logs/app.log"), root.join("hard-at-root")).expect("link");
    symlink("../app.log", root.join("logs/nested/to-app")).expect("symlink");
    symlink("/nowhere/\u{1F600}", root.join("dangling")).expect("symlink");
    make_fifo(&root.join("logs/pipe"), 0o640);

    let odd: [&[u8]; 4] = [
        b"with space",
        b"new\nline",
        b"latin1-\xe9\xff",
        b"tab\there",
    ];
    for name in odd {
        fs::write(root.join(OsStr::from_bytes(name)), name).expect("write");
    }
    let long_name = vec![b'n'; 255];
    fs::write(root.join(OsStr::from_bytes(&long_name)), b"long").expect("write");
    fs::create_dir(root.join("logs/nested/ß dir")).expect("mkdir");

    let setuid = root.join("logs/setuid");
    fs::write(&setuid, b"#!/bin/sh\n").expect("write");
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).expect("chmod");
    fs::write(root.join("logs/nested/deeper/ro"), b"read only").expect("write");
    fs::set_permissions(
        root.join("logs/nested/deeper"),
        fs::Permissions::from_mode(0o555),
    )
    .expect("chmod");

    let odd_bytes: u64 = odd.iter().map(|n| n.len() as u64).sum();
    big.len() as u64 + 6 + 4 + odd_bytes + 4 + 10 + 9
}

#[test]
fn resync_empty_mirror() {
    let mut s = setup();
    let backing = s.tmp.path().join("backing");
    let content_bytes = build_backing(&backing);
    let skip = [OsStr::new(".logmirror")];

    let stats = resync(&mut s.mirror, &backing, &skip).expect("resync");
    let backing_tree = scan_tree(&backing, &skip).expect("scan backing");
    let mirror_tree = s.mirror.manifest().expect("manifest");
    assert_eq!(diff(&backing_tree, &mirror_tree), Vec::<Difference>::new());
    // 5 directories, 13 regular file names, 2 symlinks and a FIFO.
    assert_eq!(backing_tree.entries.len(), 21);
    assert_eq!(stats.entries_checked, 21);
    assert_eq!(stats.differences, 21);
    assert_eq!(stats.removed, 0);
    // Two of the 13 names are hard links to a third, which are linked, not copied.
    assert_eq!(stats.files_copied, 11);
    assert_eq!(stats.bytes_copied, content_bytes);

    assert!(!s.root.join(".logmirror").exists());
    let app = fs::metadata(s.root.join("logs/app.log")).expect("stat");
    assert_eq!(app.nlink(), 3);
    assert_eq!(
        fs::metadata(s.root.join("hard-at-root"))
            .expect("stat")
            .ino(),
        app.ino()
    );
    assert_eq!(mode_of(&s.root.join("logs/setuid")), 0o4755);
    assert_eq!(mode_of(&s.root.join("logs/nested/deeper")), 0o555);
    assert_eq!(
        fs::read(s.root.join(OsStr::from_bytes(b"new\nline"))).expect("read"),
        b"new\nline"
    );
    assert_eq!(
        fs::read(s.root.join(OsStr::from_bytes(&[b'n'; 255]))).expect("read"),
        b"long"
    );
    assert_eq!(
        fs::read(s.root.join("logs/big.log")).expect("read"),
        fs::read(backing.join("logs/big.log")).expect("read")
    );
    assert!(
        fs::symlink_metadata(s.root.join("logs/pipe"))
            .expect("lstat")
            .file_type()
            .is_fifo()
    );
    let entry = &mirror_tree.entries[&rel("dangling")];
    assert_eq!(entry.kind, EntryKind::Symlink);
    assert_eq!(
        entry.target.as_deref(),
        Some("/nowhere/\u{1F600}".as_bytes())
    );

    // A second resync finds nothing to do.
    let again = resync(&mut s.mirror, &backing, &skip).expect("resync");
    assert_eq!(again.differences, 0);
    assert_eq!(again.files_copied, 0);
    assert_eq!(again.bytes_copied, 0);
    assert_eq!(again.removed, 0);
    make_removable(&[&backing, &s.root]);
}

/// Gives the read-only directory of `build_backing` write access again, so that the
/// temporary directory can be removed without root.
fn make_removable(roots: &[&Path]) {
    for root in roots {
        let dir = root.join("logs/nested/deeper");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn resync_repairs_changed_mirror() {
    let mut s = setup();
    let backing = s.tmp.path().join("backing");
    build_backing(&backing);
    let skip = [OsStr::new(".logmirror")];
    resync(&mut s.mirror, &backing, &skip).expect("resync");

    // Damage the mirror by hand.
    let big = s.root.join("logs/big.log");
    let mut bytes = fs::read(&big).expect("read");
    bytes[1_500_000] ^= 0x40;
    fs::write(&big, &bytes).expect("write");
    fs::create_dir_all(s.root.join("extra/inner")).expect("mkdir");
    fs::write(s.root.join("extra/inner/f"), b"x").expect("write");
    fs::write(s.root.join("logs/extra.log"), b"x").expect("write");
    fs::set_permissions(
        s.root.join("logs/app.log"),
        fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    fs::remove_file(s.root.join("logs/nested/to-app")).expect("unlink");
    symlink("wrong", s.root.join("logs/nested/to-app")).expect("symlink");
    fs::remove_file(s.root.join("hard-at-root")).expect("unlink");
    fs::write(s.root.join("hard-at-root"), b"hello\n").expect("write");
    fs::remove_file(s.root.join("logs/empty")).expect("unlink");
    fs::create_dir(s.root.join("logs/empty")).expect("mkdir");
    fs::create_dir(s.root.join(".logmirror")).expect("mkdir");
    fs::write(s.root.join(".logmirror/cursor"), b"state").expect("write");

    let backing_tree = scan_tree(&backing, &skip).expect("scan backing");
    let damaged = s.mirror.manifest().expect("manifest");
    let found: Vec<String> = diff(&backing_tree, &damaged)
        .iter()
        .map(|d| d.to_string())
        .collect();
    let backing_crc = crc32c::crc32c(&fs::read(backing.join("logs/big.log")).expect("read"));
    let mirror_crc = crc32c::crc32c(&bytes);
    // hard-at-root is the first name of its inode in the backing tree, and on the mirror a
    // file of its own: neither side links it to an earlier path, so it shows no difference.
    // The chmod of app.log shows at app-link too, which shares its inode.
    assert_eq!(
        found,
        [
            "not in backing: extra (directory on mirror)".to_owned(),
            "not in backing: extra/inner (directory on mirror)".to_owned(),
            "not in backing: extra/inner/f (file on mirror)".to_owned(),
            "mode differs: logs/app.log (backing 0644, mirror 0600)".to_owned(),
            "hard links differ: logs/app.log (backing linked to hard-at-root, \
             mirror not linked to another listed path)"
                .to_owned(),
            format!(
                "content differs: logs/big.log (backing crc32c {backing_crc:#010x}, \
                 mirror {mirror_crc:#010x})"
            ),
            "type differs: logs/empty (backing file, mirror directory)".to_owned(),
            "not in backing: logs/extra.log (file on mirror)".to_owned(),
            "mode differs: logs/nested/app-link (backing 0644, mirror 0600)".to_owned(),
            "hard links differ: logs/nested/app-link (backing linked to hard-at-root, \
             mirror linked to logs/app.log)"
                .to_owned(),
            "symlink target differs: logs/nested/to-app (backing ../app.log, mirror wrong)"
                .to_owned(),
        ]
    );

    let stats = resync(&mut s.mirror, &backing, &skip).expect("resync");
    let repaired = s.mirror.manifest().expect("manifest");
    assert_eq!(diff(&backing_tree, &repaired), Vec::<Difference>::new());
    assert_eq!(stats.differences, 11);
    // Copied again: big.log and the empty file that was a directory. Removed: the three
    // extra entries under extra/, extra.log, the directory at logs/empty, big.log, the two
    // names wrongly linked, and the symlink with the wrong target.
    assert_eq!(stats.files_copied, 2);
    assert_eq!(stats.removed, 9);
    assert_eq!(
        fs::read(&big).expect("read"),
        fs::read(backing.join("logs/big.log")).expect("read")
    );
    assert_eq!(
        fs::metadata(s.root.join("logs/app.log"))
            .expect("stat")
            .nlink(),
        3
    );
    assert_eq!(
        fs::read(s.root.join(".logmirror/cursor")).expect("read"),
        b"state"
    );
    make_removable(&[&backing, &s.root]);
}

#[test]
fn diff_names_one_changed_byte() {
    let mut s = setup();
    let backing = s.tmp.path().join("backing");
    fs::create_dir_all(backing.join("logs")).expect("mkdir");
    fs::write(backing.join("logs/app.log"), b"0123456789").expect("write");
    fs::write(backing.join("logs/other.log"), b"same").expect("write");
    resync(&mut s.mirror, &backing, &[]).expect("resync");

    fs::write(s.root.join("logs/app.log"), b"0123456780").expect("write");
    let backing_tree = scan_tree(&backing, &[]).expect("scan");
    let differences = diff(&backing_tree, &s.mirror.manifest().expect("manifest"));
    assert_eq!(differences.len(), 1);
    let backing_crc = crc32c::crc32c(b"0123456789");
    let mirror_crc = crc32c::crc32c(b"0123456780");
    assert_eq!(
        differences[0],
        Difference::Content {
            path: rel("logs/app.log"),
            backing_crc,
            mirror_crc,
        }
    );
    assert_eq!(
        differences[0].to_string(),
        format!(
            "content differs: logs/app.log (backing crc32c {backing_crc:#010x}, mirror {mirror_crc:#010x})"
        )
    );
}

#[test]
fn scan_tree_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    fs::write(root.join("f"), b"abc").expect("write");
    fs::set_permissions(root.join("f"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::hard_link(root.join("f"), root.join("g")).expect("link");
    fs::create_dir(root.join("skip")).expect("mkdir");
    fs::create_dir(root.join("d")).expect("mkdir");
    fs::write(root.join("d/skip"), b"").expect("write");
    symlink("f", root.join("l")).expect("symlink");

    let tree = scan_tree(root, &[OsStr::new("skip")]).expect("scan");
    let paths: Vec<String> = tree.entries.keys().map(|p| p.to_string()).collect();
    assert_eq!(paths, ["d", "d/skip", "f", "g", "l"]);
    let f = &tree.entries[&rel("f")];
    let meta = fs::metadata(root.join("f")).expect("stat");
    assert_eq!(f.kind, EntryKind::File);
    assert_eq!(f.mode, 0o640);
    assert_eq!(f.size, 3);
    assert_eq!(f.crc32c, Some(crc32c::crc32c(b"abc")));
    assert_eq!(f.hard_link, Some((meta.dev(), meta.ino())));
    assert_eq!(tree.entries[&rel("g")].hard_link, f.hard_link);
    let l = &tree.entries[&rel("l")];
    assert_eq!(l.kind, EntryKind::Symlink);
    assert_eq!(l.target.as_deref(), Some(&b"f"[..]));
    assert_eq!(l.size, 0);
    assert_eq!(tree.entries[&rel("d/skip")].hard_link, None);

    let missing = scan_tree(&root.join("absent"), &[]).expect_err("missing root");
    assert_eq!(missing.source.raw_os_error(), Some(libc::ENOENT));
    assert_eq!(missing.path, RelPath::root());
}

#[test]
fn repair_ops_stream_large_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let backing = tmp.path().join("b");
    fs::create_dir(&backing).expect("mkdir");
    let data = vec![7u8; 3 * 1024 * 1024 + 1];
    fs::write(backing.join("big"), &data).expect("write");
    fs::set_permissions(backing.join("big"), fs::Permissions::from_mode(0o400)).expect("chmod");
    let tree = scan_tree(&backing, &[]).expect("scan");
    let empty = manifest::Manifest::default();

    let ops: Vec<Op> = manifest::repair_ops(&backing, &tree, &empty)
        .expect("repair_ops")
        .collect::<Result<_, _>>()
        .expect("ops");
    let kinds: Vec<&str> = ops.iter().map(|op| op.kind()).collect();
    assert_eq!(
        kinds,
        ["create", "write", "write", "write", "write", "chmod"]
    );
    let writes: Vec<(u64, usize)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Write { offset, data, .. } => Some((*offset, data.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        writes,
        [
            (0, 1 << 20),
            (1 << 20, 1 << 20),
            (2 << 20, 1 << 20),
            (3 << 20, 1)
        ]
    );
    assert_eq!(
        ops.last(),
        Some(&Op::SetMode {
            path: rel("big"),
            mode: 0o400
        })
    );
}
