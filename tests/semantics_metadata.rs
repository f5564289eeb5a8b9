//! Metadata through the mount compared with a plain directory: modes, owners, timestamps
//! with nanoseconds (before 1970 too), hard links, symlinks, xattrs, statfs, large and deep
//! directories, and the errnos of refused namespace changes. Also links of one inode: a
//! rename between two of them, and hard links to a symlink and to a fifo.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::semantics::{
    errno_of, get_xattr, list_xattrs, lstat, names_of, remove_xattr, renameat2, set_xattr,
    statfs_type, statvfs, utimensat, with_case, xattr_probe_sizes,
};
use common::{Mode, wait_until};

both_modes!(
    modes_and_owners,
    timestamps_nanoseconds,
    hard_links_nlink,
    links_of_one_inode,
    symlinks_relative_absolute,
    xattrs_roundtrip,
    statfs_matches_backing,
    directory_5000_entries,
    deep_tree_100_levels,
    refused_changes_errnos,
    inode_flags_ioctl,
    state_dir_name_reserved,
    xattr_size_probe
);

/// Creates entries with the given modes (umask does not apply to chmod) and changes owners;
/// returns `(name, mode, uid, gid)` of each.
fn make_modes(root: &Path) -> Vec<(String, u32, u32, u32)> {
    let files = [
        ("private.log", 0o600),
        ("shared.log", 0o644),
        ("script.sh", 0o755),
        ("setuid.bin", 0o4755),
        ("none.log", 0o000),
    ];
    let dirs = [
        ("setgid.dir", 0o2775),
        ("sticky.dir", 0o1777),
        ("closed.dir", 0o700),
    ];
    for (name, mode) in files {
        fs::write(root.join(name), name).expect("create");
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    for (name, mode) in dirs {
        fs::create_dir(root.join(name)).expect("mkdir");
        fs::set_permissions(root.join(name), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    std::os::unix::fs::lchown(root.join("shared.log"), Some(1234), Some(5678)).expect("chown");
    // chown of a setuid executable clears setuid, also for root.
    std::os::unix::fs::lchown(root.join("setuid.bin"), Some(1000), None).expect("chown");
    std::os::unix::fs::lchown(root.join("setgid.dir"), None, Some(4321)).expect("chgrp");
    names_of(root)
        .into_iter()
        .map(|name| {
            let name = String::from_utf8(name).expect("UTF-8");
            let meta = lstat(&root.join(&name));
            (name, meta.mode(), meta.uid(), meta.gid())
        })
        .collect()
}

fn modes_and_owners(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(make_modes);
        let expected = vec![
            ("closed.dir".to_string(), 0o40700, 0, 0),
            ("none.log".to_string(), 0o100000, 0, 0),
            ("private.log".to_string(), 0o100600, 0, 0),
            ("script.sh".to_string(), 0o100755, 0, 0),
            ("setgid.dir".to_string(), 0o42775, 0, 4321),
            ("setuid.bin".to_string(), 0o100755, 1000, 0),
            ("shared.log".to_string(), 0o100644, 1234, 5678),
            ("sticky.dir".to_string(), 0o41777, 0, 0),
        ];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        let backing: Vec<(u32, u32, u32)> = expected
            .iter()
            .map(|(name, ..)| {
                let meta = lstat(&case.in_backing(name));
                (meta.mode(), meta.uid(), meta.gid())
            })
            .collect();
        let wanted: Vec<(u32, u32, u32)> = expected.iter().map(|e| (e.1, e.2, e.3)).collect();
        assert_eq!(backing, wanted, "backing directory");
    });
}

type Times = ((i64, i64), (i64, i64));

fn times_of(path: &Path) -> Times {
    let meta = lstat(path);
    (
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    )
}

/// Sets atime and mtime of each entry (file, directory, symlink) to the given values and
/// returns what stat reports afterwards.
fn set_times(root: &Path, cases: &[(&str, Times)]) -> Vec<Times> {
    fs::write(root.join("file.log"), b"x\n").expect("create");
    fs::create_dir(root.join("dir")).expect("mkdir");
    symlink("file.log", root.join("link")).expect("symlink");
    cases
        .iter()
        .map(|(name, (atime, mtime))| {
            let path = root.join(name);
            utimensat(&path, *atime, *mtime).unwrap_or_else(|e| panic!("utimensat {name}: {e}"));
            times_of(&path)
        })
        .collect()
}

fn timestamps_nanoseconds(mode: Mode) {
    let cases: [(&str, Times); 5] = [
        (
            "file.log",
            ((1_700_000_000, 123_456_789), (1_600_000_000, 987_654_321)),
        ),
        // Before 1970 with a fraction: -0.5 s and 1969-01-01 minus 0.75 s.
        ("file.log", ((-1, 500_000_000), (-31_536_001, 250_000_000))),
        ("dir", ((-2, 1), (4_000_000_000, 999_999_999))),
        ("link", ((1_234_567_890, 5), (-1_000_000_000, 999_999_999))),
        // UTIME_OMIT keeps atime; mtime gets a whole negative second.
        ("dir", ((0, libc::UTIME_OMIT), (-86_400, 0))),
    ];
    let expected: Vec<Times> = vec![
        cases[0].1,
        cases[1].1,
        cases[2].1,
        cases[3].1,
        (cases[2].1.0, (-86_400, 0)),
    ];
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(|root| set_times(root, &cases));
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");

        // Only the last change of each entry stays; read them before anything reads the
        // files, which could move atime.
        let last = [
            ("file.log", expected[1]),
            ("link", expected[3]),
            ("dir", expected[4]),
        ];
        for (name, times) in last {
            assert_eq!(times_of(&case.in_backing(name)), times, "backing {name}");
        }
        case.sync();
        for (name, times) in last {
            assert_eq!(times_of(&case.in_mirror(name)), times, "mirror {name}");
        }
    });
}

