//! Unmount without a `logmirror sync` first. After `fusermount3 -u` or SIGTERM the daemon
//! must send the mirror every record it lacks before exiting, and a foreground daemon (`-f`)
//! must then exit with code 0.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Mode, Mount, STATE_DIR, TestDirs, assert_same_tree, path_str, tree_sha256};

const BIG_CHUNKS: usize = 256;
const CHUNK_BYTES: usize = 16 * 1024;
const SMALL_LINES: usize = 1000;

fn chunk(i: usize) -> Vec<u8> {
    (0..CHUNK_BYTES)
        .map(|j| ((i * 31 + j * 7) % 251) as u8)
        .collect()
}

fn small_line(name: &str, i: usize) -> String {
    format!("{name} entry {i:05}\n")
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"))
}

/// Writes a 4 MiB file in 16 KiB chunks, appends lines to a small file, rotates it by rename
/// and starts a new one, all through the mount at `mnt`.
fn write_workload(mnt: &Path) {
    fs::create_dir(mnt.join("logs")).expect("mkdir logs through the mount");
    let mut big = open_append(&mnt.join("logs/big.log"));
    for i in 0..BIG_CHUNKS {
        big.write_all(&chunk(i))
            .expect("write big.log through the mount");
    }
    drop(big);

    let small = mnt.join("logs/small.log");
    let mut file = open_append(&small);
    for i in 0..SMALL_LINES {
        file.write_all(small_line("old", i).as_bytes())
            .expect("append small.log");
    }
    drop(file);
    fs::rename(&small, mnt.join("logs/small.log.1")).expect("rename small.log");
    let mut file = open_append(&small);
    for i in 0..10 {
        file.write_all(small_line("new", i).as_bytes())
            .expect("append new small.log");
    }
}

/// Asserts the exact workload content in `dir` (the backing directory after unmount).
fn assert_workload(dir: &Path) {
    assert_eq!(
        common::list_dir(&dir.join("logs")),
        ["big.log", "small.log", "small.log.1"]
    );
    let big = fs::read(dir.join("logs/big.log")).expect("read big.log");
    assert_eq!(big.len(), BIG_CHUNKS * CHUNK_BYTES, "big.log size");
    let expected: Vec<u8> = (0..BIG_CHUNKS).flat_map(chunk).collect();
    assert!(big == expected, "big.log content");
    let rotated: String = (0..SMALL_LINES).map(|i| small_line("old", i)).collect();
    assert_eq!(common::read_text(&dir.join("logs/small.log.1")), rotated);
    let live: String = (0..10).map(|i| small_line("new", i)).collect();
    assert_eq!(common::read_text(&dir.join("logs/small.log")), live);
}

fn assert_mirror_equals_backing(dirs: &TestDirs) {
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    let mirror = tree_sha256(&dirs.mirrors[0], &[]);
    assert_same_tree("backing", &backing, "mirror after unmount", &mirror);
}

#[test]
fn unmount_drain_sync() {
    unmount_drain(Mode::Sync);
}

#[test]
fn unmount_drain_async() {
    unmount_drain(Mode::Async);
}

fn unmount_drain(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    write_workload(&dirs.mnt);
    mount.unmount();

    assert!(!common::is_mounted(&dirs.mnt));
    assert_workload(&dirs.backing);
    assert_mirror_equals_backing(&dirs);
}

/// A `logmirror mount -f` child process. Dropping it unmounts the mount point if it is still
/// mounted and kills the process if it still runs.
struct ForegroundMount<'a> {
    child: Child,
    mnt: &'a Path,
}

impl Drop for ForegroundMount<'_> {
    fn drop(&mut self) {
        if common::is_mounted(self.mnt) {
            let out = common::fusermount(&["-u"], self.mnt);
            if !out.status.success() {
                common::fusermount(&["-u", "-z"], self.mnt);
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl ForegroundMount<'_> {
    /// Waits until the daemon exits and returns its status with its output.
    fn wait_exit(&mut self, output: &Path) -> (ExitStatus, String) {
        let status = common::wait_until(
            common::COMMAND_TIMEOUT,
            "foreground daemon to exit",
            || match self.child.try_wait().expect("poll logmirror mount -f") {
                Some(status) => Ok(status),
                None => Err("still running".to_string()),
            },
        );
        (status, fs::read_to_string(output).unwrap_or_default())
    }
}

/// Starts `logmirror mount -f` in async mode with its output in `output`, and waits until
/// the mount serves.
fn mount_foreground<'a>(dirs: &'a TestDirs, output: &Path) -> ForegroundMount<'a> {
    let log = File::create(output).expect("create output file");
    let mut args = vec!["mount", path_str(&dirs.backing), path_str(&dirs.mnt), "-f"];
    let options = dirs.options(Mode::Async);
    for option in &options {
        args.push("-o");
        args.push(option);
    }
    let child = Command::new(common::bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone output file"))
        .stderr(log)
        .spawn()
        .expect("spawn logmirror mount -f");
    let mut foreground = ForegroundMount {
        child,
        mnt: &dirs.mnt,
    };
    common::wait_until(
        Duration::from_secs(60),
        "foreground mount to appear",
        || {
            if common::is_mounted(&dirs.mnt) {
                return Ok(());
            }
            if let Some(status) = foreground
                .child
                .try_wait()
                .expect("poll logmirror mount -f")
            {
                let text = fs::read_to_string(output).unwrap_or_default();
                panic!("logmirror mount -f exited with {status} before mounting: {text}");
            }
            Err("not in /proc/self/mountinfo".to_string())
        },
    );
    foreground
}

#[test]
fn foreground_unmount_exit_code() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let output = dirs.root.join("foreground.out");
    let mut foreground = mount_foreground(&dirs, &output);

    write_workload(&dirs.mnt);
    common::fusermount(&["-u"], &dirs.mnt).assert_success("fusermount3 -u");
    let (status, text) = foreground.wait_exit(&output);
    assert_eq!(status.code(), Some(0), "foreground daemon exit: {text}");

    assert_workload(&dirs.backing);
    assert_mirror_equals_backing(&dirs);
}

#[test]
fn sigterm_drains_then_exits() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let output = dirs.root.join("foreground.out");
    let mut foreground = mount_foreground(&dirs, &output);

    write_workload(&dirs.mnt);
    let pid = libc::pid_t::try_from(foreground.child.id()).expect("pid fits pid_t");
    // SAFETY: kill has no memory preconditions; the pid is this test's own child.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0, "kill -TERM {pid}");
    let (status, text) = foreground.wait_exit(&output);
    assert_eq!(status.code(), Some(0), "daemon exit after SIGTERM: {text}");

    assert!(
        !common::is_mounted(&dirs.mnt),
        "{:?} still mounted after SIGTERM",
        dirs.mnt
    );
    assert_workload(&dirs.backing);
    assert_mirror_equals_backing(&dirs);
}
