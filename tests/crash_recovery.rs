//! `kill -9` of the daemon while a program writes: every write that returned success before
//! the kill must be in the backing files after a remount, exactly once and in order, and in
//! the mirror after `logmirror sync`. In sync mode the mirror must hold it even before the
//! remount, because a sync-mode write returns only after the mirror confirmed it.

mod common;

use std::time::Duration;

use common::crash_writer::{self, assert_acked_records};
use common::{Mode, Mount, TestDirs, assert_mirrors_match};

const ACKS_BEFORE_KILL: u64 = 1000;

#[test]
fn crash_recovery_sync() {
    crash_recovery(Mode::Sync);
}

#[test]
fn crash_recovery_async() {
    crash_recovery(Mode::Async);
}

fn crash_recovery(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mut first = Mount::new(&dirs, mode);
    let acked_path = dirs.root.join("acked.txt");

    let writer = crash_writer::start(&dirs.mnt, &acked_path);
    crash_writer::wait_for_acks(&acked_path, ACKS_BEFORE_KILL, Duration::from_secs(60));
    first.kill_daemon();

    let (stop, acked) = crash_writer::finish(writer, &acked_path);
    assert!(acked >= ACKS_BEFORE_KILL);
    let fields: Vec<&str> = stop.split(' ').collect();
    assert_eq!(fields.len(), 3, "writer output {stop:?}");
    assert_eq!(fields[0], "stopped", "writer output {stop:?}");
    assert_eq!(
        fields[1],
        acked.to_string(),
        "first failed record follows the last ack"
    );
    // A write in flight when the connection dies ends with ECONNABORTED, later ones with
    // ENOTCONN.
    let errors = ["ENOTCONN", "ECONNABORTED", "EIO"];
    assert!(
        errors.contains(&fields[2]),
        "writer error {:?}, expected one of {errors:?}",
        fields[2]
    );

    if mode == Mode::Sync {
        assert_acked_records(&dirs.mirrors[0], acked, "mirror before the remount");
    }

    let options = first.options.clone();
    first.clear_dead();
    drop(first);
    let second = Mount::with_options(&dirs, &options);

    assert_acked_records(&dirs.backing, acked, "backing after the remount");
    assert_mirrors_match(&second);
    assert_acked_records(&dirs.mirrors[0], acked, "mirror after sync");
}
