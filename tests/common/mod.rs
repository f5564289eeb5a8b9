//! Harness for the integration tests: mounts the built `logmirror` binary over a temporary
//! backing directory, drives it through its command line, and compares trees by sha256.
//!
//! Sits outside the data path: it only writes through the mount point, reads the backing
//! directory and the mirrors, and unmounts only the mount points it created itself.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub mod crash_writer;
pub mod journal_objects;
pub mod state_dir;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub mod semantics;

/// Exit code the CLI returns for a usage or configuration error (unknown key, bad value,
/// an option combination that cannot work, a backing directory or mount point that is
/// missing or not a directory).
pub const EXIT_USAGE: i32 = 2;

/// Exit code the CLI returns when the condition it checks fails (a sync that timed out,
/// differences found by verify) or a mount fails at run time.
pub const EXIT_RUNTIME: i32 = 1;

/// Exit code of `status`, `sync` and `verify` when no daemon serves the mount point.
pub const EXIT_NOT_SERVED: i32 = 3;

/// Name of the state directory that `logmirror mount` keeps at the backing root by default.
pub const STATE_DIR: &str = ".logmirror";

/// Deadline for one CLI call (mount, status, sync, verify) and for a helper process.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Timeout passed to `logmirror sync --timeout` by [`Mount::sync`] callers that expect success.
pub const SYNC_TIMEOUT_SECS: u64 = 60;

/// Environment variable that turns a missing FUSE setup into a test failure instead of a
/// skip. `scripts/test` sets it when it runs as root, so CI cannot pass by skipping.
pub const REQUIRE_FUSE_VAR: &str = "LOGMIRROR_TESTS_REQUIRE_FUSE";

/// Returns the path of the `logmirror` binary cargo built for this test run.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_logmirror"))
}

/// Returns whether FUSE mounts can be made here. Prints why not when they cannot, and panics
/// instead when `LOGMIRROR_TESTS_REQUIRE_FUSE=1` is set.
pub fn can_mount() -> bool {
    let Some(reason) = fuse_missing_reason() else {
        return true;
    };
    if std::env::var(REQUIRE_FUSE_VAR).is_ok_and(|value| value == "1") {
        panic!("{REQUIRE_FUSE_VAR}=1 but FUSE tests cannot run: {reason}");
    }
    eprintln!("SKIP: {reason}; this test needs root and /dev/fuse");
    false
}

fn fuse_missing_reason() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".to_string());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("running as uid {euid}, not root"));
    }
    None
}

/// Write mode of a mount: `mode=sync` or `mode=async`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// A temporary directory holding `backing/`, `mnt/`, `mirror0/`, `mirror1/`, ... and the
/// files a test keeps outside the mount (daemon log, acknowledgement lists, configs).
pub struct TestDirs {
    tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub mirrors: Vec<PathBuf>,
}

