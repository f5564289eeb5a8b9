//! Durability calls through the mount: fsync, fdatasync, O_SYNC and O_DSYNC writes,
//! sync_file_range, and a file that was fsynced but is still open when `logmirror sync`
//! runs. In sync mode each call's data must already be on the mirror when it returns.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use common::semantics::{Case, errno_of, with_case};
use common::{Helper, Mode, path_str};

both_modes!(durability_calls, fsynced_file_left_open);

/// Each way a program asks for durability, applied after writing its own file.
const CALLS: [&str; 5] = ["fsync", "fdatasync", "o_sync", "o_dsync", "sync_file_range"];

/// Writes `name.log` with the durability call `name` and returns the call's errno.
fn write_durably(root: &Path, name: &str) -> i32 {
    let path = root.join(format!("{name}.log"));
    let extra = match name {
        "o_sync" => libc::O_SYNC,
        "o_dsync" => libc::O_DSYNC,
        _ => 0,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(extra)
        .open(&path)
        .expect("create");
    file.write_all(content(name).as_bytes()).expect("write");
    let result = match name {
        "fsync" => file.sync_all(),
        "fdatasync" => file.sync_data(),
        "sync_file_range" => {
            let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: sync_file_range has no memory-safety preconditions.
            let ret = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
            if ret == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        _ => Ok(()),
    };
    errno_of(&result)
}

fn content(name: &str) -> String {
    (0..200)
        .map(|i| format!("{name} record {i:04}\n"))
        .collect()
}

fn durability_calls(mode: Mode) {
    with_case(mode, |case| {
        for name in CALLS {
            let (mounted, plain) = case.on_both(|root| write_durably(root, name));
            assert_eq!(plain, 0, "{name} on the plain directory");
            assert_eq!(mounted, 0, "{name} through the mount");
            let expected = content(name);
            let file = format!("{name}.log");
            assert_eq!(common::read_text(&case.in_backing(&file)), expected);
            if case.mode == Mode::Sync {
                // A sync-mode reply waits for the mirror, so no `logmirror sync` is needed.
                assert_eq!(common::read_text(&case.in_mirror(&file)), expected);
            }
        }
    });
}

/// Writes lines, fsyncs, prints `synced` and keeps the file open until stdin closes.
const HOLD_OPEN: &str = r#"
import os, sys
path, count = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(count):
    os.write(fd, b"held line %05d\n" % i)
os.fsync(fd)
print("synced")
sys.stdin.readline()
os.close(fd)
"#;

fn fsynced_file_left_open(mode: Mode) {
    const LINES: usize = 2000;
    with_case(mode, |case: &mut Case| {
        let path = case.in_mount("held.log");
        let holder = Helper::python(HOLD_OPEN, &[path_str(&path), &LINES.to_string()]);
        assert_eq!(holder.read_line(Duration::from_secs(60)), "synced");
        let expected: String = (0..LINES).map(|i| format!("held line {i:05}\n")).collect();

        case.sync();
        assert_eq!(common::read_text(&case.in_mirror("held.log")), expected);
        let out = case.mount().verify();
        assert_eq!(out.code(), 0, "verify while the file is open: {out}");

        let (status, rest) = holder.finish(Duration::from_secs(60));
        assert!(status.success(), "holder: {status}");
        assert!(rest.is_empty(), "holder printed more: {rest:?}");
        assert_eq!(fs::read_to_string(&path).expect("read"), expected);
    });
}
