//! Log rotation through the mount: renaming a file its writer keeps open, Python's
//! TimedRotatingFileHandler, a `tail -F`-style follower that reopens by path when the inode
//! changes, and inode numbers that equal the backing inode numbers across renames and
//! remounts.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirEntryExt, MetadataExt, OpenOptionsExt, symlink};
use std::path::Path;
use std::time::Duration;

use common::semantics::{lstat, with_case};
use common::{Helper, Mode, path_str};

both_modes!(
    rename_open_file,
    timed_rotating_handler,
    follower_across_rotation,
    inode_numbers_stable
);

const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("{prefix} line {i:05}\n")).collect()
}

/// Writes to `app.log`, renames it to `app.log.1` while open, writes on through the same
/// descriptor and creates a new `app.log`. Returns the inode before the rename, the inode
/// of `app.log.1` and of the open descriptor after it, and both files.
fn rotate_open(root: &Path) -> (u64, u64, u64, Vec<u8>, Vec<u8>) {
    let path = root.join("app.log");
    let mut writer = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(&path)
        .expect("open app.log");
    writer
        .write_all(numbered("before", 0..100).as_bytes())
        .expect("write before");
    let before = writer.metadata().expect("fstat").ino();

    fs::rename(&path, root.join("app.log.1")).expect("rename the open file");
    writer
        .write_all(numbered("after", 0..50).as_bytes())
        .expect("write after the rename");
    fs::write(&path, b"new file\n").expect("create the new app.log");

    let rotated = lstat(&root.join("app.log.1")).ino();
    let open = writer.metadata().expect("fstat").ino();
    drop(writer);
    let old = fs::read(root.join("app.log.1")).expect("read app.log.1");
    let new = fs::read(&path).expect("read app.log");
    (before, rotated, open, old, new)
}

fn rename_open_file(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(rotate_open);
        let expected_old = numbered("before", 0..100) + &numbered("after", 0..50);
        for (label, (before, rotated, open, old, new)) in [("mount", mounted), ("plain", plain)] {
            assert_eq!(rotated, before, "{label}: inode of app.log.1");
            assert_eq!(open, before, "{label}: inode of the open descriptor");
            assert_eq!(old, expected_old.as_bytes(), "{label}: app.log.1");
            assert_eq!(new, b"new file\n", "{label}: app.log");
        }
        let backing_ino = lstat(&case.in_backing("app.log.1")).ino();
        assert_eq!(lstat(&case.in_mount("app.log.1")).ino(), backing_ino);
    });
}

/// Logs `per_batch` lines in each of six batches through TimedRotatingFileHandler and forces
/// a rollover before each batch after the first by moving `rolloverAt` into the past. The
/// rotated names come from `rolloverAt - interval`, so they are fixed UTC times. The
/// interval is a day, so that no rollover comes from the clock while the test runs.
const TIMED_ROTATION: &str = r#"
import logging, logging.handlers, os, sys
directory, per_batch = sys.argv[1], int(sys.argv[2])
handler = logging.handlers.TimedRotatingFileHandler(
    os.path.join(directory, "app.log"), when="S", interval=86400, backupCount=3, utc=True,
    encoding="ascii")
handler.setFormatter(logging.Formatter("%(message)s"))
logger = logging.getLogger("timed")
logger.setLevel(logging.INFO)
logger.addHandler(handler)
for batch in range(6):
    if batch > 0:
        handler.rolloverAt = 1600000000 + 3600 * batch + 86400
    for i in range(per_batch):
        logger.info("batch %d line %05d", batch, i)
handler.close()
for name in sorted(os.listdir(directory)):
    print(name)
"#;

fn timed_rotating_handler(mode: Mode) {
    const PER_BATCH: usize = 200;
    with_case(mode, |case| {
        fs::create_dir(case.in_mount("logs")).expect("mkdir through the mount");
        fs::create_dir(case.in_plain("logs")).expect("mkdir in plain");
        let (mounted, plain) = case.on_both(|root| {
            let dir = root.join("logs");
            common::python_ok(TIMED_ROTATION, &[path_str(&dir), &PER_BATCH.to_string()])
        });
        // Rollover k names the file after 1600000000 + 3600 * k, in UTC; backupCount=3
        // removes the two oldest of five.
        let expected_names = "app.log\napp.log.2020-09-13_15-26-40\n\
                              app.log.2020-09-13_16-26-40\napp.log.2020-09-13_17-26-40\n";
        assert_eq!(plain, expected_names, "plain directory");
        assert_eq!(mounted, expected_names, "mount");

        let batch = |b: usize| -> String {
            (0..PER_BATCH)
                .map(|i| format!("batch {b} line {i:05}\n"))
                .collect()
        };
        let files = [
            ("app.log", 5),
            ("app.log.2020-09-13_15-26-40", 2),
            ("app.log.2020-09-13_16-26-40", 3),
            ("app.log.2020-09-13_17-26-40", 4),
        ];
        for (name, b) in files {
            let through_mount = fs::read_to_string(case.in_mount("logs").join(name))
                .unwrap_or_else(|e| panic!("read {name}: {e}"));
            assert_eq!(through_mount, batch(b), "{name}");
        }
    });
}