fn links(root: &Path) -> Vec<u64> {
    fs::write(root.join("a.log"), b"shared content\n").expect("create");
    fs::create_dir(root.join("dir")).expect("mkdir");
    fs::hard_link(root.join("a.log"), root.join("b.log")).expect("link");
    fs::hard_link(root.join("b.log"), root.join("dir/c.log")).expect("link");
    let mut counts = vec![lstat(&root.join("a.log")).nlink()];
    let same_inode = lstat(&root.join("a.log")).ino() == lstat(&root.join("dir/c.log")).ino();
    counts.push(u64::from(same_inode));
    fs::remove_file(root.join("a.log")).expect("unlink");
    counts.push(lstat(&root.join("b.log")).nlink());
    fs::write(root.join("dir/c.log"), b"changed through c\n").expect("write through c");
    counts.push(u64::from(
        fs::read(root.join("b.log")).expect("read b") == b"changed through c\n",
    ));
    counts.push(lstat(&root.join("dir")).nlink());
    counts
}

fn hard_links_nlink(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(links);
        let expected = vec![3, 1, 2, 1, 2];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        assert_eq!(lstat(&case.in_backing("b.log")).nlink(), 2);
        case.sync();
        let b = lstat(&case.in_mirror("b.log"));
        let c = lstat(&case.in_mirror("dir/c.log"));
        assert_eq!(b.nlink(), 2, "mirror nlink");
        assert_eq!(b.ino(), c.ino(), "mirror keeps one inode for both names");
    });
}

