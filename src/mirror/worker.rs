//! Mirror workers: one thread per mirror reads the journal from the mirror's cursor, applies
//! records in batches, flushes, and reports each confirmed batch to `acks`. A failure is
//! retried with capped backoff; a mirror that missed changes is resynced from the backing
//! tree while writers are held back.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Mirror;
use super::acks::Acks;
use super::cursor::{self, Cursor};
use super::routing::{Route, reselect, resync_for_reselect, route};
use crate::config::STATE_DIR_NAME;
use crate::journal::{self, Journal, Position, Reader, Record, RelPath, Seq};
use crate::rules::Rules;

/// Records applied before a flush; many sync-mode writers share one flush (group commit).
const BATCH_MAX_RECORDS: usize = 4096;
/// Payload bytes applied before a flush.
const BATCH_MAX_BYTES: u64 = 8 << 20;
/// Writes applied in one call to a mirror that stores their data, after which the journal
/// may drop that data. A batch can contain more data than the journal's memory budget
/// ([`journal::DATA_CACHE_BYTES`]), so waiting for its end would push new writes out of it.
const RELEASE_RUN_RECORDS: usize = 256;
/// How long an async-mode worker lets records gather before it applies them, so that one
/// write to the mirror serves many records. The linger adds to the lag.
const ASYNC_LINGER: Duration = Duration::from_millis(20);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a worker rewrites its cursor file while records flow.
const CURSOR_INTERVAL: Duration = Duration::from_secs(1);
/// Failed attempts at one record, because a path it needs is missing on the mirror, after
/// which the mirror is resynced instead. The mirror lost content that the record relies on
/// (a directory deleted by hand, a replaced disk), so retrying cannot succeed.
const MISSING_PATH_ATTEMPTS: u32 = 3;
/// How often a failing mirror is logged again at warn.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// State of a mirror as shown in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorState {
    /// Confirmed everything, or less than a second behind.
    Ok,
    /// Behind by more than a second, without errors.
    Lagging,
    /// The latest attempt failed; retrying.
    Down,
}

impl MirrorState {
    /// Returns the name shown in status, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorState::Ok => "ok",
            MirrorState::Lagging => "lagging",
            MirrorState::Down => "down",
        }
    }
}

impl std::fmt::Display for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Progress of one mirror, read by status and updated by its worker.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub confirmed: (Seq, Position),
    pub last_error: Option<String>,
    /// Wall-clock time of `last_error`, in nanoseconds since the Unix epoch.
    pub last_error_at_ns: Option<u64>,
    pub failing_since: Option<Instant>,
    /// Failed attempts since the mirror last worked; 0 while it works.
    pub failed_attempts: u64,
    /// Failed attempts since the mount.
    pub errors_total: u64,
    /// Commit time of the oldest record the mirror has not confirmed, as far as the worker
    /// has read.
    pub oldest_unconfirmed_ns: Option<u64>,
    pub needs_resync: bool,
    pub resyncing: bool,
    pub last_verify: Option<LastVerify>,
    /// Folds of an S3 mirror's history since the mount; `None` without `retention=`.
    pub last_fold: Option<LastFold>,
}

/// Source of a verify: the command or the daemon's schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyTrigger {
    /// `logmirror verify`.
    #[default]
    Command,
    /// The daemon's own verify every `verify_interval`.
    Periodic,
}

/// Outcome of the latest verify of a mirror.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastVerify {
    /// Wall-clock time of the verify, in nanoseconds since the Unix epoch.
    pub at_ns: u64,
    #[serde(default)]
    pub trigger: VerifyTrigger,
    pub differences: u64,
    /// Reason the comparison failed, if it did.
    pub error: Option<String>,
    /// A resync from the backing tree was scheduled because of the differences.
    #[serde(default)]
    pub resync_scheduled: bool,
}

/// Folds of an S3 mirror's history older than `retention` since the mount.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LastFold {
    /// Wall-clock time the latest fold started, in nanoseconds since the Unix epoch.
    pub attempted_at_ns: u64,
    /// Reason the latest fold failed, if it did.
    pub error: Option<String>,
    /// Number of the newest snapshot stored since the mount; 0 when none was.
    pub snapshot: u64,
    /// Wall-clock time that snapshot was stored, in nanoseconds since the Unix epoch.
    pub stored_at_ns: u64,
    /// Journal objects removed from the bucket since the mount.
    pub objects_removed: u64,
}

