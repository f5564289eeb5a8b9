//! Open files whose names change: unlink while open, rename over an open file,
//! RENAME_NOREPLACE and RENAME_EXCHANGE, through the mount and on a plain directory.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::Mode;
use common::semantics::{errno_of, lstat, names_of, renameat2, with_case};

both_modes!(
    unlink_while_open,
    rename_over_open_file,
    rename_noreplace,
    rename_exchange,
    rename_parent_of_open_file,
    unlink_one_of_two_links,
    exchange_directories_open_files
);

/// What an open descriptor of an unlinked file shows: link count, size, content, and
/// whether the name still resolves.
#[derive(Debug, PartialEq, Eq)]
struct Unlinked {
    nlink: u64,
    size: u64,
    content: Vec<u8>,
    lookup_errno: i32,
    names: Vec<Vec<u8>>,
}

fn unlink_open(root: &Path) -> (fs::File, Unlinked) {
    let path = root.join("doomed.log");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    file.write_all(b"before unlink\n").expect("write");
    fs::remove_file(&path).expect("unlink while open");
    file.write_all(b"after unlink\n")
        .expect("write after unlink");
    file.seek(SeekFrom::Start(0)).expect("seek");
    let mut content = Vec::new();
    file.read_to_end(&mut content).expect("read after unlink");
    let meta = file.metadata().expect("fstat after unlink");
    let state = Unlinked {
        nlink: meta.nlink(),
        size: meta.size(),
        content,
        lookup_errno: errno_of(&fs::symlink_metadata(&path)),
        names: names_of(root),
    };
    (file, state)
}

fn unlink_while_open(mode: Mode) {
    with_case(mode, |case| {
        let ((open_in_mount, mounted), (_open_in_plain, plain)) = case.on_both(unlink_open);
        let expected = Unlinked {
            nlink: 0,
            size: 27,
            content: b"before unlink\nafter unlink\n".to_vec(),
            lookup_errno: libc::ENOENT,
            names: Vec::new(),
        };
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        assert_eq!(
            errno_of(&fs::symlink_metadata(case.in_backing("doomed.log"))),
            libc::ENOENT
        );

        // The name is gone from the mirror while the file is still open and written.
        open_in_mount
            .write_all_at(b"more\n", 27)
            .expect("write after the sync");
        case.sync();
        assert_eq!(
            errno_of(&fs::symlink_metadata(case.in_mirror("doomed.log"))),
            libc::ENOENT
        );
        let mut tail = [0u8; 5];
        open_in_mount.read_exact_at(&mut tail, 27).expect("read");
        assert_eq!(&tail, b"more\n");
        drop(open_in_mount);
    });
}

/// Opens `b.log`, renames `a.log` over it, and writes to the open descriptor. Returns what
/// the descriptor reads, its link count, and what the name `b.log` reads afterwards.
fn rename_over_open(root: &Path) -> (Vec<u8>, u64, Vec<u8>) {
    fs::write(root.join("a.log"), b"new content\n").expect("create a.log");
    fs::write(root.join("b.log"), b"old content\n").expect("create b.log");
    let mut open = OpenOptions::new()
        .read(true)
        .append(true)
        .open(root.join("b.log"))
        .expect("open b.log");
    fs::rename(root.join("a.log"), root.join("b.log")).expect("rename over the open file");
    open.write_all(b"written to the old file\n").expect("write");
    open.seek(SeekFrom::Start(0)).expect("seek");
    let mut seen = Vec::new();
    open.read_to_end(&mut seen).expect("read the old file");
    let nlink = open.metadata().expect("fstat").nlink();
    let by_name = fs::read(root.join("b.log")).expect("read b.log");
    (seen, nlink, by_name)
}

fn rename_over_open_file(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(rename_over_open);
        let expected = (
            b"old content\nwritten to the old file\n".to_vec(),
            0,
            b"new content\n".to_vec(),
        );
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        assert_eq!(names_of(case.mnt()), [b"b.log".to_vec()]);
    });
}

fn noreplace(root: &Path) -> (i32, i32, Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    fs::write(root.join("a.log"), b"a\n").expect("create a.log");
    fs::write(root.join("b.log"), b"b\n").expect("create b.log");
    let flags = libc::RENAME_NOREPLACE;
    let refused = errno_of(&renameat2(&root.join("a.log"), &root.join("b.log"), flags));
    let moved = errno_of(&renameat2(&root.join("a.log"), &root.join("c.log"), flags));
    let b = fs::read(root.join("b.log")).expect("read b.log");
    let c = fs::read(root.join("c.log")).expect("read c.log");
    (refused, moved, b, c, names_of(root))
}

