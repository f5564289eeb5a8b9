//! `when_full=block` with the mirror down: once the async backlog is full, more writers wait
//! than the mount has FUSE threads. Lookups, listings and reads of other files must still get
//! replies, and once the mirror is back every writer finishes with its exact content.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{Mode, Mount, ReadOnlyBind, TestDirs, assert_mirrors_match, wait_until};

/// Writers, twice the `threads=` of the mount.
const WRITERS: usize = 4;
/// Bytes each writer writes: twice `max_backlog`, so no writer can finish while the mirror
/// is down.
const WRITER_BYTES: usize = 2 << 20;
const CHUNK_BYTES: usize = 64 << 10;

fn content(writer: usize) -> Vec<u8> {
    (0..WRITER_BYTES)
        .map(|i| (i % 251) as u8 ^ (writer as u8 * 37))
        .collect()
}

/// Runs `probe` on a thread of its own and returns its result, or panics naming `what`
/// when it takes longer than `timeout` (the thread is then left blocked on the mount).
fn within<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    probe: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(probe());
    });
    receiver
        .recv_timeout(timeout)
        .unwrap_or_else(|e| panic!("{what} did not complete within {timeout:?}: {e}"))
}

#[test]
fn blocked_writers_leave_mount_usable() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    // Created before the mount, so the kernel has no cached entry and must ask the daemon.
    fs::write(dirs.backing.join("other.txt"), b"other file\n").expect("write other.txt");
    let mut options = dirs.options(Mode::Async);
    options.extend(["max_backlog=1M", "when_full=block", "threads=2"].map(String::from));
    let mount = Mount::with_options(&dirs, &options);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");

    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);
    let writers: Vec<_> = (0..WRITERS)
        .map(|n| {
            let path = dirs.mnt.join(format!("w{n}.bin"));
            thread::spawn(move || {
                let mut file = fs::File::create(&path).expect("create through the mount");
                for chunk in content(n).chunks(CHUNK_BYTES) {
                    file.write_all(chunk).expect("write through the mount");
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(60), "the backlog to fill", || {
        let status = common::status(&dirs.mnt)?;
        let lag = status.mirrors[0].lag_bytes;
        let created = (0..WRITERS)
            .filter(|n| dirs.backing.join(format!("w{n}.bin")).exists())
            .count();
        match lag >= 1 << 20 && created == WRITERS {
            true => Ok(()),
            false => Err(format!("lag_bytes {lag}, files created {created}")),
        }
    });
    // Every writer now waits in a write: the backlog stays full while the mirror is down.
    assert!(writers.iter().all(|w| !w.is_finished()));

    let timeout = Duration::from_secs(20);
    let other = dirs.mnt.join("other.txt");
    let size = within(timeout, "stat of other.txt", {
        let other = other.clone();
        move || fs::metadata(&other).map(|m| m.len())
    });
    assert_eq!(size.expect("stat other.txt"), 11);
    let text = within(timeout, "read of other.txt", move || {
        let mut text = String::new();
        fs::File::open(&other).and_then(|mut f| f.read_to_string(&mut text))?;
        Ok::<_, std::io::Error>(text)
    });
    assert_eq!(text.expect("read other.txt"), "other file\n");
    let mnt = dirs.mnt.clone();
    let names = within(timeout, "listing of the mount", move || {
        common::list_dir(&mnt)
    });
    assert_eq!(names, ["other.txt", "w0.bin", "w1.bin", "w2.bin", "w3.bin"]);
    assert!(writers.iter().all(|w| !w.is_finished()));

    bind.remove();
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let tree = assert_mirrors_match(&mount);
    for n in 0..WRITERS {
        assert_eq!(
            tree.entries[&format!("w{n}.bin")],
            common::sha256_hex(&content(n)),
            "w{n}.bin"
        );
    }
}
