//! The fault suite: crashes of the daemon, outages of the S3 store, a full backing disk and
//! the loss of a store node, each while programs write through the mount. Every scenario
//! keeps a list of the writes that returned success, checks after the fault that none of
//! them is missing from the backing tree and the mirrors, and prints a line of figures:
//!
//! ```text
//! FAULTS scenario=crash_sync_dir faults=3 acknowledged=1234 lost=0 recover_ms=412 seed=...
//! ```
//!
//! `LOGMIRROR_FAULTS_ROUNDS` sets the size (default 3, the CI run): crash rounds per mode
//! and mirror kind, and one node kill per 5 rounds. `LOGMIRROR_FAULTS_SEED` repeats the
//! random kill points of an earlier run. `scripts/faults` runs the long version.

mod common;
#[path = "common/garage.rs"]
mod garage;
#[path = "common/garage_cluster.rs"]
mod garage_cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::crash_writer;
use common::state_dir;
use common::{
    Mode, Mount, ReadOnlyBind, STATE_DIR, SmallTmpfs, TestDirs, assert_mirrors_match,
    assert_same_tree, logmirror_env, path_str, tree_sha256, wait_until,
};
use garage::Garage;
use garage_cluster::GarageCluster;

/// Crash rounds per mode and mirror kind when `LOGMIRROR_FAULTS_ROUNDS` is not set.
const DEFAULT_ROUNDS: u64 = 3;
/// Acknowledged records before a kill: drawn from this range for each round.
const KILL_AFTER_ACKS: std::ops::Range<u64> = 20..600;
/// The same for S3 mirrors in sync mode, where each write is an upload and each recovery
/// downloads the whole history.
const S3_KILL_AFTER_ACKS: std::ops::Range<u64> = 10..150;
/// The crash writer fsyncs its files after this many records in async mode.
const FSYNC_EVERY: u64 = 16;
/// `sync_timeout` of the sync-mode outage scenarios.
const SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// Environment variable naming a file that every scenario appends its figures line to, so
/// that `scripts/test` and `scripts/faults` can show them without `--nocapture`.
const FIGURES_FILE_VAR: &str = "LOGMIRROR_FAULTS_FIGURES";
/// Deadline for anything the suite waits for: a writer to stop, a mirror to catch up.
const DEADLINE: Duration = Duration::from_secs(120);

/// Outages, full disks and node kills per scenario: one per 5 crash rounds, at least one.
fn fault_cycles() -> u64 {
    (rounds() / 5).max(1)
}

fn rounds() -> u64 {
    match std::env::var("LOGMIRROR_FAULTS_ROUNDS") {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            panic!("LOGMIRROR_FAULTS_ROUNDS={text:?} is not a number; set a count such as 20")
        }),
        Err(_) => DEFAULT_ROUNDS,
    }
}

/// A small xorshift generator for kill points. The seed comes from `LOGMIRROR_FAULTS_SEED`
/// or the clock, and is printed with the figures so that a failing run can be repeated.
struct Random {
    seed: u64,
    state: u64,
}

impl Random {
    fn new() -> Random {
        let seed = match std::env::var("LOGMIRROR_FAULTS_SEED") {
            Ok(text) => text.parse().unwrap_or_else(|_| {
                panic!(
                    "LOGMIRROR_FAULTS_SEED={text:?} is not a number; copy it from a figures line"
                )
            }),
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64,
        };
        Random {
            seed,
            state: seed | 1,
        }
    }

    fn in_range(&mut self, range: &std::ops::Range<u64>) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        range.start + self.state % (range.end - range.start)
    }
}

/// The figures one scenario prints: faults injected, and writes that returned success. Then
/// how many of those were missing at the checks after each fault (summed over the checks),
/// and the time from the end of each fault until the mirrors had everything again.
#[derive(Default)]
struct Figures {
    faults: u64,
    acknowledged: u64,
    lost: u64,
    recover: Vec<Duration>,
    extra: Vec<String>,
}

impl Figures {
    fn record(&mut self, acknowledged: u64, lost: u64, recover: Duration) {
        self.faults += 1;
        self.acknowledged += acknowledged;
        self.lost += lost;
        self.recover.push(recover);
    }

    /// Prints the `FAULTS` line that `scripts/faults` collects, then asserts that nothing
    /// was lost.
    fn report(&self, scenario: &str) {
        let max = self.recover.iter().max().copied().unwrap_or_default();
        let mean = match self.recover.len() {
            0 => Duration::ZERO,
            n => self.recover.iter().sum::<Duration>() / n as u32,
        };
        let line = format!(
            "FAULTS scenario={scenario} faults={} acknowledged={} lost={} recover_ms={} \
             recover_mean_ms={}{}",
            self.faults,
            self.acknowledged,
            self.lost,
            max.as_millis(),
            mean.as_millis(),
            self.extra
                .iter()
                .map(|e| format!(" {e}"))
                .collect::<String>()
        );
        println!("{line}");
        if let Some(path) = std::env::var_os(FIGURES_FILE_VAR) {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("open {FIGURES_FILE_VAR}={path:?}: {e}"));
            writeln!(file, "{line}").expect("append to the figures file");
        }
        assert_eq!(self.lost, 0, "{scenario}: acknowledged writes were lost");
    }
}

// ---------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------

#[test]
fn crash_rounds_sync() {
    crash_rounds(Mode::Sync);
}

#[test]
fn crash_rounds_async() {
    crash_rounds(Mode::Async);
}