fn rename_noreplace(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(noreplace);
        let expected = (
            libc::EEXIST,
            0,
            b"b\n".to_vec(),
            b"a\n".to_vec(),
            vec![b"b.log".to_vec(), b"c.log".to_vec()],
        );
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Errnos of the exchanges, contents of `a.log` and `b.log` and whether their inodes
/// swapped after the first one, and the names at the end (`/` marks a directory).
type ExchangeOutcome = (Vec<i32>, Vec<u8>, Vec<u8>, bool, Vec<Vec<u8>>);

/// Swaps two files, then a file and a directory, then tries a missing name.
fn exchange(root: &Path) -> ExchangeOutcome {
    fs::write(root.join("a.log"), b"content of a\n").expect("create a.log");
    fs::write(root.join("b.log"), b"content of b\n").expect("create b.log");
    fs::create_dir(root.join("dir")).expect("mkdir");
    fs::write(root.join("dir/inner.log"), b"inner\n").expect("create dir/inner.log");
    let ino_a = lstat(&root.join("a.log")).ino();
    let ino_b = lstat(&root.join("b.log")).ino();
    let flags = libc::RENAME_EXCHANGE;

    let mut errnos = vec![errno_of(&renameat2(
        &root.join("a.log"),
        &root.join("b.log"),
        flags,
    ))];
    let a = fs::read(root.join("a.log")).expect("read a.log");
    let b = fs::read(root.join("b.log")).expect("read b.log");
    let inodes_swapped =
        lstat(&root.join("a.log")).ino() == ino_b && lstat(&root.join("b.log")).ino() == ino_a;

    errnos.push(errno_of(&renameat2(
        &root.join("a.log"),
        &root.join("dir"),
        flags,
    )));
    errnos.push(errno_of(&renameat2(
        &root.join("b.log"),
        &root.join("missing"),
        flags,
    )));
    let inner = fs::read(root.join("a.log/inner.log")).expect("read through the swapped dir");
    assert_eq!(inner, b"inner\n");
    let mut kinds = names_of(root);
    for name in kinds.iter_mut() {
        let is_dir = root.join(common::semantics::os(name)).is_dir();
        name.extend_from_slice(if is_dir { b"/" } else { b"" });
    }
    (errnos, a, b, inodes_swapped, kinds)
}

fn rename_exchange(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(exchange);
        let expected = (
            vec![0, 0, libc::ENOENT],
            b"content of b\n".to_vec(),
            b"content of a\n".to_vec(),
            true,
            vec![b"a.log/".to_vec(), b"b.log".to_vec(), b"dir".to_vec()],
        );
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Keeps `logs/app.log` open while its directory is renamed twice and written between the
/// renames. Returns what the final name reads.
fn write_across_parent_renames(root: &Path) -> Vec<u8> {
    fs::create_dir(root.join("logs")).expect("mkdir");
    let mut open = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(root.join("logs/app.log"))
        .expect("create");
    open.write_all(b"in logs\n").expect("write");
    fs::rename(root.join("logs"), root.join("logs.old")).expect("rename the directory");
    open.write_all(b"in logs.old\n").expect("write");
    fs::create_dir(root.join("archive")).expect("mkdir");
    fs::rename(root.join("logs.old"), root.join("archive/2024")).expect("move the directory");
    open.write_all(b"in archive/2024\n").expect("write");
    drop(open);
    fs::read(root.join("archive/2024/app.log")).expect("read")
}

fn rename_parent_of_open_file(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(write_across_parent_renames);
        let expected = b"in logs\nin logs.old\nin archive/2024\n".to_vec();
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        case.sync();
        let copy = fs::read(case.in_mirror("archive/2024/app.log")).expect("read mirror");
        assert_eq!(copy, expected);
    });
}

/// Writes through an open descriptor after one of the file's two names is unlinked.
/// Returns the remaining name's content and link count.
fn write_after_unlinking_a_link(root: &Path) -> (Vec<u8>, u64) {
    let mut open = OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(root.join("first.log"))
        .expect("create");
    open.write_all(b"one\n").expect("write");
    fs::hard_link(root.join("first.log"), root.join("second.log")).expect("link");
    fs::remove_file(root.join("first.log")).expect("unlink the opened name");
    open.write_all(b"two\n").expect("write after unlink");
    drop(open);
    let content = fs::read(root.join("second.log")).expect("read");
    (content, lstat(&root.join("second.log")).nlink())
}

fn unlink_one_of_two_links(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(write_after_unlinking_a_link);
        let expected = (b"one\ntwo\n".to_vec(), 1);
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        case.sync();
        let copy = fs::read(case.in_mirror("second.log")).expect("read mirror");
        assert_eq!(copy, expected.0);
    });
}

/// Keeps one file open in each of two directories, swaps the directories with
/// RENAME_EXCHANGE, and writes through both descriptors. Returns what each path reads.
fn write_after_directory_exchange(root: &Path) -> (Vec<u8>, Vec<u8>) {
    fs::create_dir(root.join("current")).expect("mkdir");
    fs::create_dir(root.join("previous")).expect("mkdir");
    let open = |name: &str| {
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(root.join(name))
            .expect("create")
    };
    let mut in_current = open("current/app.log");
    let mut in_previous = open("previous/app.log");
    in_current.write_all(b"current before\n").expect("write");
    in_previous.write_all(b"previous before\n").expect("write");
    let flags = libc::RENAME_EXCHANGE;
    renameat2(&root.join("current"), &root.join("previous"), flags).expect("exchange");
    in_current.write_all(b"current after\n").expect("write");
    in_previous.write_all(b"previous after\n").expect("write");
    drop((in_current, in_previous));
    let current = fs::read(root.join("current/app.log")).expect("read");
    let previous = fs::read(root.join("previous/app.log")).expect("read");
    (current, previous)
}

fn exchange_directories_open_files(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(write_after_directory_exchange);
        // The directory now named `current` is the one that was `previous`.
        let expected = (
            b"previous before\nprevious after\n".to_vec(),
            b"current before\ncurrent after\n".to_vec(),
        );
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
        case.sync();
        let current = fs::read(case.in_mirror("current/app.log")).expect("read mirror");
        assert_eq!(current, expected.0);
    });
}
