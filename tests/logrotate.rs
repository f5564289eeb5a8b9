//! The real `logrotate` binary rotating files on the mount while their writer keeps them
//! open: `copytruncate` (copy, then truncate in place) and `create` (rename, create a new file,
//! signal the writer to reopen). Line counts and bytes must come out exact in the mount and
//! in the mirror.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{COMMAND_TIMEOUT, Helper, Mode, Mount, TestDirs, assert_mirrors_match, path_str};

const LINE_BYTES: usize = 32;
const LINE_TIMEOUT: Duration = Duration::from_secs(60);

fn line(name: &str, i: usize) -> String {
    let head = format!("{name} line {i:06} ");
    format!("{head}{}\n", "-".repeat(LINE_BYTES - 1 - head.len()))
}

fn lines(name: &str, range: std::ops::Range<usize>) -> String {
    range.map(|i| line(name, i)).collect()
}

fn run_logrotate(dirs: &TestDirs, config: &str) {
    let config_path = dirs.root.join("logrotate.conf");
    fs::write(&config_path, config).expect("write logrotate config");
    let out = common::run(
        Command::new("logrotate")
            .arg("-f")
            .arg("-s")
            .arg(dirs.root.join("logrotate.state"))
            .arg(&config_path),
        COMMAND_TIMEOUT,
    );
    out.assert_success("logrotate");
}

/// Keeps `app.log` (O_APPEND) and `plain.log` (no O_APPEND, so it keeps its own offset)
/// open, writes `before` lines to each, prints `rotate`, waits for a line on stdin, writes
/// `after` more lines and prints `done`.
const COPYTRUNCATE_WRITER: &str = r#"
import os, sys
directory, before, after, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def line(name, i):
    head = "%s line %06d " % (name, i)
    return (head + "-" * (width - 1 - len(head)) + "\n").encode()