/// Kills the daemon with SIGKILL at a random point of a writer's run, round after round on
/// one backing directory. Each round writes into its own folder `roundNN/`, so the checks
/// after each recovery cover every earlier round too.
fn crash_rounds(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let mut random = Random::new();
    let dirs = TestDirs::new(1);
    let options = dirs.options(mode);
    let mut mount = Mount::with_options(&dirs, &options);
    let mut figures = Figures::default();
    let mut acked_per_round = Vec::new();
    let mut synced_total = 0;

    for round in 0..rounds() {
        let sync_every = match mode {
            Mode::Sync => 0,
            Mode::Async => FSYNC_EVERY,
        };
        let kill_after = random.in_range(&KILL_AFTER_ACKS);
        let (folder, acked, synced) = kill_during_writes(&mut mount, round, kill_after, sync_every);
        synced_total += synced;
        acked_per_round.push(acked);
        if mode == Mode::Sync {
            let lost = crash_writer::count_lost(&dirs.mirrors[0].join(&folder), acked, "mirror");
            assert_eq!(
                lost, 0,
                "round {round}: sync-mode writes missing from the mirror"
            );
        }

        mount.clear_dead();
        drop(mount);
        let started = Instant::now();
        mount = Mount::with_options(&dirs, &options);
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync after the crash");
        let recovered = started.elapsed();

        let mut lost = 0;
        for (earlier, &acked) in acked_per_round.iter().enumerate() {
            let folder = format!("round{earlier:02}");
            lost += crash_writer::count_lost(&dirs.backing.join(&folder), acked, "backing");
            lost += crash_writer::count_lost(&dirs.mirrors[0].join(&folder), acked, "mirror");
        }
        figures.record(acked, lost, recovered);
        if lost > 0 {
            figures.report(&format!("crash_{}_dir", mode.as_str()));
        }
        for (earlier, &acked) in acked_per_round.iter().enumerate() {
            let folder = format!("round{earlier:02}");
            crash_writer::assert_acked_records(&dirs.backing.join(&folder), acked, "backing");
            crash_writer::assert_acked_records(&dirs.mirrors[0].join(&folder), acked, "mirror");
        }
        assert_mirrors_match(&mount);
    }
    figures.extra.push(format!("fsynced={synced_total}"));
    figures.extra.push(format!("seed={}", random.seed));
    figures.report(&format!("crash_{}_dir", mode.as_str()));
}

/// Starts the crash writer in the folder `roundNN/` of the mount, fsyncing every
/// `sync_every` records (0 for never), and kills the daemon once `kill_after` records are
/// acknowledged. Returns the folder, the acknowledged records and the fsynced ones, after
/// checking that the writer stopped with an error instead of hanging.
fn kill_during_writes(
    mount: &mut Mount,
    round: u64,
    kill_after: u64,
    sync_every: u64,
) -> (String, u64, u64) {
    let dirs = mount.dirs;
    let folder = format!("round{round:02}");
    fs::create_dir(dirs.mnt.join(&folder)).expect("create the round's folder");
    let acked_path = dirs.root.join(format!("acked-{round:02}.txt"));
    let writer = crash_writer::start_with_fsync(&dirs.mnt.join(&folder), &acked_path, sync_every);
    crash_writer::wait_for_acks(&acked_path, kill_after, DEADLINE);
    mount.kill_daemon();

    // finish() fails when the writer does not stop within its deadline.
    let (stop, acked) = crash_writer::finish(writer, &acked_path);
    assert_writer_stopped(&stop, acked);
    let synced = crash_writer::read_synced(&acked_path);
    assert!(synced <= acked, "fsynced {synced} of {acked} records");
    (folder, acked, synced)
}

/// Checks the crash writer's `stopped ID ERRNO_NAME` line: the first failed record follows
/// the last acknowledged one, with the error of a dead FUSE connection.
fn assert_writer_stopped(stop: &str, acked: u64) {
    let fields: Vec<&str> = stop.split(' ').collect();
    assert_eq!(fields.len(), 3, "writer output {stop:?}");
    assert_eq!(fields[0], "stopped", "writer output {stop:?}");
    assert_eq!(fields[1], acked.to_string(), "writer output {stop:?}");
    // A write in flight when the connection dies ends with ECONNABORTED, later ones with
    // ENOTCONN.
    let errors = ["ENOTCONN", "ECONNABORTED", "EIO"];
    assert!(errors.contains(&fields[2]), "writer error in {stop:?}");
}

#[test]
fn crash_rounds_s3_sync() {
    crash_rounds_s3(Mode::Sync);
}

#[test]
fn crash_rounds_s3_async() {
    crash_rounds_s3(Mode::Async);
}

/// Crash rounds with an S3 mirror. `logmirror restore` rebuilds the tree from the bucket
/// alone, and it must contain every acknowledged write of every round: in sync mode right
/// after the kill, before the next mount; in async mode after the next mount's sync.
fn crash_rounds_s3(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let scenario = format!("crash_{}_s3", mode.as_str());
    let mut random = Random::new();
    let dirs = TestDirs::new(0);
    let options = s3_options(&garage, "crash", mode, &[]);
    let mut mount = Mount::with_env(&dirs, &options, &garage.env());
    let mut figures = Figures::default();
    let mut acked_per_round = Vec::new();
    let mut synced_total = 0;

    for round in 0..rounds() {
        let (kill_range, sync_every) = match mode {
            Mode::Sync => (&S3_KILL_AFTER_ACKS, 0),
            Mode::Async => (&KILL_AFTER_ACKS, FSYNC_EVERY),
        };
        let kill_after = random.in_range(kill_range);
        let (_, acked, synced) = kill_during_writes(&mut mount, round, kill_after, sync_every);
        acked_per_round.push(acked);
        synced_total += synced;
        let mut lost = 0;
        if mode == Mode::Sync {
            lost += restore_and_count_lost(&garage, &dirs, round, &acked_per_round);
        }

        mount.clear_dead();
        drop(mount);
        let started = Instant::now();
        mount = Mount::with_env(&dirs, &options, &garage.env());
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync after the crash");
        let recovered = started.elapsed();
        for (earlier, &acked) in acked_per_round.iter().enumerate() {
            let folder = format!("round{earlier:02}");
            lost += crash_writer::count_lost(&dirs.backing.join(&folder), acked, "backing");
        }
        if mode == Mode::Async {
            lost += restore_and_count_lost(&garage, &dirs, round, &acked_per_round);
        }
        figures.record(acked, lost, recovered);
        if lost > 0 {
            figures.report(&scenario);
        }
        let out = mount.verify();
        assert_eq!(out.code(), 0, "verify after the remount: {out}");
    }
    figures.extra.push(format!("fsynced={synced_total}"));
    figures.extra.push(format!("seed={}", random.seed));
    figures.report(&scenario);
}