impl TestDirs {
    /// Creates the directory layout with `mirror_count` empty mirror directories.
    pub fn new(mirror_count: usize) -> TestDirs {
        let tmp = tempfile::Builder::new()
            .prefix("logmirror-test.")
            .tempdir()
            .expect("create temporary directory");
        // Canonical, so that it compares equal to the mount point in /proc/self/mountinfo.
        let root = tmp
            .path()
            .canonicalize()
            .expect("canonicalize temporary directory");
        let backing = root.join("backing");
        let mnt = root.join("mnt");
        let mirrors: Vec<PathBuf> = (0..mirror_count)
            .map(|i| root.join(format!("mirror{i}")))
            .collect();
        for dir in [&backing, &mnt].into_iter().chain(&mirrors) {
            fs::create_dir(dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
        }
        TestDirs {
            tmp,
            root,
            backing,
            mnt,
            mirrors,
        }
    }

    /// Returns the `-o` values that attach every mirror directory as `mirror=dir:PATH`.
    pub fn mirror_options(&self) -> Vec<String> {
        self.mirrors
            .iter()
            .map(|m| format!("mirror=dir:{}", m.display()))
            .collect()
    }

    /// Returns the `-o` values for a mount in `mode` with every mirror attached.
    pub fn options(&self, mode: Mode) -> Vec<String> {
        let mut options = self.mirror_options();
        options.push(format!("mode={}", mode.as_str()));
        options
    }
}

/// Output of a finished command: exit status and everything it wrote.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// Returns the exit code, or -1 when a signal ended the process.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    /// Panics, showing both streams, unless the command exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(self.status.success(), "{what} failed: {self}");
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion with stdin closed, and kills it after `timeout`.
///
/// Stdout and stderr go to anonymous files rather than pipes: a daemon that inherits a pipe
/// would keep it open, and waiting for end of file on it would never return.
pub fn run(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let mut stdout = tempfile::tempfile().expect("create stdout file");
    let mut stderr = tempfile::tempfile().expect("create stderr file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().expect("clone stdout file"))
        .stderr(stderr.try_clone().expect("clone stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = wait_child(&mut child, timeout)
        .unwrap_or_else(|| panic!("{cmd:?} did not exit within {timeout:?}"));
    CmdOutput {
        status,
        stdout: read_back(&mut stdout),
        stderr: read_back(&mut stderr),
    }
}

fn read_back(file: &mut fs::File) -> String {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).expect("rewind output file");
    file.read_to_string(&mut text).expect("read output file");
    text
}

/// Waits for `child` to exit. Kills it and returns `None` when `timeout` passes first.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("poll child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `logmirror ARGS...`.
pub fn logmirror(args: &[&str]) -> CmdOutput {
    logmirror_env(args, &[])
}

/// Runs `logmirror ARGS...` with the environment variables `env` added.
pub fn logmirror_env(args: &[&str], env: &[(String, String)]) -> CmdOutput {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run(&mut cmd, COMMAND_TIMEOUT)
}

/// Runs `logmirror mount` with `options` and `env`, expecting a failure, with the daemon log
/// in `failed-mount.log` of the test directory. Unmounts and panics if it mounted after all.
pub fn mount_expecting_failure(
    dirs: &TestDirs,
    options: &[String],
    env: &[(String, String)],
) -> CmdOutput {
    let mut args = vec!["mount", path_str(&dirs.backing), path_str(&dirs.mnt)];
    for option in options {
        args.push("-o");
        args.push(option);
    }
    let log = format!("log_file={}", dirs.root.join("failed-mount.log").display());
    args.push("-o");
    args.push(&log);
    let out = logmirror_env(&args, env);
    if is_mounted(&dirs.mnt) {
        fusermount(&["-u"], &dirs.mnt);
        panic!("mount succeeded but was expected to fail: {out}");
    }
    out
}

/// Runs `fusermount3 ARGS... PATH`.
pub fn fusermount(args: &[&str], path: &Path) -> CmdOutput {
    run(
        Command::new("fusermount3").args(args).arg(path),
        COMMAND_TIMEOUT,
    )
}

/// Unmounts `mnt` with `fusermount3 -u`, retrying while it fails with EBUSY for up to
/// `BUSY_UNMOUNT_TIMEOUT`: another program on the machine (a scanner walking /tmp) may hold
/// a file under the mount for a moment. The panic message lists the processes that hold one.
pub fn unmount_when_idle(mnt: &Path) {
    wait_until(BUSY_UNMOUNT_TIMEOUT, "fusermount3 -u", || {
        let out = fusermount(&["-u"], mnt);
        if out.status.success() {
            return Ok(());
        }
        if !out.stderr.contains("Device or resource busy") {
            out.assert_success("fusermount3 -u");
        }
        Err(format!("{out}; held by: {:?}", processes_using(mnt)))
    });
}

/// How long `unmount_when_idle` retries an unmount that fails with EBUSY.
const BUSY_UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns `pid (command): path` for each open file descriptor or working directory in /proc
/// that lies under `dir`.
pub fn processes_using(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let proc_dir = entry.path();
        let command = fs::read_to_string(proc_dir.join("comm")).unwrap_or_default();
        let mut links = vec![proc_dir.join("cwd")];
        if let Ok(fds) = fs::read_dir(proc_dir.join("fd")) {
            links.extend(fds.flatten().map(|fd| fd.path()));
        }
        for link in links {
            if let Ok(target) = fs::read_link(&link)
                && target.starts_with(dir)
            {
                found.push(format!("{pid} ({}): {}", command.trim(), target.display()));
            }
        }
    }
    found
}

/// Polls `probe` with a short backoff until it returns `Ok`, and returns that value.
/// Panics after `timeout` with `what` and the text of the last `Err`, which should describe
/// what the probe saw.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let last_seen = match probe() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}");
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Returns whether `path` is a mount point listed in /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let wanted = path.to_string_lossy();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|field| unescape_mountinfo(field) == wanted)
}

