//! SIGHUP makes the daemon read its config file again: `drain_timeout` changes live and is
//! logged at info, keys that need a remount are named at warn, and an invalid file keeps the
//! configuration in effect.

mod common;

use std::fs;
use std::time::Duration;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{TestDirs, can_mount, fusermount, is_mounted, is_process_alive, path_str, wait_until};

fn write_config(path: &std::path::Path, mirror: &str, body: &str) {
    fs::write(path, format!("mirror = \"dir:{mirror}\"\n{body}")).expect("write config");
}

fn send_sighup(pid: u32) {
    // SAFETY: kill with a pid this test's mount reported for its own daemon.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(sent, 0, "kill -HUP {pid}");
}

/// A mount made with `--config`. Dropping it unmounts and waits for the daemon to exit.
struct ConfigMount {
    mnt: PathBuf,
    log_file: PathBuf,
    pid: u32,
}

impl ConfigMount {
    fn new(dirs: &TestDirs, config: &Path) -> ConfigMount {
        let log_file = dirs.root.join("daemon.log");
        let log_option = format!("log_file={}", log_file.display());
        let out = common::logmirror(&[
            "mount",
            path_str(&dirs.backing),
            path_str(&dirs.mnt),
            "--config",
            path_str(config),
            "-o",
            &log_option,
        ]);
        out.assert_success("logmirror mount --config");
        ConfigMount {
            mnt: dirs.mnt.clone(),
            log_file,
            pid: common::daemon_pid(&dirs.mnt),
        }
    }

    /// Waits until the daemon log contains `line`.
    fn wait_for_log(&self, line: &str) {
        wait_until(Duration::from_secs(30), line, || {
            let log = fs::read_to_string(&self.log_file).unwrap_or_default();
            match log.contains(line) {
                true => Ok(()),
                false => Err(log),
            }
        });
    }
}

impl Drop for ConfigMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) && !fusermount(&["-u"], &self.mnt).status.success() {
            let _ = fusermount(&["-u", "-z"], &self.mnt);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while is_process_alive(self.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn sighup_applies_and_reports_changes() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let config = dirs.root.join("logmirror.toml");
    let mirror = path_str(&dirs.mirrors[0]).to_string();
    write_config(
        &config,
        &mirror,
        "mode = \"sync\"\ndrain_timeout = \"30s\"\n",
    );
    let mount = ConfigMount::new(&dirs, &config);

    send_sighup(mount.pid);
    mount.wait_for_log("SIGHUP: configuration reloaded, nothing changed");

    write_config(
        &config,
        &mirror,
        "mode = \"async\"\ndrain_timeout = \"5s\"\n",
    );
    send_sighup(mount.pid);
    mount.wait_for_log("SIGHUP: drain_timeout changed from 30s to 5s");
    mount.wait_for_log(
        "SIGHUP: mode changed but cannot change while mounted; \
         the old values stay until the next mount",
    );
    let status = common::status(&dirs.mnt).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.mode, "sync");

    fs::write(&config, "mode = [\n").expect("write invalid config");
    send_sighup(mount.pid);
    mount.wait_for_log("SIGHUP: configuration not reloaded, keeping the current one");

    fusermount(&["-u"], &dirs.mnt).assert_success("fusermount3 -u");
    mount.wait_for_log("draining mirrors (drain_timeout=5s)");
}