/// Restores the test prefix `crash` into a new directory, counts the acknowledged records
/// of every round missing there, checks the records it has, and removes it again.
fn restore_and_count_lost(
    garage: &Garage,
    dirs: &TestDirs,
    round: u64,
    acked_per_round: &[u64],
) -> u64 {
    let restored = dirs.root.join(format!("restored-{round:02}"));
    let out = restore(garage, "crash", &restored);
    assert_eq!(out.code(), 0, "restore after kill -9: {out}");
    let mut lost = 0;
    for (earlier, &acked) in acked_per_round.iter().enumerate() {
        let folder = format!("round{earlier:02}");
        lost += crash_writer::count_lost(&restored.join(&folder), acked, "restored");
    }
    if lost == 0 {
        for (earlier, &acked) in acked_per_round.iter().enumerate() {
            let folder = format!("round{earlier:02}");
            crash_writer::assert_acked_records(&restored.join(&folder), acked, "restored");
        }
    }
    fs::remove_dir_all(&restored).expect("remove the restored tree");
    lost
}

// ---------------------------------------------------------------------------------------
// Helpers of the S3 scenarios
// ---------------------------------------------------------------------------------------

/// Returns the `-o` values of a mount on `prefix` of the test bucket in `mode`, with
/// `extra` added.
fn s3_options(garage: &Garage, prefix: &str, mode: Mode, extra: &[&str]) -> Vec<String> {
    let mut options = vec![
        format!("mirror=s3://{}/{prefix}", garage.bucket),
        garage.options(),
        format!("mode={}", mode.as_str()),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    options
}

/// Runs `logmirror restore` of `prefix` of the test bucket into `dir`.
fn restore(garage: &Garage, prefix: &str, dir: &Path) -> common::CmdOutput {
    let spec = format!("s3://{}/{prefix}", garage.bucket);
    logmirror_env(
        &["restore", &spec, path_str(dir), "-o", &garage.options()],
        &garage.env(),
    )
}

/// How the S3 server is taken away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    /// `scripts/garage-down`: connections are refused.
    Stop,
    /// SIGSTOP: connections are accepted, and requests hang without a response.
    Freeze,
}

impl Outage {
    fn name(self) -> &'static str {
        match self {
            Outage::Stop => "stop",
            Outage::Freeze => "freeze",
        }
    }

    fn begin(self, garage: &Garage) -> OutageGuard {
        match self {
            Outage::Stop => garage.stop(),
            Outage::Freeze => {
                signal(garage.pid, libc::SIGSTOP);
                wait_until_stopped(garage.pid);
            }
        }
        OutageGuard {
            outage: self,
            pid: garage.pid,
            is_active: true,
        }
    }
}

/// An outage in progress. [`OutageGuard::end`] brings the server back. Dropping the guard
/// of a frozen server sends SIGCONT, so that the Garage guard can stop it.
struct OutageGuard {
    outage: Outage,
    pid: u32,
    is_active: bool,
}

impl OutageGuard {
    /// Ends the outage: restarts a stopped server or thaws a frozen one.
    fn end(mut self, garage: &mut Garage) {
        self.is_active = false;
        match self.outage {
            Outage::Stop => garage.restart(),
            Outage::Freeze => signal(garage.pid, libc::SIGCONT),
        }
    }
}

impl Drop for OutageGuard {
    fn drop(&mut self) {
        if self.is_active && self.outage == Outage::Freeze {
            signal(self.pid, libc::SIGCONT);
        }
    }
}

/// Waits until every thread of `pid` is in the stopped state (`T` in
/// `/proc/PID/task/TID/stat`). kill(2) returns before a busy thread of a multi-threaded
/// process has stopped, and such a thread could still complete a request.
fn wait_until_stopped(pid: u32) {
    wait_until(
        DEADLINE,
        "every thread of the frozen server to stop",
        || {
            let tasks = fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
            for task in tasks {
                let path = task.map_err(|e| e.to_string())?.path().join("stat");
                let stat = fs::read_to_string(&path).map_err(|e| format!("{path:?}: {e}"))?;
                // The state letter follows the command name, which is wrapped in parentheses.
                let state = stat
                    .rfind(')')
                    .and_then(|end| stat[end + 1..].trim_start().chars().next());
                if state != Some('T') {
                    return Err(format!("{path:?} in state {state:?}"));
                }
            }
            Ok(())
        },
    );
}

/// Sends `signal` to `pid`, which must be a process this test started.
fn signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill has no memory-safety preconditions, and the pid is a Garage server this
    // test started.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill -{signal} {pid}: {}",
        std::io::Error::last_os_error()
    );
}

/// An open file in the mount that the test appends numbered lines to, one write(2) each,
/// and the outcome of every append.
struct Lines {
    file: File,
    /// File name, relative to the mount point.
    name: PathBuf,
    tag: String,
    /// Ids whose write returned success.
    acked: Vec<u64>,
    /// Ids whose write failed, with the errno.
    failed: Vec<(u64, i32)>,
}

impl Lines {
    fn open(path: &Path, tag: &str) -> Lines {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"));
        Lines {
            file,
            name: PathBuf::from(path.file_name().expect("file name")),
            tag: tag.to_string(),
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn next_id(&self) -> u64 {
        (self.acked.len() + self.failed.len()) as u64
    }

    /// Appends the next line, and returns the errno when the write failed.
    fn append(&mut self) -> Result<(), i32> {
        let id = self.next_id();
        let line = line_text(&self.tag, id);
        match self.file.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {
                self.acked.push(id);
                Ok(())
            }
            Ok(n) => panic!("short write of line {id}: {n} of {} bytes", line.len()),
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(0);
                self.failed.push((id, errno));
                Err(errno)
            }
        }
    }

    /// Appends `count` lines and asserts that each write succeeded.
    fn append_ok(&mut self, count: usize) {
        for _ in 0..count {
            if let Err(errno) = self.append() {
                panic!(
                    "append of line {} failed: {}",
                    self.next_id() - 1,
                    std::io::Error::from_raw_os_error(errno)
                );
            }
        }
    }
}

fn line_text(tag: &str, id: u64) -> String {
    format!("{tag} line {id:08}\n")
}