/// One mirror and its progress.
pub struct MirrorSlot {
    pub index: usize,
    pub name: String,
    pub mirror: Mutex<Box<dyn Mirror>>,
    pub progress: Mutex<Progress>,
    /// Findings of an S3 mirror's probe of its store at open; `None` for other mirrors.
    pub store: Option<super::s3::StoreReport>,
    /// The mirror's readable copies, reachable without the mirror lock.
    pub copies: Option<Arc<super::Copies>>,
}

impl MirrorSlot {
    pub fn progress(&self) -> Progress {
        self.progress.lock().expect("progress lock").clone()
    }

    /// Returns the state and lag in seconds against `head`.
    pub fn state(&self, head: Seq) -> (MirrorState, f64) {
        let progress = self.progress();
        let lag_seconds = if progress.confirmed.0 >= head {
            0.0
        } else {
            let now = now_ns();
            progress
                .oldest_unconfirmed_ns
                .map(|t| now.saturating_sub(t) as f64 / 1e9)
                .unwrap_or(0.0)
        };
        let state = if progress.failing_since.is_some() {
            MirrorState::Down
        } else if progress.confirmed.0 < head && (lag_seconds >= 1.0 || progress.needs_resync) {
            MirrorState::Lagging
        } else {
            MirrorState::Ok
        };
        (state, lag_seconds)
    }

    pub fn cursor(&self, journal_id: u64) -> Cursor {
        let progress = self.progress();
        Cursor {
            mirror: self.name.clone(),
            journal_id,
            seq: progress.confirmed.0.0,
            position: progress.confirmed.1.0,
            needs_resync: progress.needs_resync,
        }
    }
}

/// A stop flag that also wakes sleeping workers.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    pub fn set(&self) {
        *self.stopped.lock().expect("stop lock") = true;
        self.changed.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *self.stopped.lock().expect("stop lock")
    }

    /// Sleeps for `duration` unless stopped first; returns whether stopped.
    pub fn sleep(&self, duration: Duration) -> bool {
        let guard = self.stopped.lock().expect("stop lock");
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, duration, |stopped| !*stopped)
            .expect("stop lock");
        *guard
    }
}

/// State shared by every worker.
pub struct Context {
    pub journal: Arc<Journal>,
    pub acks: Arc<Acks>,
    /// Held exclusively during a resync so that the backing tree does not change.
    pub namespace: Arc<RwLock<()>>,
    pub backing: PathBuf,
    pub state_dir: PathBuf,
    /// Hide the state directory's name at the backing root from mirrors.
    pub skip_state_dir: bool,
    pub stop: Stop,
    /// Path rules that select the paths each mirror receives.
    pub rules: Arc<Rules>,
}

impl Context {
    fn skip_at_root(&self) -> Vec<&OsStr> {
        if self.skip_state_dir {
            vec![OsStr::new(STATE_DIR_NAME)]
        } else {
            Vec::new()
        }
    }

    /// Writes the cursor of a slot durably. A failure is logged and otherwise ignored: the
    /// cursor on disk stays behind, so the mirror gets records again that it already has.
    pub fn store_cursor(&self, slot: &MirrorSlot) {
        let mut cursor = slot.cursor(self.journal.id());
        cursor.needs_resync |= self.acks.is_resync_requested(slot.index);
        if let Err(e) = cursor::store(&self.state_dir, &cursor, true) {
            log::warn!("failed to write cursor of mirror {}: {e}", slot.name);
        }
    }
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Starts the worker thread of one mirror.
pub fn spawn(ctx: Arc<Context>, slot: Arc<MirrorSlot>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("mirror-{}", slot.index))
        .spawn(move || Worker::new(ctx, slot).run())
}

struct Worker {
    ctx: Arc<Context>,
    slot: Arc<MirrorSlot>,
    reader: Option<Reader>,
    batch: Vec<(Record, Position)>,
    /// Records of `batch` already applied, so a retry resumes after them. A failed run of
    /// writes sets it to the start that the mirror returned in its error.
    applied: usize,
    backoff: Duration,
    /// Seq of the record whose latest attempts failed on a missing path, and their count.
    missing_path_failures: Option<(Seq, u32)>,
    last_cursor_write: Instant,
    last_failure_log: Option<Instant>,
    /// Records applied to the mirror since its last flush (async mode).
    unflushed: Option<Unflushed>,
}