/// Decodes the octal escapes (`\040` for a space) that mountinfo uses in paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes.get(i + 1..i + 4);
        let code = escape
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match code {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Returns whether a process with `pid` still runs (a zombie counts as exited).
pub fn is_process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the command name, which is wrapped in parentheses.
        Ok(stat) => match stat.rfind(')') {
            Some(end) => !stat[end + 1..].trim_start().starts_with('Z'),
            None => true,
        },
        Err(_) => false,
    }
}

/// Sends SIGKILL to `pid`, which must be a process this test started.
pub fn kill_9(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions, and the pid belongs to a daemon this
    // test mounted.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

/// `logmirror status --json` as the command-line contract defines it.
#[derive(Clone, Debug, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub mode: String,
    pub degraded: bool,
    pub head_seq: u64,
    pub journal_bytes: u64,
    /// Write data that the journal keeps in memory until every mirror applied it.
    pub journal_memory_bytes: u64,
    pub mirrors: Vec<MirrorStatus>,
    #[serde(default)]
    pub reads: Reads,
}

/// The `reads` object of [`Status`]: read passthrough and the reads the daemon served.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Reads {
    /// active, off or unavailable.
    pub passthrough: String,
    pub served: u64,
    pub passthrough_opens: u64,
    pub read_write_refused: u64,
}

/// One mirror's entry in [`Status`].
#[derive(Clone, Debug, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    pub state: String,
    pub confirmed_seq: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    pub last_error_at_ns: Option<u64>,
    pub last_verify: Option<LastVerify>,
    /// S3 mirrors: request body bytes sent to the store since the mount.
    #[serde(default)]
    pub bytes_uploaded: Option<u64>,
    /// S3 mirrors: what the mount found and set up at the store.
    #[serde(default)]
    pub store: Option<StoreStatus>,
}

/// The part of a mirror's `store` object in `status --json` that the tests read.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StoreStatus {
    pub history: String,
    pub retention_lock: Option<String>,
    pub sse: Option<String>,
}

/// The `last_verify` object of a mirror in `status --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct LastVerify {
    pub differences: u64,
    pub error: Option<String>,
}

impl MirrorStatus {
    /// Returns the differences the latest verify found, if a verify ran and compared.
    pub fn last_verify_differences(&self) -> Option<u64> {
        self.last_verify
            .as_ref()
            .filter(|v| v.error.is_none())
            .map(|v| v.differences)
    }
}

/// Returns the `last_fold` object of the first mirror in `logmirror status MNT --json`.
pub fn last_fold(mnt: &Path) -> Result<serde_json::Value, String> {
    let out = logmirror(&["status", path_str(mnt), "--json"]);
    if !out.status.success() {
        return Err(format!("logmirror status: {out}"));
    }
    let status: serde_json::Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
    Ok(status["mirrors"][0]["last_fold"].clone())
}

/// Runs `logmirror status MNT --json` and parses it. `Err` contains the command output or the
/// parse error, for use inside [`wait_until`].
pub fn status(mnt: &Path) -> Result<Status, String> {
    let out = logmirror(&["status", path_str(mnt), "--json"]);
    if !out.status.success() {
        return Err(format!("logmirror status: {out}"));
    }
    serde_json::from_str(&out.stdout)
        .map_err(|e| format!("status --json output is not the expected JSON ({e}): {out}"))
}

