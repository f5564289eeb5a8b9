//! Mounting the way operators do: `mount -t fuse.logmirror` through the system's
//! `mount.fuse3`, an fstab line used with `mount -a -T FILE`, and the plain type `logmirror`
//! through the `scripts/mount.logmirror` helper. Each test writes through the mount and checks
//! that the bytes reach the backing directory and the mirror.
//!
//! mount(8) runs its helpers without PATH, so `mount.fuse3` finds `logmirror` only in the
//! shell's default PATH (/usr/local/bin, /usr/bin, ...) and mount(8) finds `mount.logmirror`
//! only in /sbin. The tests link the built files there for their duration, only where no file
//! of that name exists, and remove the links in a guard.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::{
    COMMAND_TIMEOUT, CmdOutput, TestDirs, bin, can_mount, file_sha256, fusermount,
    is_process_alive, path_str, run, sha256_hex, status, wait_until,
};

/// Serializes the tests of this file: they share the links in /usr/local/bin and /sbin.
static SYSTEM_PATHS: Mutex<()> = Mutex::new(());

/// Options that mount(8), fstab and systemd add or that operators write; every one must be
/// accepted by the daemon.
const OPERATOR_OPTIONS: &str = "rw,nosuid,nodev,noexec,relatime,noauto,user,defaults,_netdev,\
                                nofail,x-systemd.requires=/,x-systemd.automount";

/// A symlink made for one test where no file existed. Dropping it removes the link if it still
/// points where it was made to point.
struct InstalledLink {
    path: PathBuf,
    target: PathBuf,
}

impl InstalledLink {
    /// Links `path` to `target`. Returns `None`, printing why, when `path` is already taken.
    fn new(path: &Path, target: &Path) -> Option<InstalledLink> {
        if let Ok(meta) = fs::symlink_metadata(path) {
            eprintln!(
                "SKIP: {path:?} already exists ({:?}); this test does not replace it",
                meta.file_type()
            );
            return None;
        }
        symlink(target, path).unwrap_or_else(|e| panic!("link {path:?} to {target:?}: {e}"));
        Some(InstalledLink {
            path: path.to_path_buf(),
            target: target.to_path_buf(),
        })
    }
}

impl Drop for InstalledLink {
    fn drop(&mut self) {
        if fs::read_link(&self.path).is_ok_and(|t| t == self.target)
            && let Err(e) = fs::remove_file(&self.path)
        {
            eprintln!("cannot remove {:?}: {e}", self.path);
        }
    }
}

/// A mount made by mount(8). Dropping it unmounts with `fusermount3 -u` (lazily if that
/// fails) and waits until the daemon has exited.
struct SystemMount {
    mnt: PathBuf,
    pid: Option<u32>,
}

impl SystemMount {
    /// Records a mount that `out` reports as made, asserting exit 0 and the mountinfo entry.
    fn made(out: CmdOutput, mnt: &Path, what: &str) -> SystemMount {
        let mut mount = SystemMount {
            mnt: mnt.to_path_buf(),
            pid: None,
        };
        out.assert_success(what);
        let entry = mount_entry(mnt);
        assert!(
            entry.is_some(),
            "{what} exited 0 but {mnt:?} is not mounted"
        );
        mount.pid = Some(status(mnt).unwrap_or_else(|e| panic!("{e}")).pid);
        mount
    }

    /// Unmounts with `fusermount3 -u`, asserting success, and waits for the daemon to exit.
    fn unmount(mut self) {
        fusermount(&["-u"], &self.mnt).assert_success("fusermount3 -u");
        let pid = self.pid.take().expect("pid recorded at mount");
        wait_until(
            COMMAND_TIMEOUT,
            "daemon to exit after unmount",
            || match is_process_alive(pid) {
                true => Err(format!("pid {pid} still alive")),
                false => Ok(()),
            },
        );
    }
}

impl Drop for SystemMount {
    fn drop(&mut self) {
        let Some(pid) = self.pid else { return };
        if mount_entry(&self.mnt).is_some() && !fusermount(&["-u"], &self.mnt).status.success() {
            let _ = fusermount(&["-u", "-z"], &self.mnt);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while is_process_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Returns the filesystem type and the per-mount options of the mount at `path`, from
/// /proc/self/mountinfo.
fn mount_entry(path: &Path) -> Option<(String, Vec<String>)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4) != Some(&path_str(path)) {
            return None;
        }
        let dash = fields.iter().position(|f| *f == "-")?;
        let options = fields[5].split(',').map(str::to_string).collect();
        Some((fields[dash + 1].to_string(), options))
    })
}

/// Runs `mount ARGS...` with `env` added.
fn mount_command(args: &[&str], env: &[(&str, &str)]) -> CmdOutput {
    let mut cmd = Command::new("mount");
    cmd.args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run(&mut cmd, COMMAND_TIMEOUT)
}

