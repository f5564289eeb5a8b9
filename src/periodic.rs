//! Periodic duties of the daemon, on a thread of their own. Every `verify_interval` it runs
//! the same check as `logmirror verify`, and with `repair=true` it schedules a resync of each
//! mirror that differs. For S3 mirrors with `retention=` it folds the history older than the
//! retention into a snapshot. Results go to each mirror's progress for `status`. Nothing
//! here touches the journal or makes a writer wait.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::mirror::s3::Folder;
use crate::mirror::worker::{Context, LastFold, MirrorSlot, VerifyTrigger, error_chain, now_ns};
use crate::verify;

/// Longest time between two fold attempts. A shorter retention folds that often, so that
/// the history kept exceeds the retention by at most one interval.
const MAX_FOLD_INTERVAL: Duration = Duration::from_secs(3600);

/// How often a fold that keeps failing is logged again at warn.
const FOLD_WARNING_INTERVAL: Duration = Duration::from_secs(600);

/// How long a periodic verify waits for mirrors to confirm the writes made before it, as
/// `logmirror verify` does by default.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(300);

/// When the periodic duties run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Time between two verifies; zero turns them off.
    pub verify_interval: Duration,
    /// Schedule a resync of each mirror that a periodic verify finds different.
    pub repair: bool,
    /// Age after which journal objects of S3 mirrors are folded; `None` keeps them.
    pub retention: Option<Duration>,
}

impl Schedule {
    /// Returns the time between two fold attempts: the retention, at most an hour.
    pub fn fold_interval(&self) -> Option<Duration> {
        self.retention.map(|r| r.min(MAX_FOLD_INTERVAL))
    }
}

/// An S3 mirror's folder and the slot whose progress shows its results.
pub struct FoldTask {
    slot: Arc<MirrorSlot>,
    folder: Folder,
    /// When a failed fold was last logged at warn.
    last_warning: Option<Instant>,
}

impl FoldTask {
    pub fn new(slot: Arc<MirrorSlot>, folder: Folder) -> FoldTask {
        FoldTask {
            slot,
            folder,
            last_warning: None,
        }
    }
}

/// Starts the thread that runs the periodic duties until the daemon stops. Returns `None`
/// when the schedule has nothing to run.
pub fn spawn(
    ctx: Arc<Context>,
    slots: Vec<Arc<MirrorSlot>>,
    folds: Vec<FoldTask>,
    schedule: Schedule,
) -> std::io::Result<Option<JoinHandle<()>>> {
    let has_folds = schedule.retention.is_some() && !folds.is_empty();
    if schedule.verify_interval.is_zero() && !has_folds {
        return Ok(None);
    }
    for task in &folds {
        task.slot.progress.lock().expect("progress lock").last_fold = Some(LastFold::default());
    }
    let handle = std::thread::Builder::new()
        .name("periodic".into())
        .spawn(move || run(&ctx, &slots, folds, schedule))?;
    Ok(Some(handle))
}

fn run(ctx: &Context, slots: &[Arc<MirrorSlot>], mut folds: Vec<FoldTask>, schedule: Schedule) {
    let started = Instant::now();
    let verify_interval = Some(schedule.verify_interval).filter(|d| !d.is_zero());
    let fold_interval = schedule.fold_interval().filter(|_| !folds.is_empty());
    let mut next_verify = verify_interval.map(|d| started + d);
    let mut next_fold = fold_interval.map(|d| started + d);
    loop {
        let Some(next) = [next_verify, next_fold].into_iter().flatten().min() else {
            return;
        };
        if ctx
            .stop
            .sleep(next.saturating_duration_since(Instant::now()))
        {
            return;
        }
        let now = Instant::now();
        if let (Some(due), Some(interval)) = (next_verify, verify_interval)
            && now >= due
        {
            // NOTE: for an S3 mirror this downloads its whole history every interval.
            verify::run(
                ctx,
                slots,
                VERIFY_TIMEOUT,
                schedule.repair,
                VerifyTrigger::Periodic,
            );
            next_verify = Some(Instant::now() + interval);
        }
        if let (Some(due), Some(interval), Some(retention)) =
            (next_fold, fold_interval, schedule.retention)
            && now >= due
        {
            for task in &mut folds {
                fold(task, retention, interval);
            }
            next_fold = Some(Instant::now() + interval);
        }
    }
}

/// Folds one mirror's history older than `retention` and records the outcome.
fn fold(task: &mut FoldTask, retention: Duration, interval: Duration) {
    let attempted_at_ns = now_ns();
    let cutoff_ns = attempted_at_ns.saturating_sub(retention.as_nanos() as u64);
    let result = task.folder.fold(cutoff_ns);
    let mut progress = task.slot.progress.lock().expect("progress lock");
    let last = progress.last_fold.get_or_insert_with(LastFold::default);
    last.attempted_at_ns = attempted_at_ns;
    match result {
        Ok(Some(stats)) => {
            last.error = None;
            last.snapshot = stats.snapshot;
            last.stored_at_ns = now_ns();
            last.objects_removed += stats.objects_removed;
        }
        Ok(None) => last.error = None,
        Err(e) => {
            let message = error_chain(&e);
            let due = task
                .last_warning
                .is_none_or(|t| t.elapsed() >= FOLD_WARNING_INTERVAL);
            let first = last.error.is_none();
            if first || due {
                log::warn!(
                    "mirror {}: fold of the history older than {retention:?} failed: \
                     {message}; retrying every {interval:?}",
                    task.folder.name()
                );
                task.last_warning = Some(Instant::now());
            } else {
                log::debug!(
                    "mirror {}: fold failed again: {message}",
                    task.folder.name()
                );
            }
            last.error = Some(message);
        }
    }
}