/// Summary of the records applied to a mirror that are not durable there yet.
struct Unflushed {
    /// Newest applied record and its end position.
    last: (Seq, Position),
    /// Time the oldest of them was applied.
    since: Instant,
    /// Payload bytes of them.
    bytes: u64,
}

impl Worker {
    fn new(ctx: Arc<Context>, slot: Arc<MirrorSlot>) -> Worker {
        Worker {
            ctx,
            slot,
            reader: None,
            batch: Vec::new(),
            applied: 0,
            backoff: BACKOFF_MIN,
            missing_path_failures: None,
            last_cursor_write: Instant::now(),
            last_failure_log: None,
            unflushed: None,
        }
    }

    fn run(mut self) {
        while !self.ctx.stop.is_set() {
            let needs_resync = self.take_resync_request();
            let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if needs_resync {
                    self.resync()
                } else {
                    self.step()
                }
            }));
            let result = match attempt {
                Ok(result) => result,
                Err(panic) => {
                    self.halt_after_panic(panic.as_ref());
                    return;
                }
            };
            if let Err(message) = result {
                self.failed(message);
                if self.ctx.stop.sleep(self.backoff) {
                    break;
                }
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
            }
        }
        if let Err(message) = self.flush() {
            log::warn!(
                "mirror {}: final flush at stop failed: {message}; the records after seq {} are sent again at the next start",
                self.slot.name,
                self.slot.progress().confirmed.0
            );
        }
        self.ctx.store_cursor(&self.slot);
    }

    /// Returns whether a resync is due, marking the mirror when `fs` took a resync ticket
    /// that its latest resync does not cover. The mark is written to the cursor at once, so
    /// that it survives a restart.
    fn take_resync_request(&mut self) -> bool {
        let requested = self.ctx.acks.is_resync_requested(self.slot.index);
        let was_marked = {
            let mut progress = self.slot.progress.lock().expect("progress lock");
            let was_marked = progress.needs_resync;
            progress.needs_resync |= requested;
            was_marked
        };
        if requested && !was_marked {
            self.ctx.store_cursor(&self.slot);
        }
        was_marked || requested
    }

    /// Applies the next batch of records, if any, and flushes when a flush is due.
    ///
    /// Sync mode flushes after every batch, because writers wait for the confirmation. Async
    /// mode flushes once `flush_interval` passed, when the journal is idle, when a client
    /// waits for the mirror (`logmirror sync`, unmount), or when half of `max_backlog` is
    /// unflushed. An fsync per 20 ms batch would stall writers that share the mirror's disk.
    fn step(&mut self) -> Result<(), String> {
        if self.batch.is_empty() && !self.fill_batch()? {
            if self.unflushed.is_some() {
                self.flush()?;
            }
            self.slot
                .mirror
                .lock()
                .expect("mirror lock")
                .idle()
                .map_err(|e| format!("idle upkeep: {}", error_chain(&e)))?;
            if self.last_cursor_write.elapsed() >= CURSOR_INTERVAL {
                self.ctx.store_cursor(&self.slot);
                self.last_cursor_write = Instant::now();
            }
            return Ok(());
        }
        self.apply_batch()?;
        let (last, position) = self
            .batch
            .last()
            .map(|(r, p)| (r.seq, *p))
            .expect("batch not empty");
        let bytes: u64 = self.batch.iter().map(|(r, _)| op_bytes(r)).sum();
        self.batch.clear();
        self.applied = 0;
        let unflushed = self.unflushed.get_or_insert_with(|| Unflushed {
            last: (last, position),
            since: Instant::now(),
            bytes: 0,
        });
        unflushed.last = (last, position);
        unflushed.bytes += bytes;
        if self.flush_due() {
            self.flush()?;
        }
        Ok(())
    }

    fn flush_due(&self) -> bool {
        let Some(unflushed) = &self.unflushed else {
            return false;
        };
        let policy = self.ctx.acks.policy();
        self.ctx.acks.serves_sync(self.slot.index)
            || unflushed.since.elapsed() >= policy.flush_interval
            || unflushed.bytes >= policy.max_backlog_bytes / 2
            || self
                .ctx
                .acks
                .flush_requested(self.slot.progress().confirmed.0)
    }

    /// Flushes the applied records to durable storage on the mirror and confirms them.
    fn flush(&mut self) -> Result<(), String> {
        let Some(unflushed) = &self.unflushed else {
            return Ok(());
        };
        let (last, position) = unflushed.last;
        self.slot
            .mirror
            .lock()
            .expect("mirror lock")
            .flush()
            .map_err(|e| format!("flush: {}", error_chain(&e)))?;
        self.unflushed = None;
        self.confirm(last, position);
        Ok(())
    }

    /// Reads records after the confirmed one; returns false when there are none yet.
    fn fill_batch(&mut self) -> Result<bool, String> {
        let confirmed = self.slot.progress().confirmed.0;
        let applied = self.unflushed.as_ref().map_or(confirmed, |u| u.last.0);
        let head = self
            .ctx
            .journal
            .wait_beyond(applied, Duration::from_millis(100));
        if head <= applied {
            return Ok(false);
        }
        let lingers = !self.ctx.acks.serves_sync(self.slot.index) || self.ctx.acks.is_degraded();
        if lingers && head.0 - applied.0 < BATCH_MAX_RECORDS as u64 {
            // A plain sleep: waiting on the journal would wake this thread at every append.
            std::thread::sleep(ASYNC_LINGER);
        }
        if self.reader.is_none() {
            match self.ctx.journal.read_after(confirmed) {
                Ok(reader) => self.reader = Some(reader),
                Err(journal::Error::Released { .. }) => {
                    log::warn!(
                        "mirror {}: the journal no longer holds the records after seq {confirmed}; resyncing from the backing tree",
                        self.slot.name
                    );
                    self.slot
                        .progress
                        .lock()
                        .expect("progress lock")
                        .needs_resync = true;
                    return Ok(false);
                }
                Err(e) => {
                    log::error!(
                        "mirror {}: opening the journal after seq {confirmed} failed: {}; resyncing the mirror from the backing tree",
                        self.slot.name,
                        error_chain(&e)
                    );
                    self.slot
                        .progress
                        .lock()
                        .expect("progress lock")
                        .needs_resync = true;
                    return Ok(false);
                }
            }
        }
        let reader = self.reader.as_mut().expect("reader set above");
        let mut bytes = 0u64;
        while self.batch.len() < BATCH_MAX_RECORDS && bytes < BATCH_MAX_BYTES {
            match reader.next() {
                Some(Ok((record, position))) => {
                    bytes += op_bytes(&record);
                    self.batch.push((record, position));
                }
                Some(Err(e)) => {
                    self.reader = None;
                    self.batch.clear();
                    self.unflushed = None;
                    log::error!(
                        "mirror {}: journal read failed: {e}; resyncing the mirror from the backing tree",
                        self.slot.name
                    );
                    self.slot
                        .progress
                        .lock()
                        .expect("progress lock")
                        .needs_resync = true;
                    return Ok(false);
                }
                None => break,
            }
        }
        if let Some((first, _)) = self.batch.first() {
            self.slot
                .progress
                .lock()
                .expect("progress lock")
                .oldest_unconfirmed_ns
                .get_or_insert(first.committed_at_ns);
        }
        Ok(!self.batch.is_empty())
    }

    fn apply_batch(&mut self) -> Result<(), String> {
        let slot = self.slot.clone();
        let mut mirror = slot.mirror.lock().expect("mirror lock");
        let stores_data = mirror.stores_applied_data();
        while self.applied < self.batch.len() {
            let run = self.write_run_len(slot.index);
            if run > 0 {
                let run = if stores_data {
                    run.min(RELEASE_RUN_RECORDS)
                } else {
                    run
                };
                self.apply_write_run(mirror.as_mut(), run)?;
                if stores_data {
                    self.release_data(self.batch[self.applied - 1].0.seq);
                }
                continue;
            }
            let (record, _) = &self.batch[self.applied];
            let seq = record.seq;
            let route = route(&self.ctx.rules, slot.index, &record.op);
            let result = match route {
                Route::Apply => mirror.apply_record(record),
                Route::Skip => Ok(()),
                // NOTE: an S3 mirror skips attribute changes of a path it gets only as a directory.
                Route::ApplyIfPresent if slot.copies.is_some() => Ok(()),
                Route::ApplyIfPresent => match mirror.apply_record(record) {
                    Err(e) if missing_path(&e).is_some() => Ok(()),
                    other => other,
                },
                Route::Reselect => match reselect(&self.ctx, slot.index, mirror.as_mut(), record) {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        resync_for_reselect(&slot, record);
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = result {
                if let Some(path) = missing_path(&e) {
                    self.count_missing_path(seq, path);
                }
                return Err(format!("seq {seq}: {}", error_chain(&e)));
            }
            self.applied += 1;
        }
        mirror.end_batch();
        if stores_data {
            let (last, _) = self.batch.last().expect("batch not empty");
            self.release_data(last.seq);
        }
        Ok(())
    }

    /// Lets the journal drop the write data this mirror no longer reads, up to record `seq`,
    /// once no other mirror needs it either.
    fn release_data(&self, seq: Seq) {
        let unneeded = self.ctx.acks.data_done(self.slot.index, seq);
        self.ctx.journal.release_data_up_to(unneeded);
    }

    /// Returns how many records from `applied` on are writes that mirror `index` applies.
    fn write_run_len(&self, index: usize) -> usize {
        self.batch[self.applied..]
            .iter()
            .take_while(|(record, _)| {
                matches!(record.op, journal::Op::Write { .. })
                    && route(&self.ctx.rules, index, &record.op) == Route::Apply
            })
            .count()
    }

    /// Applies the `run` write records from `applied` on as one call, so that the mirror can
    /// merge them. On failure the mirror's error sets where the retry starts. The run's first
    /// record is always a safe start for the directory mirror, because the run contains no
    /// namespace op and applying it again repeats each file's writes in their order.
    fn apply_write_run(&mut self, mirror: &mut dyn Mirror, run: usize) -> Result<(), String> {
        let start = self.applied;
        let records: Vec<&Record> = self.batch[start..start + run]
            .iter()
            .map(|(record, _)| record)
            .collect();
        let Err(e) = mirror.apply_writes(&records) else {
            self.applied += run;
            return Ok(());
        };
        let seq = records[e.failed.min(run - 1)].seq;
        self.applied = start + e.applied.min(run);
        if let Some(path) = missing_path(&e.source) {
            self.count_missing_path(seq, path);
        }
        Err(format!("seq {seq}: {}", error_chain(&e.source)))
    }

    /// Counts a failure of record `seq` on a path missing on the mirror, and marks the
    /// mirror for a resync once the same record failed so `MISSING_PATH_ATTEMPTS` times.
    fn count_missing_path(&mut self, seq: Seq, path: &RelPath) {
        let attempts = match self.missing_path_failures {
            Some((failed, attempts)) if failed == seq => attempts + 1,
            _ => 1,
        };
        self.missing_path_failures = Some((seq, attempts));
        if attempts < MISSING_PATH_ATTEMPTS {
            return;
        }
        log::warn!(
            "mirror {}: {path} is missing on the mirror after {attempts} attempts at seq {seq}; \
             resyncing the mirror from the backing tree",
            self.slot.name
        );
        self.missing_path_failures = None;
        self.slot
            .progress
            .lock()
            .expect("progress lock")
            .needs_resync = true;
    }

    fn confirm(&mut self, seq: Seq, position: Position) {
        {
            let mut progress = self.slot.progress.lock().expect("progress lock");
            progress.confirmed = (seq, position);
            progress.oldest_unconfirmed_ns = None;
        }
        self.ctx.acks.confirm(self.slot.index, seq, position);
        self.release_data(seq);
        self.missing_path_failures = None;
        self.recovered();
        if self.last_cursor_write.elapsed() >= CURSOR_INTERVAL {
            self.ctx.store_cursor(&self.slot);
            self.last_cursor_write = Instant::now();
        }
    }

    /// Makes the mirror equal to the backing tree while writers wait, then continues from
    /// the journal head.
    fn resync(&mut self) -> Result<(), String> {
        log::info!(
            "mirror {}: resync from the backing tree started",
            self.slot.name
        );
        self.slot.progress.lock().expect("progress lock").resyncing = true;
        let started = Instant::now();
        let result = {
            let _still = self.ctx.namespace.write().expect("namespace lock");
            // Every change that took a ticket up to this one is in the backing tree now.
            let ticket = self.ctx.acks.resync_requested();
            let (head, position) = self.ctx.journal.head();
            let skip = self.ctx.skip_at_root();
            let mut mirror = self.slot.mirror.lock().expect("mirror lock");
            let rules = &self.ctx.rules;
            let index = self.slot.index;
            let result = super::manifest::resync_selected(
                mirror.as_mut(),
                &self.ctx.backing,
                &skip,
                |path, kind| rules.selects(index, path, kind),
            );
            if result.is_ok() {
                mirror.resynced(head);
            }
            result.map(|stats| (ticket, head, position, stats))
        };
        self.slot.progress.lock().expect("progress lock").resyncing = false;
        let (ticket, head, position, stats) =
            result.map_err(|e| format!("resync: {}", error_chain(&e)))?;
        log::info!(
            "mirror {}: resync done in {:.1?}: {} entries checked, {} files copied ({} bytes), {} removed",
            self.slot.name,
            started.elapsed(),
            stats.entries_checked,
            stats.files_copied,
            stats.bytes_copied,
            stats.removed
        );
        self.reader = None;
        self.batch.clear();
        self.applied = 0;
        self.unflushed = None;
        self.slot
            .progress
            .lock()
            .expect("progress lock")
            .needs_resync = false;
        self.confirm(head, position);
        self.ctx.acks.resynced(self.slot.index, ticket);
        self.ctx.store_cursor(&self.slot);
        Ok(())
    }

    fn failed(&mut self, message: String) {
        let before = self.slot.state(self.ctx.journal.head().0).0;
        let first = {
            let mut progress = self.slot.progress.lock().expect("progress lock");
            progress.failed_attempts += 1;
            progress.errors_total += 1;
            progress.last_error = Some(message.clone());
            progress.last_error_at_ns = Some(now_ns());
            let first = progress.failing_since.is_none();
            progress.failing_since.get_or_insert_with(Instant::now);
            first
        };
        let due = self
            .last_failure_log
            .is_none_or(|t| t.elapsed() >= FAILURE_LOG_INTERVAL);
        if first {
            log::warn!(
                "mirror {}: {before} -> down: {message}; retrying with backoff",
                self.slot.name
            );
            self.last_failure_log = Some(Instant::now());
        } else if due {
            let attempts = self.slot.progress().failed_attempts;
            log::warn!(
                "mirror {}: still down after {attempts} attempts: {message}",
                self.slot.name
            );
            self.last_failure_log = Some(Instant::now());
        } else {
            log::debug!("mirror {}: attempt failed: {message}", self.slot.name);
        }
    }

    /// Marks the mirror down for good after a panic in this worker, whose state can no
    /// longer be trusted, so that status and the log show it instead of a silent stop.
    /// Writers then get what `on_mirror_failure` gives for a mirror that is down.
    fn halt_after_panic(&mut self, panic: &(dyn std::any::Any + Send)) {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let confirmed = {
            let mut progress = self
                .slot
                .progress
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            progress.errors_total += 1;
            progress.last_error = Some(format!(
                "internal error, mirror stopped until the daemon restarts: {reason}"
            ));
            progress.last_error_at_ns = Some(now_ns());
            progress.failing_since.get_or_insert_with(Instant::now);
            progress.confirmed.0
        };
        log::error!(
            "mirror {}: internal error: {reason}; this mirror receives nothing more until the \
             daemon restarts (unmount and mount again), which sends the records after seq \
             {confirmed} again. Please report this error with the daemon log",
            self.slot.name
        );
    }

    fn recovered(&mut self) {
        self.backoff = BACKOFF_MIN;
        let outage = {
            let mut progress = self.slot.progress.lock().expect("progress lock");
            let outage = progress
                .failing_since
                .take()
                .map(|since| (progress.failed_attempts, since.elapsed()));
            progress.failed_attempts = 0;
            outage
        };
        if let Some((attempts, lasted)) = outage {
            let after = self.slot.state(self.ctx.journal.head().0).0;
            log::info!(
                "mirror {}: down -> {after}: writes work again after {attempts} failed \
                 attempts, {lasted:.1?}",
                self.slot.name
            );
        }
    }
}

/// Returns the path of an op that failed because a name it needs does not exist on the
/// mirror (ENOENT, or ENOTDIR where a directory was expected).
fn missing_path(error: &super::Error) -> Option<&RelPath> {
    match error {
        super::Error::Io { path, source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) =>
        {
            Some(path)
        }
        _ => None,
    }
}

fn op_bytes(record: &Record) -> u64 {
    match &record.op {
        journal::Op::Write { data, .. } => data.len() as u64 + 64,
        _ => 64,
    }
}

/// Formats an error with its sources, as `error: cause: cause`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