/// Returns how many acknowledged lines are missing from `content`, after asserting that it
/// contains only whole lines of `tag`, in the order [`count_lost_ids`] requires.
fn count_lost_lines(content: &str, tag: &str, acked: &[u64], failed: &[(u64, i32)]) -> u64 {
    assert!(
        content.is_empty() || content.ends_with('\n'),
        "the file ends in a partial line"
    );
    let ids = content.lines().map(|line| {
        line.strip_prefix(&format!("{tag} line "))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
    });
    let failed: Vec<u64> = failed.iter().map(|(id, _)| *id).collect();
    count_lost_ids(ids, acked, &failed)
}

/// Returns how many of the `acked` ids are missing from `found`, after asserting that the
/// found ids increase and that each one was acknowledged or failed. A failed write may have
/// reached the file: the program got an error, not a promise.
fn count_lost_ids(found: impl Iterator<Item = u64>, acked: &[u64], failed: &[u64]) -> u64 {
    let written: BTreeSet<u64> = acked.iter().chain(failed).copied().collect();
    let mut seen = BTreeSet::new();
    let mut previous = None;
    for id in found {
        assert!(previous < Some(id), "id {id} after id {previous:?}");
        assert!(written.contains(&id), "id {id} was never written");
        previous = Some(id);
        seen.insert(id);
    }
    acked.iter().filter(|id| !seen.contains(id)).count() as u64
}

/// Polls `logmirror sync` until it succeeds and returns how long that took.
fn time_until_synced(mount: &Mount) -> Duration {
    let started = Instant::now();
    wait_until(DEADLINE, "the mirrors to catch up", || {
        let out = mount.sync(5);
        match out.status.success() {
            true => Ok(()),
            false => Err(out.to_string()),
        }
    });
    started.elapsed()
}

// ---------------------------------------------------------------------------------------
// S3 outages
// ---------------------------------------------------------------------------------------

#[test]
fn s3_outage_async_stop() {
    s3_outage_async(Outage::Stop);
}

#[test]
fn s3_outage_async_freeze() {
    s3_outage_async(Outage::Freeze);
}

