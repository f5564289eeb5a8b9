//! Daemon life around unmount and verify: a remount right after `fusermount3 -u` while the
//! old daemon may still drain, a mount over the dead mount of a killed daemon, the privacy
//! of the state directory, and `verify --repair`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{
    EXIT_RUNTIME, Mode, Mount, STATE_DIR, TestDirs, append_lines, assert_mirrors_match,
    expected_lines, path_str,
};

#[test]
fn remount_right_after_unmount() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mut first = Mount::new(&dirs, Mode::Async);
    let log = dirs.mnt.join("app.log");
    append_lines(&log, 0, 20_000);
    // Unmount and mount again at once, while the first daemon may still be draining.
    first.clear_dead();
    let second = Mount::new(&dirs, Mode::Async);
    append_lines(&log, 20_000, 20_100);

    assert!(
        common::read_text(&log) == expected_lines(20_100),
        "app.log content"
    );
    assert_mirrors_match(&second);
}

#[test]
fn mount_cleans_dead_mount() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mut first = Mount::new(&dirs, Mode::Sync);
    let log = dirs.mnt.join("app.log");
    append_lines(&log, 0, 100);
    first.kill_daemon();
    // The kernel fails a request that was in flight when the connection ended with
    // ECONNABORTED, and later requests with ENOTCONN.
    let stat = fs::metadata(&dirs.mnt)
        .map(|_| ())
        .map_err(|e| e.raw_os_error());
    assert!(
        matches!(stat, Err(Some(libc::ENOTCONN | libc::ECONNABORTED))),
        "stat of the dead mount point: {stat:?}"
    );
    first.leave_dead();

    // The next mount finds the dead logmirror mount, unmounts it and serves again.
    let second = Mount::new(&dirs, Mode::Sync);
    append_lines(&log, 100, 200);
    assert!(
        common::read_text(&log) == expected_lines(200),
        "app.log content"
    );
    let listed = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let mounts = listed
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(path_str(&dirs.mnt)))
        .count();
    assert_eq!(mounts, 1, "mounts on {:?}:\n{listed}", dirs.mnt);
    assert_mirrors_match(&second);
}

#[test]
fn state_dir_is_private() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let _mount = Mount::new(&dirs, Mode::Async);
    let state = dirs.backing.join(STATE_DIR);
    let mode = fs::metadata(&state)
        .expect("stat state dir")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "mode of {state:?}");
    let socket = state.join("control.sock");
    let mode = fs::metadata(&socket)
        .expect("stat socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "mode of {socket:?}");
}

#[test]
fn verify_repair_resyncs_mirror() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Sync);
    let log = dirs.mnt.join("app.log");
    append_lines(&log, 0, 100);
    mount.sync(common::SYNC_TIMEOUT_SECS).assert_success("sync");

    let mirrored = dirs.mirrors[0].join("app.log");
    let mut bytes = fs::read(&mirrored).expect("read mirror copy");
    bytes[3] ^= 0x20;
    fs::write(&mirrored, &bytes).expect("damage mirror copy");

    let out = common::logmirror(&["verify", path_str(&dirs.mnt), "--repair"]);
    assert_eq!(out.code(), EXIT_RUNTIME, "verify --repair exit code: {out}");
    assert!(
        out.stdout.contains("app.log"),
        "verify names app.log: {out}"
    );
    assert!(
        out.stdout
            .contains("resync from the backing tree scheduled"),
        "{out}"
    );
    let status = mount.status();
    assert_eq!(
        status.mirrors[0].last_verify_differences(),
        Some(1),
        "{status:?}"
    );

    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("sync after repair");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after repair: {out}");
    assert_mirrors_match(&mount);
}