/// Renames one hard link over another link of the same inode (a no-op that keeps both
/// names), tries RENAME_NOREPLACE and RENAME_EXCHANGE between them, and hard-links a
/// symlink (not its target) and a fifo. Returns one line per step.
fn same_inode_links(root: &Path) -> Vec<String> {
    let describe = |name: &str| {
        let meta = lstat(&root.join(name));
        format!("{name} mode={:o} nlink={}", meta.mode(), meta.nlink())
    };
    let mut steps = Vec::new();
    fs::write(root.join("one.log"), b"one inode\n").expect("create");
    fs::hard_link(root.join("one.log"), root.join("two.log")).expect("link");
    fs::rename(root.join("one.log"), root.join("two.log")).expect("rename over own link");
    let names: Vec<String> = names_of(root)
        .iter()
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect();
    steps.push(format!("rename names={}", names.join(",")));
    let noreplace = renameat2(
        &root.join("one.log"),
        &root.join("two.log"),
        libc::RENAME_NOREPLACE,
    );
    steps.push(format!("noreplace errno={}", errno_of(&noreplace)));
    renameat2(
        &root.join("one.log"),
        &root.join("two.log"),
        libc::RENAME_EXCHANGE,
    )
    .expect("exchange two links");
    steps.push(describe("one.log"));

    symlink("one.log", root.join("sym")).expect("symlink");
    fs::hard_link(root.join("sym"), root.join("sym.link")).expect("link a symlink");
    steps.push(describe("sym.link"));
    steps.push(describe("one.log"));
    let out = common::run(
        Command::new("mkfifo").arg(root.join("fifo")),
        common::COMMAND_TIMEOUT,
    );
    out.assert_success("mkfifo");
    fs::hard_link(root.join("fifo"), root.join("fifo.link")).expect("link a fifo");
    steps.push(describe("fifo.link"));
    steps
}

fn links_of_one_inode(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(same_inode_links);
        let expected = vec![
            "rename names=one.log,two.log".to_string(),
            "noreplace errno=17".to_string(),
            "one.log mode=100644 nlink=2".to_string(),
            "sym.link mode=120777 nlink=2".to_string(),
            "one.log mode=100644 nlink=2".to_string(),
            "fifo.link mode=10644 nlink=2".to_string(),
        ];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Makes relative, absolute and dangling symlinks; returns each target and what reading
/// through the link gives (or the errno).
fn make_symlinks(root: &Path) -> Vec<(PathBuf, Result<Vec<u8>, i32>)> {
    fs::create_dir(root.join("sub")).expect("mkdir");
    fs::write(root.join("target.log"), b"target\n").expect("create");
    let links = [
        ("rel", PathBuf::from("target.log")),
        ("sub/up", PathBuf::from("../target.log")),
        ("abs", root.join("target.log")),
        ("outside", PathBuf::from("/proc/sys/kernel/ostype")),
        ("dangling", PathBuf::from("no/such/file")),
        ("dirlink", PathBuf::from("sub")),
    ];
    links
        .iter()
        .map(|(name, target)| {
            symlink(target, root.join(name)).expect("symlink");
            let read_back = fs::read_link(root.join(name)).expect("readlink");
            let through = fs::read(root.join(name)).map_err(|e| e.raw_os_error().unwrap_or(-1));
            (read_back, through)
        })
        .collect()
}

fn symlinks_relative_absolute(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(make_symlinks);
        let ostype = fs::read("/proc/sys/kernel/ostype").expect("read ostype");
        let expected = |root: &Path| {
            vec![
                (PathBuf::from("target.log"), Ok(b"target\n".to_vec())),
                (PathBuf::from("../target.log"), Ok(b"target\n".to_vec())),
                (root.join("target.log"), Ok(b"target\n".to_vec())),
                (PathBuf::from("/proc/sys/kernel/ostype"), Ok(ostype.clone())),
                (PathBuf::from("no/such/file"), Err(libc::ENOENT)),
                (PathBuf::from("sub"), Err(libc::EISDIR)),
            ]
        };
        assert_eq!(plain, expected(&case.plain), "plain directory");
        assert_eq!(mounted, expected(case.mnt()), "mount");
        assert_eq!(
            fs::read_link(case.in_backing("abs")).expect("readlink backing"),
            case.in_mount("target.log")
        );
    });
}

