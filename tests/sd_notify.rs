//! The daemon's messages to systemd: a foreground daemon started with `$NOTIFY_SOCKET` sends
//! `READY=1` once the mount serves, `WATCHDOG=1` at half of `$WATCHDOG_USEC`, and
//! `STOPPING=1` after unmount. The test binds the datagram socket itself in place of systemd.

mod common;

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    COMMAND_TIMEOUT, TestDirs, bin, can_mount, fusermount, is_mounted, path_str, sha256_hex,
};

/// A foreground daemon. Dropping it unmounts its mount point if still mounted, then waits for
/// the process, killing it after 30 s.
struct ForegroundDaemon {
    child: Child,
    mnt: PathBuf,
}

impl ForegroundDaemon {
    fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ForegroundDaemon {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) && !fusermount(&["-u"], &self.mnt).status.success() {
            let _ = fusermount(&["-u", "-z"], &self.mnt);
        }
        if self.wait(Duration::from_secs(30)).is_none() {
            eprintln!("daemon pid {} still running; killing it", self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Receives one datagram as text, or panics after `timeout`.
fn receive(socket: &UnixDatagram, timeout: Duration) -> String {
    socket
        .set_read_timeout(Some(timeout))
        .expect("set socket timeout");
    let mut buffer = [0u8; 4096];
    let length = socket
        .recv(&mut buffer)
        .unwrap_or_else(|e| panic!("no message from the daemon within {timeout:?}: {e}"));
    String::from_utf8(buffer[..length].to_vec()).expect("messages are UTF-8")
}

/// Receives datagrams, skipping `WATCHDOG=1`, until one arrives that is not a watchdog ping.
fn receive_skipping_watchdog(socket: &UnixDatagram, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = receive(socket, left.max(Duration::from_millis(1)));
        if message != "WATCHDOG=1" {
            return message;
        }
    }
}

fn spawn_daemon(dirs: &TestDirs, socket_path: &Path, watchdog_usec: &str) -> ForegroundDaemon {
    let options = format!(
        "mirror=dir:{},mode=sync,log_file={}",
        path_str(&dirs.mirrors[0]),
        path_str(&dirs.root.join("daemon.log"))
    );
    let child = Command::new(bin())
        .args(["mount", path_str(&dirs.backing), path_str(&dirs.mnt), "-f"])
        .args(["-o", &options])
        .env("NOTIFY_SOCKET", socket_path)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn logmirror mount -f");
    ForegroundDaemon {
        child,
        mnt: dirs.mnt.clone(),
    }
}

#[test]
fn ready_watchdog_and_stopping() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let socket_path = dirs.root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notification socket");
    // 200 ms, so the daemon pings every 100 ms.
    let mut daemon = spawn_daemon(&dirs, &socket_path, "200000");

    let ready = receive(&socket, COMMAND_TIMEOUT);
    assert_eq!(ready, "READY=1\nSTATUS=serving");
    assert!(is_mounted(&dirs.mnt), "READY=1 arrived before the mount");
    let data = b"after READY=1\n";
    fs::write(dirs.mnt.join("file"), data).expect("write through the mount after READY=1");
    assert_eq!(
        common::file_sha256(&dirs.backing.join("file")),
        sha256_hex(data)
    );

    for _ in 0..3 {
        assert_eq!(receive(&socket, Duration::from_secs(10)), "WATCHDOG=1");
    }

    fusermount(&["-u"], &dirs.mnt).assert_success("fusermount3 -u");
    let stopping = receive_skipping_watchdog(&socket, COMMAND_TIMEOUT);
    assert_eq!(stopping, "STOPPING=1\nSTATUS=unmounted; draining mirrors");
    assert!(!is_mounted(&dirs.mnt), "STOPPING=1 arrived while mounted");

    let status = daemon
        .wait(COMMAND_TIMEOUT)
        .expect("daemon exits after unmount");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        common::file_sha256(&dirs.mirrors[0].join("file")),
        sha256_hex(data)
    );
}

#[test]
fn no_watchdog_without_watchdog_usec() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let socket_path = dirs.root.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notification socket");
    let mut daemon = spawn_daemon(&dirs, &socket_path, "");

    assert_eq!(receive(&socket, COMMAND_TIMEOUT), "READY=1\nSTATUS=serving");
    fusermount(&["-u"], &dirs.mnt).assert_success("fusermount3 -u");
    // The next message after READY=1 is STOPPING=1: no WATCHDOG=1 came between.
    assert_eq!(
        receive(&socket, COMMAND_TIMEOUT),
        "STOPPING=1\nSTATUS=unmounted; draining mirrors"
    );
    let status = daemon
        .wait(COMMAND_TIMEOUT)
        .expect("daemon exits after unmount");
    assert_eq!(status.code(), Some(0));
}