/// Returns the `-o` string for a sync mount of `dirs` with one mirror, a daemon log in the test
/// directory, and every option of [`OPERATOR_OPTIONS`].
fn options(dirs: &TestDirs) -> String {
    format!(
        "mirror=dir:{},mode=sync,log_file={},{OPERATOR_OPTIONS}",
        path_str(&dirs.mirrors[0]),
        path_str(&dirs.root.join("daemon.log"))
    )
}

/// Writes a file through the mount, syncs, and asserts that backing directory and mirror hold
/// the same bytes.
fn assert_write_reaches_mirror(dirs: &TestDirs) {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dirs.mnt.join("app.log"), &data).expect("write through the mount");
    let sync = common::logmirror(&["sync", path_str(&dirs.mnt), "--timeout", "60"]);
    sync.assert_success("logmirror sync");

    let expected = sha256_hex(&data);
    assert_eq!(file_sha256(&dirs.mnt.join("app.log")), expected, "mount");
    assert_eq!(
        file_sha256(&dirs.backing.join("app.log")),
        expected,
        "backing"
    );
    assert_eq!(
        file_sha256(&dirs.mirrors[0].join("app.log")),
        expected,
        "mirror"
    );
}

/// Asserts the mount is a `fuse.logmirror` mount carrying the flags of [`OPERATOR_OPTIONS`]
/// that the kernel applies.
fn assert_kernel_mount(mnt: &Path) {
    let (fstype, flags) = mount_entry(mnt).expect("mounted");
    assert_eq!(fstype, "fuse.logmirror");
    for flag in ["rw", "nosuid", "nodev", "noexec"] {
        assert!(flags.iter().any(|f| f == flag), "{flag} missing: {flags:?}");
    }
}

/// Links /usr/local/bin/logmirror to the built binary, where `mount.fuse3` looks for it.
fn install_binary() -> Option<InstalledLink> {
    InstalledLink::new(Path::new("/usr/local/bin/logmirror"), bin())
}

#[test]
fn mount_type_fuse_logmirror() {
    if !can_mount() {
        return;
    }
    let _lock = SYSTEM_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_link) = install_binary() else {
        return;
    };
    let dirs = TestDirs::new(1);
    let options = options(&dirs);
    let args = [
        "-t",
        "fuse.logmirror",
        path_str(&dirs.backing),
        path_str(&dirs.mnt),
        "-o",
        &options,
    ];
    let mount = SystemMount::made(
        mount_command(&args, &[]),
        &dirs.mnt,
        "mount -t fuse.logmirror",
    );

    assert_kernel_mount(&dirs.mnt);
    assert_write_reaches_mirror(&dirs);
    mount.unmount();
}

#[test]
fn fstab_line_with_mount_a() {
    if !can_mount() {
        return;
    }
    let _lock = SYSTEM_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_link) = install_binary() else {
        return;
    };
    let dirs = TestDirs::new(1);
    let fstab = dirs.root.join("fstab");
    // mount -a skips noauto lines, so the fstab line leaves that one out.
    let options = options(&dirs).replace(",noauto", "") + ",x-logmirror-test";
    let line = format!(
        "# logmirror test\n{} {} fuse.logmirror {options} 0 0\n",
        path_str(&dirs.backing),
        path_str(&dirs.mnt)
    );
    fs::write(&fstab, line).expect("write fstab");

    let args = ["-a", "-T", path_str(&fstab), "-O", "x-logmirror-test"];
    let mount = SystemMount::made(mount_command(&args, &[]), &dirs.mnt, "mount -a -T FSTAB");

    assert_kernel_mount(&dirs.mnt);
    assert_write_reaches_mirror(&dirs);
    // A second `mount -a` leaves the mounted line alone and succeeds.
    mount_command(&args, &[]).assert_success("second mount -a -T FSTAB");
    mount.unmount();
}

#[test]
fn mount_type_logmirror_helper() {
    if !can_mount() {
        return;
    }
    let _lock = SYSTEM_PATHS.lock().unwrap_or_else(|e| e.into_inner());
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mount.logmirror");
    let Some(_link) = InstalledLink::new(Path::new("/sbin/mount.logmirror"), &helper) else {
        return;
    };
    let dirs = TestDirs::new(1);
    let options = options(&dirs);
    let args = [
        "-t",
        "logmirror",
        path_str(&dirs.backing),
        path_str(&dirs.mnt),
        "-o",
        &options,
    ];
    let env = [("LOGMIRROR_BIN", path_str(bin()))];
    let mount = SystemMount::made(mount_command(&args, &env), &dirs.mnt, "mount -t logmirror");

    assert_kernel_mount(&dirs.mnt);
    assert_write_reaches_mirror(&dirs);
    mount.unmount();
}

#[test]
fn helper_fake_mount_mounts_nothing() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let helper = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mount.logmirror");
    let options = options(&dirs);
    let out = run(
        Command::new(&helper)
            .args([path_str(&dirs.backing), path_str(&dirs.mnt), "-f", "-o"])
            .arg(&options)
            .env("LOGMIRROR_BIN", bin()),
        COMMAND_TIMEOUT,
    );
    assert_eq!(out.code(), 0, "{out}");
    assert_eq!(mount_entry(&dirs.mnt), None);
}