/// Async mode, one outage per 5 rounds on one mount: writes go on during the outage,
/// status shows the backlog growing, and the mirror catches up and verifies once the
/// server is back.
fn s3_outage_async(outage: Outage) {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = s3_options(&garage, "outage", Mode::Async, &[]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let mut lines = Lines::open(&dirs.mnt.join("app.log"), "app");
    let mut figures = Figures::default();
    let mut written_during = 0;
    let mut counted = 0;
    for _ in 0..fault_cycles() {
        lines.append_ok(50);
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync before the outage");

        let fault = outage.begin(&garage);
        let before = lines.acked.len();
        let first_lag = wait_until(DEADLINE, "a backlog in status", || {
            lines.append_ok(1);
            let status = common::status(&dirs.mnt)?;
            match status.mirrors[0].lag_records {
                0 => Err(format!("{status:?}")),
                lag => Ok(lag),
            }
        });
        let grown_lag = wait_until(DEADLINE, "the backlog to grow", || {
            lines.append_ok(1);
            let status = common::status(&dirs.mnt)?;
            match status.mirrors[0].lag_records {
                lag if lag > first_lag => Ok(lag),
                _ => Err(format!("{status:?}")),
            }
        });
        lines.append_ok(50);
        written_during += lines.acked.len() - before;
        let status = mount.status();
        let last_lag = status.mirrors[0].lag_records;
        assert!(
            last_lag >= grown_lag + 50,
            "backlog after 50 more writes: {status:?}"
        );

        fault.end(&mut garage);
        let recovered = time_until_synced(&mount);
        let status = mount.status();
        assert_eq!(status.mirrors[0].lag_records, 0, "{status:?}");
        let out = mount.verify();
        assert_eq!(out.code(), 0, "verify after the outage: {out}");

        let content = common::read_text(&dirs.backing.join("app.log"));
        let lost = count_lost_lines(&content, "app", &lines.acked, &lines.failed);
        assert!(lines.failed.is_empty(), "failed writes: {:?}", lines.failed);
        let acked_in_cycle = lines.acked.len() - counted;
        counted = lines.acked.len();
        figures.record(acked_in_cycle as u64, lost, recovered);
        figures.extra.push(format!(
            "lag_records_seen={first_lag},{grown_lag},{last_lag}"
        ));
    }
    figures
        .extra
        .push(format!("written_during_outages={written_during}"));
    figures.report(&format!("s3_outage_async_{}", outage.name()));
}

/// Sync mode: for each outage kind and `on_mirror_failure` policy, a write made during the
/// outage fails with EIO (`fail`), returns success in degraded mode (`degrade`), or waits
/// until the server is back (`block`). Each case uses its own prefix of one server.
#[test]
fn s3_outage_sync_policies() {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let mut figures = Figures::default();
    for outage in [Outage::Stop, Outage::Freeze] {
        for policy in ["fail", "degrade", "block"] {
            let (acked, lost, recovered, outcome_ms) =
                sync_policy_case(&mut garage, outage, policy);
            figures.record(acked, lost, recovered);
            figures.extra.push(format!(
                "{policy}_{}_outcome_ms={outcome_ms}",
                outage.name()
            ));
        }
    }
    figures
        .extra
        .push(format!("sync_timeout_ms={}", SYNC_TIMEOUT.as_millis()));
    figures.report("s3_outage_sync_policies");
}

/// Runs one policy case and returns the acknowledged writes, the lost ones, the time from
/// the end of the outage until the mirror caught up, and how long the write made during
/// the outage took to return.
fn sync_policy_case(
    garage: &mut Garage,
    outage: Outage,
    policy: &str,
) -> (u64, u64, Duration, u128) {
    let dirs = TestDirs::new(0);
    let prefix = format!("{policy}-{}", outage.name());
    let timeout = format!("sync_timeout={}ms", SYNC_TIMEOUT.as_millis());
    let policy_option = format!("on_mirror_failure={policy}");
    let options = s3_options(garage, &prefix, Mode::Sync, &[&timeout, &policy_option]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    // The file is opened before the outage: opening the file being written blocks while a
    // sync-mode write waits (see docs/LIMITATIONS.md).
    let mut lines = Lines::open(&dirs.mnt.join("app.log"), "app");
    lines.append_ok(10);

    let fault = outage.begin(garage);
    let started = Instant::now();
    let pending = thread::spawn(move || {
        let result = lines.append();
        (lines, result)
    });
    let (mut lines, outcome) = match policy {
        "block" => {
            // The write is still waiting after twice sync_timeout by the daemon's own
            // clock: the lag of its record.
            wait_until(
                DEADLINE,
                "the pending record's lag to pass 2 * sync_timeout",
                || {
                    let status = common::status(&dirs.mnt)?;
                    match status.mirrors[0].lag_seconds >= 2.0 * SYNC_TIMEOUT.as_secs_f64() {
                        true => Ok(()),
                        false => Err(format!("{status:?}")),
                    }
                },
            );
            assert!(
                !pending.is_finished(),
                "block: the write returned during the outage"
            );
            fault.end(garage);
            let (lines, result) = join_within(pending, "the blocked write");
            assert_eq!(result, Ok(()), "block: write after the outage ended");
            (lines, started.elapsed())
        }
        _ => {
            let (mut lines, result) = join_within(pending, "the write during the outage");
            let outcome = started.elapsed();
            let status = mount.status();
            if policy == "fail" {
                assert_eq!(result, Err(libc::EIO), "fail: write during the outage");
                assert!(!status.degraded, "fail: {status:?}");
            } else {
                assert_eq!(result, Ok(()), "degrade: write during the outage");
                assert!(status.degraded, "degrade: {status:?}");
                // Writes go on at once while degraded.
                lines.append_ok(20);
            }
            fault.end(garage);
            (lines, outcome)
        }
    };
    let recovered = time_until_synced(&mount);
    wait_until(DEADLINE, "sync mode without degradation", || {
        let status = common::status(&dirs.mnt)?;
        match status.degraded {
            false => Ok(()),
            true => Err(format!("{status:?}")),
        }
    });
    lines.append_ok(10);
    let (acked, lost) = verify_lines(&mount, &dirs.backing, &lines);
    drop(lines);
    mount.unmount();
    (acked, lost, recovered, outcome.as_millis())
}

/// Waits for a writer thread to return, for at most [`DEADLINE`], and returns its result.
fn join_within<T>(handle: JoinHandle<T>, what: &str) -> T {
    wait_until(DEADLINE, what, || match handle.is_finished() {
        true => Ok(()),
        false => Err("still running".to_string()),
    });
    handle.join().expect("writer thread")
}

/// Syncs, runs verify (exit 0 expected) and counts the acknowledged lines missing from the
/// backing file. Returns the acknowledged and the lost lines.
fn verify_lines(mount: &Mount, backing: &Path, lines: &Lines) -> (u64, u64) {
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the outage: {out}");
    let content = common::read_text(&backing.join(&lines.name));
    let lost = count_lost_lines(&content, &lines.tag, &lines.acked, &lines.failed);
    (lines.acked.len() as u64, lost)
}

// ---------------------------------------------------------------------------------------
// Backlog full
// ---------------------------------------------------------------------------------------

/// `max_backlog` of the backlog scenarios, the smallest the options accept.
const SMALL_BACKLOG_BYTES: u64 = 1 << 20;
/// Bytes of each write in the backlog and disk-full scenarios: a whole number of pages, so
/// that a full tmpfs refuses a write whole.
const CHUNK_BYTES: usize = 64 << 10;

/// Bytes of the header line at the start of each chunk.
const CHUNK_HEADER_BYTES: usize = 15;

/// Returns chunk `id` of a stream: a header line naming the id, then filler that differs
/// between ids. The filler bytes are 0x80 to 0xBF, never ASCII, so a chunk cut short ends
/// exactly where the next header starts.
fn chunk(id: u64) -> Vec<u8> {
    let mut data = format!("chunk {id:08}\n").into_bytes();
    debug_assert_eq!(data.len(), CHUNK_HEADER_BYTES);
    data.extend((data.len()..CHUNK_BYTES).map(|i| 0x80 | ((i as u64 * 31 + id) % 64) as u8));
    data
}

/// Returns how many acknowledged chunks, or acknowledged bytes of chunks written short, are
/// missing from `content`. Asserts that every chunk in it is undamaged, in the order
/// [`count_lost_ids`] requires, and whole unless its write failed or was short.
fn count_lost_chunks(content: &[u8], chunks: &Chunks) -> u64 {
    let mut lengths = BTreeMap::new();
    let mut ids = Vec::new();
    let mut position = 0;
    while position < content.len() {
        let rest = &content[position..];
        let header = String::from_utf8_lossy(&rest[..CHUNK_HEADER_BYTES.min(rest.len())]);
        let id: u64 = header
            .strip_prefix("chunk ")
            .and_then(|rest| rest.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("no chunk header at byte {position}: {header:?}"));
        let expected = chunk(id);
        let len = rest
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        let is_whole_expected = chunks.acked.contains(&id);
        assert!(
            len == CHUNK_BYTES || !is_whole_expected,
            "chunk {id} at byte {position} is damaged or cut after {len} bytes"
        );
        lengths.insert(id, len);
        ids.push(id);
        position += len;
    }
    let mut written: Vec<u64> = chunks.failed.clone();
    written.extend(chunks.short.iter().map(|(id, _)| *id));
    let mut lost = count_lost_ids(ids.into_iter(), &chunks.acked, &written);
    for (id, acked_bytes) in &chunks.short {
        if lengths.get(id).is_none_or(|len| len < acked_bytes) {
            lost += 1;
        }
    }
    lost
}

/// Chunks appended to one file through the mount, with the outcome of each write(2).
struct Chunks {
    file: File,
    acked: Vec<u64>,
    /// Chunks whose write returned fewer bytes than the chunk has, and that count.
    short: Vec<(u64, usize)>,
    failed: Vec<u64>,
}

impl Chunks {
    fn open(path: &Path) -> Chunks {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"));
        Chunks {
            file,
            acked: Vec::new(),
            short: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Appends the next chunk with one write(2), and returns the errno when it failed. A
    /// short write counts as success for the bytes written, as on a local disk that fills.
    fn append(&mut self) -> Result<(), i32> {
        let id = (self.acked.len() + self.short.len() + self.failed.len()) as u64;
        let data = chunk(id);
        match self.file.write(&data) {
            Ok(n) if n == data.len() => {
                self.acked.push(id);
                Ok(())
            }
            Ok(n) => {
                self.short.push((id, n));
                Ok(())
            }
            Err(e) => {
                self.failed.push(id);
                Err(e.raw_os_error().unwrap_or(0))
            }
        }
    }

    /// Returns the writes that returned success, whole or short.
    fn acknowledged(&self) -> u64 {
        (self.acked.len() + self.short.len()) as u64
    }

    /// Appends chunks until a write fails and returns its errno. Panics when `max_bytes`
    /// were written without an error.
    fn append_until_error(&mut self, max_bytes: u64) -> i32 {
        let limit = max_bytes / CHUNK_BYTES as u64;
        loop {
            if let Err(errno) = self.append() {
                return errno;
            }
            assert!(
                (self.acked.len() as u64) < limit,
                "{max_bytes} bytes written without an error"
            );
        }
    }

    /// Retries the next chunk until its write succeeds, and returns how long that took.
    fn time_until_append_succeeds(&mut self) -> Duration {
        let started = Instant::now();
        wait_until(DEADLINE, "a write to succeed after the fault", || {
            self.append().map_err(|errno| format!("errno {errno}"))
        });
        started.elapsed()
    }
}

/// `when_full=fail`: once the backlog of a stopped S3 server reaches `max_backlog`, writes
/// fail with ENOSPC, and they succeed again once the server is back. `when_full=block`:
/// the writer waits instead, and finishes once the server is back.
#[test]
fn s3_backlog_full() {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let mut figures = Figures::default();

    // when_full=fail
    let dirs = TestDirs::new(0);
    let extra = ["max_backlog=1M", "when_full=fail"];
    let options = s3_options(&garage, "full-fail", Mode::Async, &extra);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let mut chunks = Chunks::open(&dirs.mnt.join("bulk.bin"));
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");
    let fault = Outage::Stop.begin(&garage);
    let errno = chunks.append_until_error(4 * SMALL_BACKLOG_BYTES);
    assert_eq!(
        errno,
        libc::ENOSPC,
        "when_full=fail: errno of a write to a full backlog"
    );
    let acked_bytes = chunks.acked.len() as u64 * CHUNK_BYTES as u64;
    assert!(
        acked_bytes + CHUNK_BYTES as u64 >= SMALL_BACKLOG_BYTES,
        "ENOSPC after {acked_bytes} bytes, below max_backlog"
    );
    fault.end(&mut garage);
    let recovered = chunks.time_until_append_succeeds();
    for _ in 0..4 {
        chunks.append().expect("write after the backlog drained");
    }
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the outage");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the outage: {out}");
    let content = fs::read(dirs.backing.join("bulk.bin")).expect("read bulk.bin");
    let lost = count_lost_chunks(&content, &chunks);
    figures.record(chunks.acknowledged(), lost, recovered);
    drop(chunks);
    mount.unmount();

    // when_full=block
    let dirs = TestDirs::new(0);
    let extra = ["max_backlog=1M", "when_full=block"];
    let options = s3_options(&garage, "full-block", Mode::Async, &extra);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let mut chunks = Chunks::open(&dirs.mnt.join("bulk.bin"));
    let fault = Outage::Stop.begin(&garage);
    let count = 2 * SMALL_BACKLOG_BYTES / CHUNK_BYTES as u64;
    let writer = thread::spawn(move || {
        for _ in 0..count {
            chunks.append().expect("write with when_full=block");
        }
        chunks
    });
    wait_until(DEADLINE, "the backlog to fill", || {
        let status = common::status(&dirs.mnt)?;
        match status.mirrors[0].lag_bytes >= SMALL_BACKLOG_BYTES {
            true => Ok(()),
            false => Err(format!("{status:?}")),
        }
    });
    assert!(
        !writer.is_finished(),
        "when_full=block: the writer finished during the outage"
    );
    fault.end(&mut garage);
    let started = Instant::now();
    let chunks = join_within(writer, "the blocked writer");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the outage");
    let recovered = started.elapsed();
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the outage: {out}");
    let content = fs::read(dirs.backing.join("bulk.bin")).expect("read bulk.bin");
    let lost = count_lost_chunks(&content, &chunks);
    figures.record(chunks.acknowledged(), lost, recovered);
    drop(chunks);
    mount.unmount();
    figures.report("s3_backlog_full");
}

// ---------------------------------------------------------------------------------------
// Disk full
// ---------------------------------------------------------------------------------------

/// Size of the tmpfs that contains the backing directory and the state directory.
const SMALL_DISK_BYTES: u64 = 32 << 20;
/// Bytes of the ballast files deleted to free space, all together.
const BALLAST_BYTES: usize = 8 << 20;

#[test]
fn disk_full_sync() {
    disk_full(Mode::Sync);
}

#[test]
fn disk_full_async() {
    disk_full(Mode::Async);
}

/// Fills a 32 MiB tmpfs that contains the backing directory and the journal. The writer
/// must get ENOSPC, while reads, listings and status still work. Once a ballast file is
/// deleted through the mount, writing resumes and the mirror matches. That repeats once
/// per 5 rounds, with one ballast file each time. The journal then recovers whole at the
/// next mount.
fn disk_full(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let _disk = SmallTmpfs::new(&dirs.backing, SMALL_DISK_BYTES);
    let mut options = dirs.options(mode);
    options.push("segment_size=1M".to_string());
    let mount = Mount::with_options(&dirs, &options);
    let other = b"another file, written before the disk filled\n";
    fs::write(dirs.mnt.join("other.txt"), other).expect("write other.txt");
    let cycles = fault_cycles() as usize;
    let ballast_bytes = BALLAST_BYTES / cycles / CHUNK_BYTES * CHUNK_BYTES;
    let ballast: Vec<u8> = (0..ballast_bytes).map(|i| (i % 253) as u8).collect();
    let ballast_names: Vec<String> = (0..cycles).map(|n| format!("ballast-{n}.bin")).collect();
    for name in &ballast_names {
        fs::write(dirs.mnt.join(name), &ballast).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before filling the disk");

    let mut chunks = Chunks::open(&dirs.mnt.join("fill.bin"));
    let mut figures = Figures::default();
    let mut counted = 0;
    for (cycle, name) in ballast_names.iter().enumerate() {
        let errno = chunks.append_until_error(SMALL_DISK_BYTES);
        assert_eq!(
            errno,
            libc::ENOSPC,
            "errno of a write to the full disk: {}",
            std::io::Error::from_raw_os_error(errno)
        );
        // A second write fails the same way: the disk is still full.
        let again = chunks.append().expect_err("a write to the full disk");
        assert_eq!(again, libc::ENOSPC, "second write to the full disk");

        assert_eq!(
            fs::read(dirs.mnt.join("other.txt")).expect("read other.txt while the disk is full"),
            other
        );
        assert_eq!(
            common::file_sha256(&dirs.mnt.join(name)),
            common::sha256_hex(&ballast),
            "{name} read while the disk is full"
        );
        let mut expected: Vec<&str> = vec!["fill.bin", "other.txt"];
        expected.extend(ballast_names[cycle..].iter().map(String::as_str));
        expected.sort();
        assert_eq!(common::list_dir(&dirs.mnt), expected);
        let status = mount.status();
        assert_eq!(status.mirrors.len(), 1, "{status:?}");

        fs::remove_file(dirs.mnt.join(name)).expect("delete a ballast file to free space");
        let recovered = chunks.time_until_append_succeeds();
        for _ in 0..4 {
            chunks.append().expect("write after freeing space");
        }
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync after freeing space");
        let content = fs::read(dirs.backing.join("fill.bin")).expect("read fill.bin");
        let lost = count_lost_chunks(&content, &chunks);
        figures.record(chunks.acknowledged() - counted, lost, recovered);
        counted = chunks.acknowledged();
    }
    figures
        .extra
        .push(format!("failed_writes={}", chunks.failed.len()));
    figures
        .extra
        .push(format!("short_writes={}", chunks.short.len()));
    drop(chunks);
    assert_mirrors_match(&mount);
    let head = mount.status().head_seq;
    mount.unmount();

    // The journal recovers whole: no record is cut, and the mirror stays level.
    let again = Mount::with_options(&dirs, &options);
    let status = again.status();
    assert_eq!(
        status.head_seq, head,
        "journal head after the remount: {status:?}"
    );
    assert_eq!(status.mirrors[0].confirmed_seq, head, "{status:?}");
    assert_mirrors_match(&again);
    again.unmount();
    figures.report(&format!("disk_full_{}", mode.as_str()));
}

/// The active segment has just reached `segment_size`, so the next record starts a new
/// segment, and then the disk fills from outside the mount. Creating that segment fails,
/// but the delete that frees space must still be journaled, in the reserve of the active
/// segment.
#[test]
fn delete_on_full_disk_at_roll() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let _disk = SmallTmpfs::new(&dirs.backing, 16 << 20);
    let mut options = dirs.options(Mode::Async);
    options.push("segment_size=1M".to_string());
    let mount = Mount::with_options(&dirs, &options);
    let log = dirs.mnt.join("app.log");
    let line = [b'z'; 512];
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open app.log");
    // Records under 1 KiB are copied into the segment, so the active one grows by each.
    let active_len = || {
        let (_, newest) = state_dir::segments(&dirs).pop().expect("a segment");
        fs::metadata(&newest).expect("stat segment").len()
    };
    while active_len() < 1 << 20 {
        file.write_all(&line).expect("write app.log");
    }
    drop(file);
    assert_eq!(state_dir::segments(&dirs).len(), 1, "no roll yet");

    let filler = dirs.backing.join(STATE_DIR).join("filler");
    let mut out = File::create(&filler).expect("create filler");
    let chunk = vec![0u8; 64 << 10];
    let errno = loop {
        if let Err(e) = out.write_all(&chunk) {
            break e.raw_os_error();
        }
    };
    assert_eq!(
        errno,
        Some(libc::ENOSPC),
        "filling the disk outside the mount"
    );
    drop(out);

    fs::remove_file(&log).expect("delete app.log on the full disk");
    assert!(!dirs.backing.join("app.log").exists());
    fs::remove_file(&filler).expect("remove filler");
    fs::write(dirs.mnt.join("after.log"), line).expect("write after freeing space");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after freeing space");
    assert_mirrors_match(&mount);
    mount.unmount();
}

/// Appends writes of `len` bytes to `file` until one fails, and returns its errno.
fn append_until_error(file: &mut File, len: usize) -> Option<i32> {
    let data = vec![b'w'; len];
    for _ in 0..(64 << 20) / len {
        if let Err(e) = file.write_all(&data) {
            return e.raw_os_error();
        }
    }
    None
}

/// The state directory is on its own small disk and the mirror is down, so the journal
/// cannot shrink. Small writes fill the disk down to the last bytes they fit in, and the
/// unlink of a file with a long name, whose record is larger than theirs, must still find
/// room in the reserve.
#[test]
fn delete_after_writes_fill_state() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let state = dirs.root.join("state");
    fs::create_dir(&state).expect("create state dir");
    let _disk = SmallTmpfs::new(&state, 4 << 20);
    let mut options = dirs.options(Mode::Async);
    options.push(format!("state={}", state.display()));
    options.push("segment_size=1M".to_string());
    let mount = Mount::with_options(&dirs, &options);
    let mut read_only = ReadOnlyBind::new(&dirs.mirrors[0]);
    let long_name = format!("{}.log", "n".repeat(200));
    fs::write(dirs.mnt.join(&long_name), "to delete\n").expect("write the long-named file");

    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dirs.mnt.join("a"))
        .expect("open a");
    for len in [100, 10, 1] {
        assert_eq!(
            append_until_error(&mut file, len),
            Some(libc::ENOSPC),
            "errno of {len}-byte writes to the full state disk"
        );
    }
    drop(file);

    fs::remove_file(dirs.mnt.join(&long_name)).expect("delete the long-named file");
    assert!(!dirs.backing.join(&long_name).exists());
    read_only.remove();
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync once the mirror is writable");
    // The confirmed segments go within a second (housekeeping), and then writes fit again.
    wait_until(
        Duration::from_secs(30),
        "a write to fit once the journal released its segments",
        || {
            fs::write(
                dirs.mnt.join("after.log"),
                "written after the mirror caught up\n",
            )
            .map_err(|e| e.to_string())
        },
    );
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the last write");
    assert_mirrors_match(&mount);
    mount.unmount();
}

// ---------------------------------------------------------------------------------------
// Distributed store
// ---------------------------------------------------------------------------------------

/// Records acknowledged between two checks that writes continue.
const PROGRESS_ACKS: u64 = 50;

/// A three-node cluster with replication factor 3 behind a sync-mode mount. Nodes other
/// than the one the mount talks to are killed with SIGKILL while the crash writer runs:
/// writes continue, and after the node returns verify passes and a restore through the
/// node that was down contains every acknowledged write.
#[test]
fn cluster_node_loss_sync() {
    if !common::can_mount() {
        return;
    }
    let Some(mut cluster) = GarageCluster::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let spec = format!("s3://{}/cluster", cluster.bucket);
    let options = vec![
        format!("mirror={spec}"),
        cluster.options(0),
        "mode=sync".to_string(),
    ];
    let mount = Mount::with_env(&dirs, &options, &cluster.env(0));
    let acked_path = dirs.root.join("acked.txt");
    let writer = crash_writer::start(&dirs.mnt, &acked_path);
    crash_writer::wait_for_acks(&acked_path, PROGRESS_ACKS, DEADLINE);

    let kills = fault_cycles();
    let mut figures = Figures::default();
    let mut last_killed = 1;
    for kill in 0..kills {
        let node = 1 + (kill as usize % (garage_cluster::NODES - 1));
        cluster.kill_node(node);
        let at_kill = crash_writer::read_acked(&acked_path);
        crash_writer::wait_for_acks(&acked_path, at_kill + PROGRESS_ACKS, DEADLINE);
        let during = crash_writer::read_acked(&acked_path) - at_kill;
        cluster.restart_node(node);
        let started = Instant::now();
        let at_restart = crash_writer::read_acked(&acked_path);
        crash_writer::wait_for_acks(&acked_path, at_restart + PROGRESS_ACKS, DEADLINE);
        figures.faults += 1;
        figures.recover.push(started.elapsed());
        figures
            .extra
            .push(format!("acked_while_node{node}_down={during}"));
        last_killed = node;
    }
    drop(writer);
    let acked = crash_writer::read_acked(&acked_path);
    let started = Instant::now();
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the node returned");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the node returned: {out}");
    let verified = started.elapsed();
    crash_writer::assert_acked_records(&dirs.backing, acked, "backing");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();

    let restored = dirs.root.join("restored");
    let restore_options = cluster.options(last_killed);
    let out = logmirror_env(
        &[
            "restore",
            &spec,
            path_str(&restored),
            "-o",
            &restore_options,
        ],
        &cluster.env(last_killed),
    );
    assert_eq!(out.code(), 0, "restore through node {last_killed}: {out}");
    let lost = crash_writer::count_lost(&restored, acked, "restored");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
    figures.acknowledged = acked;
    figures.lost = lost;
    figures
        .extra
        .push(format!("verify_ms={}", verified.as_millis()));
    figures.report("cluster_node_loss_sync");
}