/// Runs a sequence of xattr calls; returns each errno, the listed names and the values.
fn xattr_calls(root: &Path) -> (Vec<i32>, Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let path = root.join("tagged.log");
    fs::write(&path, b"x\n").expect("create");
    fs::create_dir(root.join("tagged.dir")).expect("mkdir");
    let binary: Vec<u8> = (0..=255).collect();
    let large = vec![b'v'; 2000];
    let errnos = vec![
        errno_of(&set_xattr(&path, b"user.plain", b"value", 0)),
        errno_of(&set_xattr(&path, b"user.binary", &binary, 0)),
        errno_of(&set_xattr(&path, b"user.large", &large, 0)),
        errno_of(&set_xattr(&path, b"user.empty", b"", 0)),
        errno_of(&set_xattr(
            &path,
            b"user.plain",
            b"again",
            libc::XATTR_CREATE,
        )),
        errno_of(&set_xattr(
            &path,
            b"user.missing",
            b"x",
            libc::XATTR_REPLACE,
        )),
        errno_of(&set_xattr(
            &path,
            b"user.plain",
            b"replaced",
            libc::XATTR_REPLACE,
        )),
        errno_of(&remove_xattr(&path, b"user.large")),
        errno_of(&remove_xattr(&path, b"user.large")),
        errno_of(&get_xattr(&path, b"user.large")),
        errno_of(&set_xattr(&root.join("tagged.dir"), b"user.dir", b"d", 0)),
        errno_of(&set_xattr(&path, b"bogus.namespace", b"x", 0)),
    ];
    let mut names = list_xattrs(&path).expect("listxattr");
    names.sort();
    let values = [b"user.plain".as_slice(), b"user.binary", b"user.empty"]
        .iter()
        .map(|name| get_xattr(&path, name).expect("getxattr"))
        .collect();
    (errnos, names, values)
}

