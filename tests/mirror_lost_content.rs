//! A directory mirror loses content behind the daemon's back while programs keep writing:
//! a subdirectory is deleted by hand, or a file is replaced by a directory. The mirror must
//! be resynced from the backing tree instead of retrying the failing record forever.

mod common;

use std::fs;
use std::thread;
use std::time::Duration;

use common::{
    EXIT_RUNTIME, Mode, Mount, TestDirs, append_lines, assert_mirrors_match, expected_lines,
    path_str, wait_until,
};

/// Lines the writer appends in total.
const LINES: usize = 4000;

#[test]
fn deleted_subdirectory_resyncs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    fs::create_dir(dirs.mnt.join("sub")).expect("mkdir sub");
    let log = dirs.mnt.join("sub/app.log");
    append_lines(&log, 0, 100);
    let mirror_sub = dirs.mirrors[0].join("sub");
    wait_until(
        Duration::from_secs(30),
        "sub/app.log on the mirror",
        || match fs::metadata(mirror_sub.join("app.log")) {
            Ok(meta) if meta.len() > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let writer = {
        let log = log.clone();
        thread::spawn(move || append_lines(&log, 100, LINES))
    };
    fs::remove_dir_all(&mirror_sub).expect("delete sub on the mirror");
    writer.join().expect("writer thread");
    // Lines that certainly follow the deletion, however fast the writer was.
    append_lines(&log, LINES, LINES + 10);
    append_lines(&dirs.mnt.join("top.log"), 0, 10);

    let out = mount.sync(60);
    out.assert_success("logmirror sync after the deletion");
    let tree = assert_mirrors_match(&mount);
    assert_eq!(
        tree.entries["sub/app.log"],
        common::sha256_hex(expected_lines(LINES + 10).as_bytes())
    );
    let daemon_log = common::read_text(&mount.log_file);
    assert!(
        daemon_log.contains("sub/app.log is missing on the mirror after 3 attempts"),
        "no warning naming sub/app.log in the daemon log:\n{}",
        mount.log_tail(4096)
    );
}

#[test]
fn verify_repair_unsticks_mirror() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    fs::create_dir(dirs.mnt.join("sub")).expect("mkdir sub");
    let log = dirs.mnt.join("sub/app.log");
    append_lines(&log, 0, 10);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");

    // A directory in place of the file makes every later write fail with EISDIR, which no
    // retry and no resync of the mirror's own accord fixes.
    let mirror_log = dirs.mirrors[0].join("sub/app.log");
    fs::remove_file(&mirror_log).expect("remove the file on the mirror");
    fs::create_dir(&mirror_log).expect("create a directory in its place");
    append_lines(&log, 10, 20);
    let out = mount.sync(2);
    assert_eq!(out.code(), EXIT_RUNTIME, "sync with a stuck mirror: {out}");

    let out = common::logmirror(&["verify", path_str(&dirs.mnt), "--repair", "--timeout", "2"]);
    assert_eq!(out.code(), EXIT_RUNTIME, "verify --repair: {out}");
    assert!(
        out.stdout
            .contains("resync from the backing tree scheduled"),
        "verify --repair did not schedule a resync: {out}"
    );
    let tree = assert_mirrors_match(&mount);
    assert_eq!(
        tree.entries["sub/app.log"],
        common::sha256_hex(expected_lines(20).as_bytes())
    );
}