/// Two mirrors, a directory and an S3 bucket, in sync mode with `ack=1`, and
/// `on_mirror_failure=fail` so that a write that waited for the down mirror would fail.
/// First the S3 server is stopped, then the directory is made read-only: writes continue
/// both times, and the mirror that was down catches up afterwards.
#[test]
fn two_mirrors_ack_one_down() {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(1);
    let options = vec![
        format!("mirror=dir:{}", dirs.mirrors[0].display()),
        format!("mirror=s3://{}/two", garage.bucket),
        garage.options(),
        "mode=sync".to_string(),
        "ack=1".to_string(),
        "sync_timeout=5s".to_string(),
        "on_mirror_failure=fail".to_string(),
    ];
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let mut figures = Figures::default();
    let mut s3_lines = Lines::open(&dirs.mnt.join("s3-outage.log"), "s3");
    s3_lines.append_ok(20);

    // The S3 mirror (index 1) down.
    let fault = Outage::Stop.begin(&garage);
    wait_for_lag(&dirs.mnt, 1, || s3_lines.append_ok(1));
    s3_lines.append_ok(PROGRESS_ACKS as usize);
    let content = common::read_text(&dirs.mirrors[0].join("s3-outage.log"));
    let on_directory = count_lost_lines(&content, "s3", &s3_lines.acked, &s3_lines.failed);
    assert_eq!(
        on_directory, 0,
        "acknowledged lines missing from the directory mirror"
    );
    fault.end(&mut garage);
    let recovered = time_until_synced(&mount);
    let (acked, lost) = verify_lines(&mount, &dirs.backing, &s3_lines);
    figures.record(acked, lost, recovered);

    // The directory mirror (index 0) down. The file is created after the fault, because
    // the mirror could still write files it already has open.
    let mut bind = common::ReadOnlyBind::new(&dirs.mirrors[0]);
    let mut dir_lines = Lines::open(&dirs.mnt.join("dir-outage.log"), "dir");
    wait_for_lag(&dirs.mnt, 0, || dir_lines.append_ok(1));
    dir_lines.append_ok(PROGRESS_ACKS as usize);
    assert!(
        !dirs.mirrors[0].join("dir-outage.log").exists(),
        "dir-outage.log reached the read-only mirror"
    );
    bind.remove();
    let recovered = time_until_synced(&mount);
    let (acked, lost) = verify_lines(&mount, &dirs.backing, &dir_lines);
    figures.record(acked, lost, recovered);
    drop(s3_lines);
    drop(dir_lines);
    let tree = assert_mirrors_match(&mount);
    mount.unmount();
    assert!(tree.entries.contains_key("dir-outage.log"));
    figures.report("two_mirrors_ack_one_down");
}

/// Calls `append` until status shows mirror `index` behind by at least one record.
fn wait_for_lag(mnt: &Path, index: usize, mut append: impl FnMut()) {
    wait_until(DEADLINE, "the mirror that is down to fall behind", || {
        append();
        let status = common::status(mnt)?;
        match status.mirrors[index].lag_records {
            0 => Err(format!("{status:?}")),
            _ => Ok(()),
        }
    });
}