fn xattrs_roundtrip(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(xattr_calls);
        let expected_errnos = vec![
            0,
            0,
            0,
            0,
            libc::EEXIST,
            libc::ENODATA,
            0,
            0,
            libc::ENODATA,
            libc::ENODATA,
            0,
            libc::EOPNOTSUPP,
        ];
        let names: Vec<Vec<u8>> = [b"user.binary".as_slice(), b"user.empty", b"user.plain"]
            .iter()
            .map(|n| n.to_vec())
            .collect();
        let values = vec![b"replaced".to_vec(), (0..=255).collect(), Vec::new()];
        let expected = (expected_errnos, names, values);
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// The statvfs fields a program sees, in a comparable form.
fn statvfs_fields(path: &Path) -> [u64; 8] {
    let st = statvfs(path).expect("statvfs");
    [
        st.f_bsize,
        st.f_frsize,
        st.f_blocks,
        st.f_bfree,
        st.f_bavail,
        st.f_files,
        st.f_ffree,
        st.f_namemax,
    ]
}

fn statfs_matches_backing(mode: Mode) {
    with_case(mode, |case| {
        // Other programs change the free counts, so compare a reading of the mount taken
        // between two equal readings of the backing directory.
        wait_until(Duration::from_secs(30), "a quiet statfs triple", || {
            let before = statvfs_fields(case.backing());
            let mounted = statvfs_fields(case.mnt());
            let after = statvfs_fields(case.backing());
            if before == after && mounted == before {
                Ok(())
            } else {
                Err(format!(
                    "backing {before:?}, mount {mounted:?}, backing {after:?}"
                ))
            }
        });
        assert_eq!(
            statfs_type(case.mnt()).expect("statfs"),
            0x6573_5546,
            "FUSE magic"
        );
    });
}

fn directory_5000_entries(mode: Mode) {
    const ENTRIES: usize = 5000;
    with_case(mode, |case| {
        let dir = case.in_mount("many");
        fs::create_dir(&dir).expect("mkdir");
        for i in 0..ENTRIES {
            let name = format!("entry-{i:05}-{}", "n".repeat(i % 40));
            fs::write(dir.join(name), i.to_string()).expect("create");
        }
        let listed: Vec<(Vec<u8>, u64)> = {
            let mut listed: Vec<(Vec<u8>, u64)> = fs::read_dir(&dir)
                .expect("readdir")
                .map(|entry| {
                    let entry = entry.expect("readdir entry");
                    (entry.file_name().into_encoded_bytes(), entry.ino())
                })
                .collect();
            listed.sort();
            listed
        };
        assert_eq!(listed.len(), ENTRIES);
        let backing_dir = case.in_backing("many");
        let expected: Vec<(Vec<u8>, u64)> = names_of(&backing_dir)
            .into_iter()
            .map(|name| {
                let ino = lstat(&backing_dir.join(common::semantics::os(&name))).ino();
                (name, ino)
            })
            .collect();
        assert_eq!(listed, expected, "names and d_ino through the mount");
        // A second listing after the kernel cached every entry gives the same result.
        assert_eq!(names_of(&dir).len(), ENTRIES);
    });
}

fn deep_tree_100_levels(mode: Mode) {
    const LEVELS: usize = 100;
    with_case(mode, |case| {
        let mut path = case.in_mount("top");
        fs::create_dir(&path).expect("mkdir top");
        for level in 1..LEVELS {
            path.push(format!("level_{level:03}"));
            fs::create_dir(&path).expect("mkdir level");
        }
        fs::write(path.join("bottom.log"), b"at the bottom\n").expect("create bottom.log");
        let rel = path
            .strip_prefix(case.mnt())
            .expect("below the mount")
            .to_path_buf();
        assert_eq!(
            fs::read(case.in_backing(&rel).join("bottom.log")).expect("read backing"),
            b"at the bottom\n"
        );

        // Renaming the top moves the whole tree; later writes must reach the new path.
        fs::rename(case.in_mount("top"), case.in_mount("moved")).expect("rename top");
        let moved = Path::new("moved").join(rel.strip_prefix("top").expect("under top"));
        let mut file = OpenOptions::new()
            .append(true)
            .mode(0o644)
            .open(case.in_mount(&moved).join("bottom.log"))
            .expect("open after the rename");
        std::io::Write::write_all(&mut file, b"after the rename\n").expect("append");
        drop(file);
        case.sync();
        assert_eq!(
            fs::read(case.in_mirror(&moved).join("bottom.log")).expect("read mirror"),
            b"at the bottom\nafter the rename\n"
        );
    });
}

/// Refused namespace changes, each as the errno it returns.
fn refused(root: &Path) -> Vec<i32> {
    fs::create_dir(root.join("full")).expect("mkdir");
    fs::write(root.join("full/file.log"), b"x").expect("create");
    fs::write(root.join("file.log"), b"x").expect("create");
    let long_255 = "n".repeat(255);
    let long_256 = "n".repeat(256);
    vec![
        errno_of(&fs::remove_dir(root.join("full"))),
        errno_of(&fs::create_dir(root.join("full"))),
        errno_of(
            &OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(root.join("file.log")),
        ),
        errno_of(&fs::hard_link(
            root.join("file.log"),
            root.join("full/file.log"),
        )),
        errno_of(&symlink("x", root.join("file.log"))),
        errno_of(&fs::write(root.join(&long_255), b"x")),
        errno_of(&fs::write(root.join(&long_256), b"x")),
        errno_of(&fs::create_dir(root.join(&long_256))),
        errno_of(&fs::symlink_metadata(root.join(&long_256))),
        errno_of(&fs::rename(root.join("file.log"), root.join(&long_256))),
        errno_of(&fs::remove_dir(root.join("file.log"))),
        errno_of(&fs::remove_file(root.join("full"))),
        errno_of(&OpenOptions::new().write(true).open(root.join("full"))),
        errno_of(&fs::write(root.join("file.log/child"), b"x")),
        errno_of(&fs::rename(root.join("full"), root.join("full/inside"))),
        errno_of(&fs::remove_file(root.join("missing"))),
        errno_of(&fs::rename(root.join("full"), root.join("file.log"))),
    ]
}

fn refused_changes_errnos(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(refused);
        let expected = vec![
            libc::ENOTEMPTY,
            libc::EEXIST,
            libc::EEXIST,
            libc::EEXIST,
            libc::EEXIST,
            0,
            libc::ENAMETOOLONG,
            libc::ENAMETOOLONG,
            libc::ENAMETOOLONG,
            libc::ENAMETOOLONG,
            libc::ENOTDIR,
            libc::EISDIR,
            libc::EISDIR,
            libc::ENOTDIR,
            libc::EINVAL,
            libc::ENOENT,
            libc::ENOTDIR,
        ];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Returns the errno of FS_IOC_GETFLAGS (what `lsattr` calls) on a new file.
fn get_inode_flags(root: &Path) -> i32 {
    let path = root.join("flags.log");
    fs::write(&path, b"x\n").expect("create");
    let file = fs::File::open(&path).expect("open");
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`, which outlives the call.
    let ret = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::FS_IOC_GETFLAGS,
            &mut flags,
        )
    };
    if ret == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Inode flags (`lsattr`, `chattr +a`) are not passed through: the daemon answers every
/// ioctl with ENOTTY, where ext4 answers FS_IOC_GETFLAGS.
fn inode_flags_ioctl(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(get_inode_flags);
        assert_eq!(plain, 0, "plain directory");
        assert_eq!(mounted, libc::ENOTTY, "mount");
    });
}

/// Errnos of using the name `.logmirror` at the root and in a subdirectory, and whether a
/// listing of the root shows it.
fn use_state_dir_name(root: &Path) -> (Vec<i32>, bool) {
    let name = root.join(".logmirror");
    fs::create_dir(root.join("sub")).expect("mkdir");
    fs::write(root.join("file.log"), b"x").expect("create");
    let errnos = vec![
        errno_of(&fs::create_dir(root.join("sub/.logmirror"))),
        errno_of(&fs::create_dir(&name)),
        errno_of(&fs::write(&name, b"x")),
        errno_of(&symlink("sub", &name)),
        errno_of(&fs::rename(root.join("file.log"), &name)),
    ];
    let listed = names_of(root).contains(&b".logmirror".to_vec());
    (errnos, listed)
}

/// The mount reserves `.logmirror` at its root for the state directory, which sits in the
/// backing directory by default: a lookup there finds nothing and creating it gets EPERM.
fn state_dir_name_reserved(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(use_state_dir_name);
        let expected_plain = vec![0, 0, libc::EISDIR, libc::EEXIST, libc::EISDIR];
        assert_eq!(plain, (expected_plain, true), "plain directory");
        let eperm = libc::EPERM;
        assert_eq!(
            mounted,
            (vec![0, eperm, eperm, eperm, eperm], false),
            "mount"
        );
        assert_eq!(
            errno_of(&fs::symlink_metadata(case.in_mount(".logmirror"))),
            libc::ENOENT
        );
        assert!(case.in_backing(".logmirror/journal").is_dir());
    });
}

/// Sets two xattrs on a file and a directory, then returns the size probes of each and what
/// `getfattr -d` prints (paths relative to `root`).
fn probe_xattr_sizes(root: &Path) -> (Vec<(isize, isize)>, String) {
    fs::write(root.join("probed.log"), b"x\n").expect("create");
    fs::create_dir(root.join("probed.dir")).expect("mkdir");
    let mut sizes = Vec::new();
    for name in ["probed.log", "probed.dir"] {
        let path = root.join(name);
        set_xattr(&path, b"user.first", b"1", 0).expect("setxattr");
        set_xattr(&path, b"user.second", b"twenty-two bytes value", 0).expect("setxattr");
        sizes.push(xattr_probe_sizes(&path, b"user.second"));
    }
    let out = common::run(
        std::process::Command::new("getfattr")
            .args(["-d", "probed.log", "probed.dir"])
            .current_dir(root),
        common::COMMAND_TIMEOUT,
    );
    out.assert_success("getfattr -d");
    (sizes, out.stdout)
}

fn xattr_size_probe(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(probe_xattr_sizes);
        // "user.first\0user.second\0" is 23 bytes.
        let expected_sizes = vec![(23, 22), (23, 22)];
        let expected_listing = "# file: probed.log\nuser.first=\"1\"\n\
                                user.second=\"twenty-two bytes value\"\n\n\
                                # file: probed.dir\nuser.first=\"1\"\n\
                                user.second=\"twenty-two bytes value\"\n\n";
        assert_eq!(plain.0, expected_sizes, "plain directory");
        assert_eq!(plain.1, expected_listing, "getfattr on the plain directory");
        assert_eq!(mounted.0, expected_sizes, "mount");
        assert_eq!(mounted.1, expected_listing, "getfattr through the mount");
    });
}