fds = {
    "app": os.open(os.path.join(directory, "app.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
    "plain": os.open(os.path.join(directory, "plain.log"), os.O_WRONLY | os.O_CREAT, 0o644),
}
def write(first, count):
    for i in range(first, first + count):
        for name, fd in fds.items():
            data = line(name, i)
            assert os.write(fd, data) == len(data)
write(0, before)
print("rotate")
sys.stdin.readline()
write(before, after)
for fd in fds.values():
    os.close(fd)
print("done")
"#;

#[test]
fn copytruncate_sync() {
    copytruncate(Mode::Sync);
}

#[test]
fn copytruncate_async() {
    copytruncate(Mode::Async);
}

/// Lines written between logrotate's copy and its truncate are lost by design of
/// `copytruncate`, so the writer pauses (files still open) while logrotate runs.
fn copytruncate(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    const BEFORE: usize = 1000;
    const AFTER: usize = 300;
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);

    let mut writer = Helper::python(
        COPYTRUNCATE_WRITER,
        &[
            path_str(&dirs.mnt),
            &BEFORE.to_string(),
            &AFTER.to_string(),
            &LINE_BYTES.to_string(),
        ],
    );
    assert_eq!(writer.read_line(LINE_TIMEOUT), "rotate");
    let app = dirs.mnt.join("app.log");
    let plain = dirs.mnt.join("plain.log");
    run_logrotate(
        &dirs,
        &format!(
            "{} {} {{\n    copytruncate\n    rotate 3\n    nocompress\n}}\n",
            app.display(),
            plain.display()
        ),
    );
    writer.send_line("go");
    assert_eq!(writer.read_line(LINE_TIMEOUT), "done");
    let (status, rest) = writer.finish(LINE_TIMEOUT);
    assert!(status.success(), "writer: {status}");
    assert!(rest.is_empty(), "writer printed more: {rest:?}");

    let names = ["app.log", "app.log.1", "plain.log", "plain.log.1"];
    assert_eq!(common::list_dir(&dirs.mnt), names);
    let read = |name: &str| fs::read(dirs.mnt.join(name)).expect("read through the mount");

    assert!(
        read("app.log.1") == lines("app", 0..BEFORE).into_bytes(),
        "app.log.1"
    );
    assert!(
        read("app.log") == lines("app", BEFORE..BEFORE + AFTER).into_bytes(),
        "app.log"
    );
    assert!(
        read("plain.log.1") == lines("plain", 0..BEFORE).into_bytes(),
        "plain.log.1"
    );

    // The plain writer keeps its offset, so the truncated file gets a hole of zeros.
    let live = read("plain.log");
    let hole = BEFORE * LINE_BYTES;
    assert_eq!(live.len(), (BEFORE + AFTER) * LINE_BYTES, "plain.log size");
    let nonzero = live[..hole].iter().filter(|b| **b != 0).count();
    assert_eq!(nonzero, 0, "non-zero bytes in the hole of plain.log");
    assert!(
        live[hole..] == *lines("plain", BEFORE..BEFORE + AFTER).as_bytes(),
        "plain.log after the hole"
    );

    assert_mirrors_match(&mount);
}

/// Writes lines to `path` without pause, reopens it once after SIGUSR1, writes `after` more
/// lines and prints `reopened_at N total M`. Prints `writing` once the pid file is in place
/// and lines are flowing.
const CREATE_WRITER: &str = r#"
import os, signal, sys
path, pid_file, after, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reopen = False
def on_usr1(signum, frame):
    global reopen
    reopen = True
signal.signal(signal.SIGUSR1, on_usr1)
with open(pid_file + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pid_file + ".tmp", pid_file)
def open_log():
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
fd = open_log()
reopened_at = None
i = 0
while reopened_at is None or i < reopened_at + after:
    if reopen and reopened_at is None:
        os.close(fd)
        fd = open_log()
        reopened_at = i
    head = "app line %06d " % i
    data = (head + "-" * (width - 1 - len(head)) + "\n").encode()
    assert os.write(fd, data) == len(data)
    i += 1
    if i == 200:
        print("writing")
    if i >= 500000 and reopened_at is None:
        print("no SIGUSR1 after %d lines" % i)
        sys.exit(3)
os.close(fd)
print("reopened_at %d total %d" % (reopened_at, i))
"#;

#[test]
fn create_sync() {
    create(Mode::Sync);
}

#[test]
fn create_async() {
    create(Mode::Async);
}

fn create(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    const AFTER: usize = 300;
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    let app = dirs.mnt.join("app.log");
    let pid_file = dirs.root.join("writer.pid");

    let writer = Helper::python(
        CREATE_WRITER,
        &[
            path_str(&app),
            path_str(&pid_file),
            &AFTER.to_string(),
            &LINE_BYTES.to_string(),
        ],
    );
    assert_eq!(writer.read_line(LINE_TIMEOUT), "writing");
    run_logrotate(
        &dirs,
        &format!(
            "{} {{\n    create 0640\n    rotate 3\n    nocompress\n    postrotate\n        \
             kill -USR1 $(cat {})\n    endscript\n}}\n",
            app.display(),
            pid_file.display()
        ),
    );
    let summary = writer.read_line(LINE_TIMEOUT);
    let (status, rest) = writer.finish(LINE_TIMEOUT);
    assert!(status.success(), "writer: {status}, output {summary:?}");
    assert!(rest.is_empty(), "writer printed more: {rest:?}");
    let (reopened_at, total) = parse_summary(&summary);
    assert!(reopened_at >= 200, "reopened before rotation: {summary}");
    assert_eq!(total, reopened_at + AFTER);

    assert_eq!(common::list_dir(&dirs.mnt), ["app.log", "app.log.1"]);
    let rotated = fs::read(dirs.mnt.join("app.log.1")).expect("read app.log.1");
    assert_eq!(rotated.len(), reopened_at * LINE_BYTES, "app.log.1 size");
    assert!(
        rotated == lines("app", 0..reopened_at).into_bytes(),
        "app.log.1"
    );
    let live = fs::read(&app).expect("read app.log");
    assert_eq!(live.len(), AFTER * LINE_BYTES, "app.log size");
    assert!(
        live == lines("app", reopened_at..total).into_bytes(),
        "app.log"
    );
    assert_eq!(mode_bits(&app), 0o640, "mode of the file logrotate created");
    assert_eq!(mode_bits(&dirs.mnt.join("app.log.1")), 0o644);

    assert_mirrors_match(&mount);
}

fn parse_summary(summary: &str) -> (usize, usize) {
    let fields: Vec<&str> = summary.split(' ').collect();
    match fields.as_slice() {
        ["reopened_at", at, "total", total] => (
            at.parse().expect("reopened_at number"),
            total.parse().expect("total number"),
        ),
        _ => panic!("unexpected writer summary {summary:?}"),
    }
}

fn mode_bits(path: &Path) -> u32 {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("stat {path:?}: {e}"));
    meta.permissions().mode() & 0o7777
}