/// Returns the daemon pid that `logmirror status MNT --json` reports.
pub fn daemon_pid(mnt: &Path) -> u32 {
    status(mnt)
        .unwrap_or_else(|e| panic!("read daemon pid: {e}"))
        .pid
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

static MOUNT_COUNT: AtomicUsize = AtomicUsize::new(0);

/// A mount made with `logmirror mount` (no `-f`). Dropping it unmounts with
/// `fusermount3 -u`, falling back to `fusermount3 -u -z`, also while a test panics.
pub struct Mount<'a> {
    pub dirs: &'a TestDirs,
    /// The `-o` values the test passed, without the `log_file` added here.
    pub options: Vec<String>,
    /// Environment variables added to `logmirror mount`, which the daemon inherits.
    pub env: Vec<(String, String)>,
    pub log_file: PathBuf,
    pid: Option<u32>,
    is_mounted: bool,
}

impl<'a> Mount<'a> {
    /// Mounts `dirs.backing` on `dirs.mnt` in `mode` with every mirror of `dirs` attached.
    pub fn new(dirs: &'a TestDirs, mode: Mode) -> Mount<'a> {
        Mount::with_options(dirs, &dirs.options(mode))
    }

    /// Mounts with the given `-o` values plus a `log_file` in the test directory. Asserts
    /// exit 0 and that the mount point is mounted when the command returns.
    pub fn with_options(dirs: &'a TestDirs, options: &[String]) -> Mount<'a> {
        Mount::with_env(dirs, options, &[])
    }

    /// Mounts as [`Mount::with_options`] does, with the environment variables `env` added to
    /// `logmirror mount` (and so to the daemon).
    pub fn with_env(dirs: &'a TestDirs, options: &[String], env: &[(String, String)]) -> Mount<'a> {
        Mount::start(dirs, None, options, env)
    }

    /// Mounts as [`Mount::with_env`] does, with `--config FILE` as well.
    pub fn with_config(
        dirs: &'a TestDirs,
        config: &Path,
        options: &[String],
        env: &[(String, String)],
    ) -> Mount<'a> {
        Mount::start(dirs, Some(config), options, env)
    }

    fn start(
        dirs: &'a TestDirs,
        config: Option<&Path>,
        options: &[String],
        env: &[(String, String)],
    ) -> Mount<'a> {
        let n = MOUNT_COUNT.fetch_add(1, Ordering::Relaxed);
        let log_file = dirs.root.join(format!("daemon-{n}.log"));
        let log_option = format!("log_file={}", log_file.display());

        let mut args = vec!["mount", path_str(&dirs.backing), path_str(&dirs.mnt)];
        if let Some(config) = config {
            args.push("--config");
            args.push(path_str(config));
        }
        for option in options.iter().chain([&log_option]) {
            args.push("-o");
            args.push(option);
        }
        let out = logmirror_env(&args, env);
        let mut mount = Mount {
            dirs,
            options: options.to_vec(),
            env: env.to_vec(),
            log_file,
            pid: None,
            is_mounted: is_mounted(&dirs.mnt),
        };
        out.assert_success("logmirror mount");
        assert!(
            mount.is_mounted,
            "logmirror mount exited 0 but {:?} is not in /proc/self/mountinfo",
            dirs.mnt
        );
        mount.pid = status(&dirs.mnt).ok().map(|s| s.pid);
        mount
    }

    pub fn mnt(&self) -> &Path {
        &self.dirs.mnt
    }

    /// Returns the daemon pid, as status reported it right after mounting.
    pub fn pid(&self) -> u32 {
        match self.pid {
            Some(pid) => pid,
            None => daemon_pid(self.mnt()),
        }
    }

    pub fn status(&self) -> Status {
        status(self.mnt()).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `logmirror sync MNT --timeout SECS`.
    pub fn sync(&self, timeout_secs: u64) -> CmdOutput {
        let secs = timeout_secs.to_string();
        logmirror(&["sync", path_str(self.mnt()), "--timeout", &secs])
    }

    /// Runs `logmirror verify MNT`.
    pub fn verify(&self) -> CmdOutput {
        logmirror(&["verify", path_str(self.mnt())])
    }

    /// Kills the daemon with SIGKILL and waits until it is gone. The mount stays listed
    /// (its connection is dead) until [`Mount::clear_dead`].
    pub fn kill_daemon(&mut self) {
        let pid = self.pid();
        kill_9(pid);
        wait_until(
            Duration::from_secs(30),
            "killed daemon to exit",
            || match is_process_alive(pid) {
                true => Err(format!("pid {pid} still alive")),
                false => Ok(()),
            },
        );
    }

    /// Leaves the dead mount of a killed daemon in place, for the next `logmirror mount` on
    /// the same mount point to clean up. Dropping this `Mount` then unmounts nothing.
    pub fn leave_dead(&mut self) {
        self.is_mounted = false;
    }

    /// Unmounts a mount whose daemon died, if it is still listed.
    pub fn clear_dead(&mut self) {
        if is_mounted(self.mnt()) {
            unmount_when_idle(self.mnt());
        }
        self.is_mounted = false;
    }

    /// Unmounts with `fusermount3 -u` (asserting success) and waits until the daemon has
    /// drained and exited.
    pub fn unmount(mut self) {
        let pid = self.pid();
        unmount_when_idle(self.mnt());
        self.is_mounted = false;
        wait_until(
            COMMAND_TIMEOUT,
            "daemon to exit after unmount",
            || match is_process_alive(pid) {
                true => Err(format!("pid {pid} still alive")),
                false => Ok(()),
            },
        );
    }

    /// Returns the last `max_bytes` of the daemon's log file, for failure messages.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let Ok(log) = fs::read(&self.log_file) else {
            return format!("(no daemon log at {:?})", self.log_file);
        };
        let start = log.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- daemon log tail ---\n{}", self.log_tail(8192));
        }
        if !self.is_mounted {
            return;
        }
        let pid = self.pid;
        let out = fusermount(&["-u"], self.mnt());
        if !out.status.success() {
            eprintln!("fusermount3 -u failed, unmounting lazily: {out}");
            let lazy = fusermount(&["-u", "-z"], self.mnt());
            if !lazy.status.success() {
                eprintln!("fusermount3 -u -z failed: {lazy}");
            }
        }
        // Wait for the daemon so that it does not outlive the temporary directory.
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Some(pid) = pid.filter(|&p| is_process_alive(p)) {
            if Instant::now() >= deadline {
                eprintln!("daemon pid {pid} still running 30s after unmount");
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A read-only bind mount of a directory over itself. Dropping it unmounts it by path.
pub struct ReadOnlyBind {
    path: PathBuf,
    is_active: bool,
}

impl ReadOnlyBind {
    /// Binds `path` over itself and remounts the bind read-only.
    pub fn new(path: &Path) -> ReadOnlyBind {
        let out = run(
            Command::new("mount").arg("--bind").arg(path).arg(path),
            COMMAND_TIMEOUT,
        );
        out.assert_success("mount --bind over the mirror");
        let mut bind = ReadOnlyBind {
            path: path.to_path_buf(),
            is_active: true,
        };
        let out = run(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(path),
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            bind.remove();
            panic!("remount of the mirror bind read-only failed: {out}");
        }
        bind
    }

    /// Unmounts the bind, lazily when the mirror still has files open in it.
    pub fn remove(&mut self) {
        let result = umount(&self.path);
        self.is_active = false;
        if let Err(e) = result {
            panic!("umount of the mirror bind {:?}: {e}", self.path);
        }
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        if self.is_active && !thread::panicking() {
            self.remove();
        } else if self.is_active {
            umount_lazily(&self.path);
        }
    }
}

/// Unmounts the mount at `path` with umount2, lazily when it is busy. It calls umount2
/// directly, because umount(8) looks at other mounts and would wait on a FUSE mount whose
/// daemon is stuck. The mount must be one the test made.
fn umount(path: &Path) -> std::io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: the path is NUL-terminated.
    let mut rc = unsafe { libc::umount2(path.as_ptr(), 0) };
    if rc != 0 {
        // SAFETY: as above.
        rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Detaches the mount at `path` without waiting, for guards dropped during a panic.
fn umount_lazily(path: &Path) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    // SAFETY: the path is NUL-terminated; the mount is one this test made.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
}

/// A tmpfs of a fixed size mounted over an empty directory, so that a test can fill the
/// filesystem. Dropping it unmounts it, lazily when files in it are still open.
pub struct SmallTmpfs {
    path: PathBuf,
}

impl SmallTmpfs {
    /// Mounts a tmpfs of `size_bytes` (rounded up to whole pages by the kernel) on `path`.
    pub fn new(path: &Path, size_bytes: u64) -> SmallTmpfs {
        let out = run(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size_bytes},mode=0755"))
                .arg("logmirror-test")
                .arg(path),
            COMMAND_TIMEOUT,
        );
        out.assert_success("mount -t tmpfs");
        SmallTmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl SmallTmpfs {
    /// Changes the size of the mounted tmpfs to `size_bytes`, as when the disk of a full
    /// mirror gets more room.
    pub fn resize(&self, size_bytes: u64) {
        let out = run(
            Command::new("mount")
                .args(["-o"])
                .arg(format!("remount,size={size_bytes}"))
                .arg(&self.path),
            COMMAND_TIMEOUT,
        );
        out.assert_success("mount -o remount,size=");
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        if let Err(e) = umount(&self.path) {
            eprintln!("umount of the tmpfs {:?}: {e}", self.path);
        }
    }
}

/// Map from a path relative to the tree root to its entry: the content's sha256 as hex for a
/// regular file, `dir` for a directory, `symlink:TARGET` for a symlink.
pub type TreeEntries = BTreeMap<String, String>;

/// Listing of a tree, and one sha256 digest over the whole listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Tree {
    pub entries: TreeEntries,
    pub digest: String,
}

/// Lists `dir` recursively (the root itself excluded), leaving out the names in
/// `skip_at_root` at the top level only.
pub fn tree_sha256(dir: &Path, skip_at_root: &[&str]) -> Tree {
    let mut entries = TreeEntries::new();
    walk(dir, "", skip_at_root, &mut entries);
    let mut hasher = Sha256::new();
    for (path, value) in &entries {
        hasher.update(path.as_bytes());
        hasher.update(b"\0");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    Tree {
        entries,
        digest: hex(&hasher.finalize()),
    }
}

fn walk(dir: &Path, prefix: &str, skip: &[&str], entries: &mut TreeEntries) {
    let listing = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
    for entry in listing {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && skip.contains(&name.as_str()) {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {path:?}: {e}"));
        let kind = meta.file_type();
        if kind.is_dir() {
            entries.insert(rel.clone(), "dir".to_string());
            walk(&path, &format!("{rel}/"), skip, entries);
        } else if kind.is_symlink() {
            let target = fs::read_link(&path).unwrap_or_else(|e| panic!("readlink {path:?}: {e}"));
            entries.insert(rel, format!("symlink:{}", target.display()));
        } else if kind.is_file() {
            entries.insert(rel, file_sha256(&path));
        } else {
            entries.insert(rel, format!("special:{kind:?}"));
        }
    }
}

/// Returns the sha256 of a file's content as lowercase hex.
pub fn file_sha256(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {path:?}: {e}"));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Panics unless two listings are equal, naming each path that is missing on one side or
/// differs.
pub fn assert_same_tree(expected_label: &str, expected: &Tree, actual_label: &str, actual: &Tree) {
    if expected == actual {
        return;
    }
    let mut problems = Vec::new();
    for (path, value) in &expected.entries {
        match actual.entries.get(path) {
            None => problems.push(format!("{path}: only in {expected_label}")),
            Some(other) if other != value => problems.push(format!(
                "{path}: {expected_label} {value}, {actual_label} {other}"
            )),
            Some(_) => {}
        }
    }
    for path in actual.entries.keys() {
        if !expected.entries.contains_key(path) {
            problems.push(format!("{path}: only in {actual_label}"));
        }
    }
    let shown = problems.len().min(30);
    panic!(
        "{expected_label} and {actual_label} differ in {} paths:\n{}",
        problems.len(),
        problems[..shown].join("\n")
    );
}

/// Runs `logmirror sync`, then asserts that the mount view, the backing directory (without
/// its state directory) and every mirror hold the same tree, and that `logmirror verify`
/// exits 0. Returns the backing tree.
pub fn assert_mirrors_match(mount: &Mount) -> Tree {
    let out = mount.sync(SYNC_TIMEOUT_SECS);
    out.assert_success("logmirror sync");

    let backing = tree_sha256(&mount.dirs.backing, &[STATE_DIR]);
    let view = tree_sha256(mount.mnt(), &[]);
    assert_same_tree("backing", &backing, "mount", &view);
    for mirror in &mount.dirs.mirrors {
        let copy = tree_sha256(mirror, &[]);
        assert_same_tree("backing", &backing, &format!("mirror {mirror:?}"), &copy);
    }

    let out = mount.verify();
    assert_eq!(out.code(), 0, "logmirror verify found differences: {out}");
    backing
}

/// Runs `python3 -c SCRIPT ARGS...` and returns its output.
pub fn python(script: &str, args: &[&str]) -> CmdOutput {
    run(
        Command::new("python3").arg("-c").arg(script).args(args),
        COMMAND_TIMEOUT,
    )
}

/// Runs a Python snippet, asserts exit 0 and returns its stdout.
pub fn python_ok(script: &str, args: &[&str]) -> String {
    let out = python(script, args);
    out.assert_success("python3 snippet");
    out.stdout
}

/// A helper process started by a test, with its stdin piped and its stdout read line by
/// line on a thread. Dropping it kills the process if it still runs.
pub struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub what: String,
}

impl Helper {
    /// Starts `python3 -u -c SCRIPT ARGS...`, with stderr going to the test's stderr.
    pub fn python(script: &str, args: &[&str]) -> Helper {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg("-c").arg(script).args(args);
        Helper::spawn(cmd, "python3 helper")
    }

    pub fn spawn(mut cmd: Command, what: &str) -> Helper {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Helper {
            child,
            stdin,
            lines,
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the next line of stdout. Panics on end of output or after `timeout`.
    pub fn read_line(&self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{}: no output line within {timeout:?}", self.what)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{}: stdout closed while a line was expected", self.what)
            }
        }
    }

    /// Writes one line to the helper's stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("{}: write stdin: {e}", self.what));
        stdin.flush().expect("flush helper stdin");
    }

    /// Closes stdin, waits up to `timeout` for exit and returns the status and the rest of
    /// stdout.
    pub fn finish(mut self, timeout: Duration) -> (ExitStatus, Vec<String>) {
        self.stdin = None;
        let status = wait_child(&mut self.child, timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.what));
        let rest = self.lines.iter().collect();
        (status, rest)
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends the lines `line {from:06}` up to `line {to - 1:06}` to `path`, one write(2) per
/// line. Creates the file if needed.
pub fn append_lines(path: &Path, from: usize, to: usize) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    for i in from..to {
        let line = format!("line {i:06}\n");
        file.write_all(line.as_bytes()).expect("append a line");
    }
}

/// Returns the content [`append_lines`] leaves after appending lines 0 to `to - 1`.
pub fn expected_lines(to: usize) -> String {
    (0..to).map(|i| format!("line {i:06}\n")).collect()
}

/// Returns the value of extended attribute `name` of `path` (a symlink itself, not its
/// target); values longer than 256 bytes fail with ERANGE.
pub fn get_xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let name = std::ffi::CString::new(name).expect("no NUL in name");
    let mut buf = vec![0u8; 256];
    // SAFETY: path and name are NUL-terminated and buf is writable for its length.
    let len = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

/// Sets extended attribute `name` of `path` (a symlink itself, not its target) to `value`.
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let name = std::ffi::CString::new(name).expect("no NUL in name");
    // SAFETY: path and name are NUL-terminated and value is readable for its length.
    let ret = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes extended attribute `name` of `path` (a symlink itself, not its target).
pub fn remove_xattr(path: &Path, name: &str) -> std::io::Result<()> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let name = std::ffi::CString::new(name).expect("no NUL in name");
    // SAFETY: path and name are NUL-terminated.
    let ret = unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reads a file as UTF-8, panicking with the path on failure.
pub fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

/// Returns the sorted names in a directory.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"))
        .map(|entry| {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {dir:?}: {e}"));
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}