/// Follows a file by path as `tail -F` does: reads to the end, then compares the inode
/// behind the path with the open one and, when it changed, drains the old file and opens
/// the new one. Prints `ready` once the first file is open, then every line it read.
const FOLLOWER: &str = r#"
import os, sys, time
path, total = sys.argv[1], int(sys.argv[2])
while not os.path.exists(path):
    time.sleep(0.005)
f = open(path, "rb")
ino = os.fstat(f.fileno()).st_ino
print("ready")
pending = b""
seen = 0
def emit(chunk):
    global pending, seen
    pending += chunk
    *lines, pending = pending.split(b"\n")
    for line in lines:
        print(line.decode())
        seen += 1
while seen < total:
    chunk = f.read()
    if chunk:
        emit(chunk)
        continue
    try:
        current = os.stat(path).st_ino
    except FileNotFoundError:
        current = ino
    if current != ino:
        emit(f.read())
        f.close()
        f = open(path, "rb")
        ino = os.fstat(f.fileno()).st_ino
    else:
        time.sleep(0.005)
"#;

fn follower_across_rotation(mode: Mode) {
    const PER_FILE: usize = 300;
    const LATE: usize = 20;
    with_case(mode, |case| {
        let path = case.in_mount("app.log");
        let total = 3 * PER_FILE + 2 * LATE;
        let follower = Helper::python(FOLLOWER, &[path_str(&path), &total.to_string()]);

        let mut expected = Vec::new();
        let mut writer = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .expect("create app.log");
        assert_eq!(follower.read_line(LINE_TIMEOUT), "ready");
        for generation in 0..3 {
            for i in 0..PER_FILE {
                let line = format!("gen {generation} line {i:05}");
                writeln!(writer, "{line}").expect("write a line");
                expected.push(line);
            }
            if generation == 2 {
                break;
            }
            fs::rename(&path, case.in_mount(format!("app.log.{generation}")))
                .expect("rotate by rename");
            // A writer that has not reopened yet still writes to the renamed file.
            for i in 0..LATE {
                let line = format!("gen {generation} late {i:05}");
                writeln!(writer, "{line}").expect("write a late line");
                expected.push(line);
            }
            writer = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .expect("reopen app.log");
        }
        drop(writer);

        let seen: Vec<String> = (0..total)
            .map(|_| follower.read_line(LINE_TIMEOUT))
            .collect();
        assert_eq!(seen, expected);
        let (status, rest) = follower.finish(LINE_TIMEOUT);
        assert!(status.success(), "follower: {status}");
        assert!(rest.is_empty(), "follower printed more: {rest:?}");
    });
}

/// Returns the inode of every entry named in `names`, through `root`.
fn inodes(root: &Path, names: &[&str]) -> Vec<u64> {
    names
        .iter()
        .map(|name| lstat(&root.join(name)).ino())
        .collect()
}

fn inode_numbers_stable(mode: Mode) {
    let names = ["a.log", "dir", "dir/b.log", "link", "hard.log"];
    with_case(mode, |case| {
        fs::write(case.in_mount("a.log"), b"a\n").expect("create a.log");
        fs::create_dir(case.in_mount("dir")).expect("mkdir");
        fs::write(case.in_mount("dir/b.log"), b"b\n").expect("create dir/b.log");
        symlink("a.log", case.in_mount("link")).expect("symlink");
        fs::hard_link(case.in_mount("a.log"), case.in_mount("hard.log")).expect("link");

        let backing = inodes(case.backing(), &names);
        assert_eq!(
            inodes(case.mnt(), &names),
            backing,
            "stat through the mount"
        );
        assert_eq!(backing[4], backing[0], "a hard link shares the inode");

        // readdir reports the same numbers as stat.
        let mut listed: Vec<(String, u64)> = fs::read_dir(case.mnt())
            .expect("readdir")
            .map(|entry| {
                let entry = entry.expect("readdir entry");
                (entry.file_name().into_string().expect("UTF-8"), entry.ino())
            })
            .collect();
        listed.sort();
        let expected: Vec<(String, u64)> = [("a.log", 0), ("dir", 1), ("hard.log", 4), ("link", 3)]
            .iter()
            .map(|&(name, i)| (name.to_string(), backing[i]))
            .collect();
        assert_eq!(listed, expected, "d_ino of readdir through the mount");

        // FUSE reserves inode 1 for the root of every mount.
        assert_eq!(lstat(case.mnt()).ino(), 1);

        fs::rename(case.in_mount("a.log"), case.in_mount("dir/moved.log")).expect("rename");
        assert_eq!(lstat(&case.in_mount("dir/moved.log")).ino(), backing[0]);

        case.remount();
        let moved = ["dir/moved.log", "dir", "dir/b.log", "link", "hard.log"];
        assert_eq!(inodes(case.mnt(), &moved), backing, "after the remount");
        assert_eq!(
            inodes(case.backing(), &moved),
            backing,
            "backing after the remount"
        );
    });
}
