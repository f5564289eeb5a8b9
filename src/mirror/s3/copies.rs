//! Readable copies: every regular file of the tree also stored as a plain object at
//! `PREFIX/<key of its path>` (see `key.rs`), so any S3 tool reads the files without
//! logmirror.
//!
//! The S3 mirror hands each journal record it stores to [`Copies::record`]. A copier thread
//! follows them in order: changes to names become deletes and server-side moves at once,
//! and changes to content only mark the file. A marked file is read from the backing
//! directory and its copy rewritten when the last writer closes it, when it is renamed, and
//! at the latest `materialize_interval` after it first changed. The bytes a copy already has
//! are copied inside the store (UploadPartCopy), so a growing file costs only its new bytes.
//!
//! Copies follow the journal but confirm nothing: a write is acknowledged by the journal
//! objects alone, and a failing copy never holds up a writer.

mod moves;
mod plan;
mod reconcile;
mod tracker;
mod upload;

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, Record, RelPath, Seq};
use crate::mirror::manifest::Manifest;
use crate::mirror::{Error, at};

use super::key::{self, KeyError};
use super::store::{Store, StoreError};

use moves::PendingAction;
use tracker::{Change, Tracker};

/// How long the copier sleeps when nothing is due, at most.
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// How often a file that waits for the journal position is tried again.
const POSITION_RETRY: Duration = Duration::from_millis(100);
/// How often failures of single files are logged at warn, so that a store refusing every
/// request does not fill the log.
const POSTPONE_LOG_INTERVAL: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Queued changes beyond which the queue is dropped and the copies are compared with the
/// tree instead, so that a copier stuck on a failing store does not fill memory.
const MAX_QUEUED: usize = 1 << 16;
/// How far back a queued change of a file's content looks for an earlier one to merge with.
const MERGE_LOOKBACK: usize = 16;

/// A failure to update a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{action} {key} failed")]
    Store {
        action: &'static str,
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("failed to read backing file {path}")]
    Read {
        path: RelPath,
        #[source]
        source: io::Error,
    },
    #[error("backing file {path} changed while its copy was written")]
    Changed { path: RelPath },
    #[error("file {path} gets no copy")]
    NoKey {
        path: RelPath,
        #[source]
        source: KeyError,
    },
}

impl CopyError {
    /// Returns true when trying again later may succeed without anything else changing.
    fn is_retryable(&self) -> bool {
        match self {
            CopyError::Store { source, .. } => source.is_retryable,
            CopyError::Changed { .. } => true,
            CopyError::Read { .. } | CopyError::NoKey { .. } => false,
        }
    }

    /// Returns true when a copied part failed because its source object changed.
    fn is_source_changed(&self) -> bool {
        matches!(self, CopyError::Store { source, .. } if source.status == Some(412))
    }
}

/// Settings of the copies of one S3 mirror, from the mount configuration.
pub struct CopySettings {
    pub backing: PathBuf,
    /// Maximum wait before a changed file gets its copy updated while it stays open.
    pub interval: Duration,
    /// The filesystem's namespace lock: held shared while a file is opened by path.
    pub namespace: Arc<RwLock<()>>,
    pub journal: Arc<Journal>,
    pub state_dir: PathBuf,
    /// The mirror's confirmed seq at start: records after it will come through `record`.
    pub confirmed: Seq,
    /// A resync of the mirror is pending; the copies are compared after it.
    pub resync_pending: bool,
    /// Returns true for the file paths that the path rules send to this mirror. A comparison
    /// with the backing tree keeps copies of these only.
    pub selects_file: SelectsFile,
}

/// Test of a path against a mirror's path rules.
pub type SelectsFile = Arc<dyn Fn(&RelPath) -> bool + Send + Sync>;

/// Progress of the copies, shown per S3 mirror in `logmirror status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopiesStatus {
    /// Files whose copy is older than the file.
    pub files_pending: u64,
    /// Copies written whole or in part since the mount, server-side moves excluded.
    pub copies_written: u64,
    /// Journal seq whose changes to names the copies follow.
    pub position: u64,
    /// A comparison of the copies with the backing tree is pending or running.
    pub comparing: bool,
    /// The latest failure, until an update succeeds.
    pub last_error: Option<String>,
    /// Reason the copies stopped for good (the lease went to another daemon).
    #[serde(default)]
    pub stopped: Option<String>,
}

/// Handle on the copies of one S3 mirror and the thread that writes them.
pub struct Copies {
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    marker: PathBuf,
}

/// Store, backing tree and locks that the copier thread works with.
struct Context {
    name: String,
    prefix: String,
    store: Arc<Store>,
    backing_root: OwnedFd,
    namespace: Arc<RwLock<()>>,
    journal: Arc<Journal>,
    selects_file: SelectsFile,
}

/// State shared by the handle and the copier thread.
#[derive(Default)]
struct Shared {
    inbox: Mutex<Inbox>,
    wake: Condvar,
    status: Mutex<CopiesStatus>,
}

#[derive(Default)]
struct Inbox {
    items: VecDeque<Item>,
    stopping: bool,
    /// Reason set when the mirror lost its lease. Another daemon owns the prefix now, so
    /// this one writes no copy any more and returns the reason to every settle.
    halted: Option<String>,
}

enum Item {
    Record {
        seq: Seq,
        change: Change,
    },
    /// A resync made the mirror equal to the tree as of `head`.
    Resynced {
        head: Seq,
    },
    /// The queue was dropped after `seq`; compare the copies with the tree.
    Dropped {
        seq: Seq,
    },
    Settle(Settle),
}

/// A caller waiting until every file that changed before `at` has a current copy.
struct Settle {
    at: Instant,
    deadline: Instant,
    reply: mpsc::Sender<Result<Seq, String>>,
}

/// Contents of the marker file that records the journal seq at which the copies were
/// current.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CleanMarker {
    mirror: String,
    journal_id: u64,
    seq: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Copies {
    /// Starts the copier thread of the mirror `name` at `prefix`.
    ///
    /// When the marker file from the previous clean stop shows the copies current at the
    /// mirror's confirmed seq, the copier continues from there. Otherwise it first compares
    /// the copies with the backing tree, reading every file that has a copy, and repairs them.
    pub fn start(
        settings: CopySettings,
        store: Arc<Store>,
        name: &str,
        prefix: &str,
    ) -> Result<Arc<Copies>, Error> {
        let setup = |reason: String| Error::Setup {
            mirror: name.to_string(),
            reason,
        };
        let backing_root = at::open_root(&settings.backing).map_err(|e| {
            setup(format!(
                "cannot open the backing directory {:?} for readable copies: {e}",
                settings.backing
            ))
        })?;
        let marker = marker_path(&settings.state_dir, name);
        let trusted = take_marker(&marker, name, settings.journal.id()) == Some(settings.confirmed)
            && !settings.resync_pending;
        let ctx = Arc::new(Context {
            name: name.to_string(),
            prefix: prefix.to_string(),
            store,
            backing_root,
            namespace: settings.namespace,
            journal: settings.journal,
            selects_file: settings.selects_file,
        });
        let shared = Arc::new(Shared::default());
        lock(&shared.status).position = settings.confirmed.0;
        let copier = Copier {
            ctx: ctx.clone(),
            shared: shared.clone(),
            interval: settings.interval,
            tracker: Tracker::default(),
            position: settings.confirmed,
            compare_pending: !trusted,
            pending: VecDeque::new(),
            settles: Vec::new(),
            backoff: BACKOFF_MIN,
            retry_at: None,
            last_postpone_warning: None,
            copies_written: 0,
        };
        if !trusted {
            log::info!(
                "mirror {name}: readable copies will be compared with the backing tree, \
                 because the previous run did not stop with them current"
            );
        }
        let thread = std::thread::Builder::new()
            .name("s3-copies".into())
            .spawn(move || copier.run())
            .map_err(|e| setup(format!("cannot start the copier thread: {e}")))?;
        Ok(Arc::new(Copies {
            ctx,
            shared,
            thread: Mutex::new(Some(thread)),
            marker,
        }))
    }

    /// Queues the change of a journal record the mirror stored.
    pub fn record(&self, record: &Record) {
        self.push(Item::Record {
            seq: record.seq,
            change: Change::of(&record.op),
        });
    }

    /// Tells the copier that a resync made the mirror equal to the backing tree as of
    /// journal seq `head`, so the copies are compared with the tree next.
    pub fn resynced(&self, head: Seq) {
        self.push(Item::Resynced { head });
    }

    /// Stops writing copies for good: another daemon took the prefix over (`reason`). The
    /// copies it keeps current are no longer this daemon's to write; a request already
    /// under way completes.
    pub fn halt(&self, reason: &str) {
        let mut inbox = lock(&self.shared.inbox);
        if inbox.halted.is_some() {
            return;
        }
        log::error!(
            "mirror {}: readable copies stopped: {reason}; this daemon no longer writes \
             PREFIX/<path> objects",
            self.ctx.name
        );
        inbox.halted = Some(reason.to_string());
        lock(&self.shared.status).stopped = Some(reason.to_string());
        inbox.items.retain(|item| matches!(item, Item::Settle(_)));
        self.shared.wake.notify_one();
    }

    fn push(&self, item: Item) {
        let mut inbox = lock(&self.shared.inbox);
        if inbox.halted.is_some() && !matches!(item, Item::Settle(_)) {
            return;
        }
        if let Item::Record { seq, change } = &item
            && merge_into(&mut inbox.items, *seq, change)
        {
            return;
        }
        if inbox.items.len() >= MAX_QUEUED {
            let last = inbox.items.iter().rev().find_map(|item| match item {
                Item::Record { seq, .. } | Item::Dropped { seq } => Some(*seq),
                _ => None,
            });
            let settles: Vec<Item> = inbox
                .items
                .drain(..)
                .filter(|item| matches!(item, Item::Settle(_)))
                .collect();
            log::warn!(
                "mirror {}: {MAX_QUEUED} changes wait for the copier; dropping them and \
                 comparing the copies with the backing tree instead",
                self.ctx.name
            );
            inbox.items.extend(settles);
            if let Some(seq) = last {
                inbox.items.push_back(Item::Dropped { seq });
            }
        }
        inbox.items.push_back(item);
        self.shared.wake.notify_one();
    }

    /// Waits until every file that changed before the call has a current copy, or until
    /// `deadline`. Returns the journal seq the copies then follow.
    pub fn settle(&self, deadline: Instant) -> Result<Seq, String> {
        let (reply, answer) = mpsc::channel();
        self.push(Item::Settle(Settle {
            at: Instant::now(),
            deadline,
            reply,
        }));
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
        match answer.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => Err("the copier did not answer in time".to_string()),
        }
    }

    /// Compares the copies in the store with the regular files of `backing`, a listing of
    /// the backing tree, and returns one line per copy that differs, naming its key.
    pub fn compare(&self, backing: &Manifest) -> Result<Vec<String>, Error> {
        reconcile::compare(&self.ctx, backing).map_err(|e| self.ctx.error(e))
    }

    /// Returns the progress of the copies.
    pub fn status(&self) -> CopiesStatus {
        lock(&self.shared.status).clone()
    }

    /// Returns the bytes of request bodies the mirror sent to the store, journal objects and
    /// copies together, retries included.
    pub fn bytes_uploaded(&self) -> u64 {
        self.ctx.store.bytes_uploaded()
    }

    /// Settles the copies until `deadline`, stops the copier thread, and when every copy
    /// was current writes the marker that lets the next start skip the comparison.
    pub fn shutdown(&self, deadline: Instant) {
        let settled = self.settle(deadline);
        lock(&self.shared.inbox).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        match settled {
            Ok(position) => {
                let marker = CleanMarker {
                    mirror: self.ctx.name.clone(),
                    journal_id: self.ctx.journal.id(),
                    seq: position.0,
                };
                if let Err(e) = write_marker(&self.marker, &marker) {
                    log::warn!(
                        "mirror {}: cannot write {:?}: {e}; the next start compares the \
                         copies with the backing tree",
                        self.ctx.name,
                        self.marker
                    );
                }
            }
            Err(reason) => log::warn!(
                "mirror {}: readable copies not current at shutdown ({reason}); the next start \
                 compares them with the backing tree",
                self.ctx.name
            ),
        }
    }
}

impl Context {
    fn error(&self, e: CopyError) -> Error {
        Error::Setup {
            mirror: self.name.clone(),
            reason: format!(
                "readable copies: {}",
                crate::mirror::worker::error_chain(&e)
            ),
        }
    }

    fn key(&self, path: &RelPath) -> Result<String, CopyError> {
        key::path_to_key(&self.prefix, path).map_err(|source| CopyError::NoKey {
            path: path.clone(),
            source,
        })
    }

    fn store_error(action: &'static str, key: &str) -> impl FnOnce(StoreError) -> CopyError {
        let key = key.to_string();
        move |source| CopyError::Store {
            action,
            key,
            source,
        }
    }

    /// Opens the backing file at `path` if the path still names the file it named at
    /// journal seq `position`: no record after `position` created, removed or renamed the
    /// path or a directory above it. The namespace lock keeps names from changing between
    /// that check and the open.
    fn open_at_position(&self, path: &RelPath, position: Seq) -> io::Result<Opened> {
        let _names = self
            .namespace
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        match self.journal.names_changed_after(position) {
            None => return Ok(Opened::Wait),
            Some(changed) if changed.iter().any(|c| path.starts_with(c)) => {
                return Ok(Opened::Wait);
            }
            Some(_) => {}
        }
        self.open_regular(path)
    }

    /// Opens the regular file at `path` for reading, through the confined walk.
    fn open_regular(&self, path: &RelPath) -> io::Result<Opened> {
        let opened = at::walk_parent(self.backing_root.as_fd(), path).and_then(|(dir, name)| {
            at::open_at(dir.as_fd(), &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        });
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if is_gone(&e) => return Ok(Opened::Gone),
            Err(e) => return Err(e),
        };
        let st = at::fstat(fd.as_fd())?;
        if at::file_type(&st) != libc::S_IFREG {
            return Ok(Opened::Gone);
        }
        Ok(Opened::File {
            file: File::from(fd),
            size: st.st_size as u64,
            id: at::file_id(&st),
        })
    }
}

/// Result of opening a backing file for its copy.
enum Opened {
    File {
        file: File,
        size: u64,
        id: at::FileId,
    },
    /// The path may name another file now; try again when the journal position moved on.
    Wait,
    /// No regular file at the path.
    Gone,
}

/// Returns true for errors of a lookup of a path that is not (or no longer) a file.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENXIO)
    )
}

/// Merges a record's content change into a queued one of the same file, if one lies close
/// enough behind with only content changes in between. Returns true when merged.
///
/// The last queued record then takes the new seq, so seqs stay in order and the copier's
/// position still ends at the newest record.
fn merge_into(items: &mut VecDeque<Item>, seq: Seq, change: &Change) -> bool {
    let mut merged = false;
    for item in items.iter_mut().rev().take(MERGE_LOOKBACK) {
        let Item::Record { change: queued, .. } = item else {
            break;
        };
        if queued.merge(change) {
            merged = true;
            break;
        }
        let is_content = matches!(
            queued,
            Change::Data { .. } | Change::Closed { .. } | Change::Nothing
        );
        if !is_content || !matches!(change, Change::Data { .. }) {
            break;
        }
    }
    if merged && let Some(Item::Record { seq: last, .. }) = items.back_mut() {
        *last = seq;
    }
    merged
}

/// The copier thread's state.
struct Copier {
    ctx: Arc<Context>,
    shared: Arc<Shared>,
    interval: Duration,
    tracker: Tracker,
    /// Seq of the newest record whose change the tracker took.
    position: Seq,
    /// The copies must be compared with the backing tree before files are written.
    compare_pending: bool,
    /// Store actions for changes of names, in journal order.
    pending: VecDeque<PendingAction>,
    settles: Vec<Settle>,
    backoff: Duration,
    /// No request before this time, after a failure.
    retry_at: Option<Instant>,
    /// Time of the last warning about a file whose copy failed; later ones within
    /// [`POSTPONE_LOG_INTERVAL`] go to the debug level.
    last_postpone_warning: Option<Instant>,
    copies_written: u64,
}

impl Copier {
    fn run(mut self) {
        loop {
            let (items, stopping) = self.next_items();
            self.take(items);
            if let Some(reason) = lock(&self.shared.inbox).halted.clone() {
                self.pending.clear();
                self.tracker = Tracker::default();
                self.compare_pending = false;
                self.retry_at = None;
                for settle in self.settles.drain(..) {
                    let _ = settle.reply.send(Err(format!("copies stopped: {reason}")));
                }
                if stopping {
                    return;
                }
                continue;
            }
            if stopping {
                self.answer_settles(true);
                return;
            }
            if self.retry_at.is_some_and(|at| Instant::now() < at) {
                self.answer_settles(false);
                continue;
            }
            let result = self.work();
            match result {
                Ok(()) => self.recovered(),
                Err(e) => self.failed(e),
            }
            self.publish();
            self.answer_settles(false);
        }
    }

    /// Waits until something is queued or due, and takes the queue.
    fn next_items(&mut self) -> (Vec<Item>, bool) {
        let wait = self.wait_time();
        let mut inbox = lock(&self.shared.inbox);
        let wait = if inbox.halted.is_some() {
            Duration::from_secs(3600)
        } else {
            wait
        };
        if inbox.items.is_empty() && !inbox.stopping && !wait.is_zero() {
            inbox = self
                .shared
                .wake
                .wait_timeout(inbox, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        (inbox.items.drain(..).collect(), inbox.stopping)
    }

    /// Returns how long nothing is due.
    fn wait_time(&self) -> Duration {
        let now = Instant::now();
        if let Some(at) = self.retry_at {
            return at.saturating_duration_since(now);
        }
        let busy = self.compare_pending || !self.pending.is_empty() || !self.settles.is_empty();
        if busy || self.tracker.has_urgent() {
            return POSITION_RETRY;
        }
        match self.tracker.oldest_dirty() {
            Some(since) => (since + self.interval)
                .saturating_duration_since(now)
                .clamp(POSITION_RETRY, IDLE_WAIT),
            None => IDLE_WAIT,
        }
    }

    /// Applies queued items to the tracker, in order.
    fn take(&mut self, items: Vec<Item>) {
        let now = Instant::now();
        for item in items {
            match item {
                Item::Record { seq, change } => {
                    if seq <= self.position {
                        continue;
                    }
                    let actions = self.tracker.apply(change, now);
                    self.pending
                        .extend(actions.into_iter().map(PendingAction::new));
                    self.position = seq;
                }
                Item::Resynced { head } | Item::Dropped { seq: head } => {
                    self.position = self.position.max(head);
                    self.compare_pending = true;
                }
                Item::Settle(settle) => {
                    // A caller waits, so a failed request is tried again now.
                    self.retry_at = None;
                    self.settles.push(settle);
                }
            }
        }
    }

    /// Runs the store actions, then the comparison with the tree or the due updates.
    fn work(&mut self) -> Result<(), CopyError> {
        while let Some(action) = self.pending.front_mut() {
            let moved = moves::run(&self.ctx, action)?;
            self.pending.pop_front();
            moved.apply_to(&mut self.tracker, Instant::now());
        }
        if self.compare_pending {
            match reconcile::reconcile(&self.ctx, self.position)? {
                Some(tracker) => {
                    self.tracker = tracker;
                    self.compare_pending = false;
                }
                None => return Ok(()),
            }
        }
        self.update_due()
    }

    /// Writes the copies of the files that are due: urgent ones, those waiting for longer
    /// than the interval, and those a settle waits for.
    fn update_due(&mut self) -> Result<(), CopyError> {
        let now = Instant::now();
        let settle_at = self.settles.iter().map(|s| s.at).max();
        for path in self.tracker.dirty_paths() {
            let Some(file) = self.tracker.get(&path) else {
                continue;
            };
            let Some(dirty) = file.dirty else { continue };
            let due = file.urgent
                || now.duration_since(dirty.since) >= self.interval
                || settle_at.is_some_and(|at| dirty.since <= at);
            if due {
                self.update(&path)?;
            }
        }
        Ok(())
    }

    /// Writes the copy of one file, if its path still names it at the copier's position.
    fn update(&mut self, path: &RelPath) -> Result<(), CopyError> {
        let key = match self.ctx.key(path) {
            Ok(key) => key,
            Err(e) => {
                // NOTE: a file whose key would exceed 1024 bytes gets no copy.
                log::warn!("mirror {}: {}", self.ctx.name, error_text(&e));
                self.tracker.remove(path);
                return Ok(());
            }
        };
        let opened = self
            .ctx
            .open_at_position(path, self.position)
            .map_err(|source| CopyError::Read {
                path: path.clone(),
                source,
            });
        let (file, size) = match opened {
            Ok(Opened::File { file, size, .. }) => (file, size),
            Ok(Opened::Wait) => return Ok(()),
            Ok(Opened::Gone) => {
                log::debug!(
                    "mirror {}: {path} is no regular file at seq {}; no copy written",
                    self.ctx.name,
                    self.position
                );
                self.tracker.remove(path);
                return Ok(());
            }
            Err(e) => return self.postpone(path, e),
        };
        let Some(state) = self.tracker.get(path).cloned() else {
            return Ok(());
        };
        match upload::write_copy(&self.ctx, path, &key, &file, size, &state) {
            Ok(written) => {
                if written.uploaded {
                    self.copies_written += 1;
                }
                if let Some(entry) = self.tracker.get_mut(path) {
                    entry.written(written.object);
                }
                Ok(())
            }
            Err(e) if e.is_source_changed() => {
                // The copy changed behind the mirror's back: write it whole next time.
                if let Some(entry) = self.tracker.get_mut(path) {
                    entry.stored = tracker::Stored::Absent;
                    entry.mark(0, Instant::now());
                }
                Err(e)
            }
            Err(CopyError::Changed { .. }) => {
                // Rewritten in place while it was read: try again after the interval.
                log::debug!(
                    "mirror {}: {path} changed while its copy was written",
                    self.ctx.name
                );
                self.delay(path);
                Ok(())
            }
            Err(e) if e.is_retryable() => Err(e),
            Err(e) => self.postpone(path, e),
        }
    }

    /// Logs a failure that only this file has and tries it again after the interval.
    fn postpone(&mut self, path: &RelPath, e: CopyError) -> Result<(), CopyError> {
        let text = error_text(&e);
        let due = self
            .last_postpone_warning
            .is_none_or(|at| at.elapsed() >= POSTPONE_LOG_INTERVAL);
        if due {
            log::warn!(
                "mirror {}: {text}; trying again in {:?}",
                self.ctx.name,
                self.interval
            );
            self.last_postpone_warning = Some(Instant::now());
        } else {
            log::debug!(
                "mirror {}: {text}; trying again in {:?}",
                self.ctx.name,
                self.interval
            );
        }
        lock(&self.shared.status).last_error = Some(text);
        self.delay(path);
        Ok(())
    }

    /// Makes the file wait another interval before its next update.
    fn delay(&mut self, path: &RelPath) {
        if let Some(entry) = self.tracker.get_mut(path) {
            entry.urgent = false;
            if let Some(dirty) = &mut entry.dirty {
                dirty.since = Instant::now();
            }
        }
    }

    fn failed(&mut self, e: CopyError) {
        let text = error_text(&e);
        let first = lock(&self.shared.status).last_error.is_none();
        if first {
            log::warn!(
                "mirror {}: updating readable copies failed: {text}; retrying with backoff",
                self.ctx.name
            );
        } else {
            log::debug!(
                "mirror {}: updating readable copies failed: {text}",
                self.ctx.name
            );
        }
        lock(&self.shared.status).last_error = Some(text);
        let wait = if e.is_source_changed() {
            Duration::ZERO
        } else {
            self.backoff
        };
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn recovered(&mut self) {
        self.retry_at = None;
        self.backoff = BACKOFF_MIN;
        let mut status = lock(&self.shared.status);
        if status.last_error.take().is_some() {
            log::info!("mirror {}: readable copies updated again", self.ctx.name);
        }
    }

    /// Replies to the settles that are done or past their deadline, and with `stopping` to
    /// all of them.
    fn answer_settles(&mut self, stopping: bool) {
        let now = Instant::now();
        let blocked_before = self.blocked_before();
        let pending_files = self.tracker.dirty_count();
        self.settles.retain(|settle| {
            let done = blocked_before.is_none_or(|since| since > settle.at);
            let result = if done {
                Ok(self.position)
            } else if stopping || now >= settle.deadline {
                Err(format!("{pending_files} files still wait for their copy"))
            } else {
                return true;
            };
            let _ = settle.reply.send(result);
            false
        });
    }

    /// Returns the earliest time from which some work is still undone, `None` when every
    /// copy is current.
    fn blocked_before(&self) -> Option<Instant> {
        if self.compare_pending || !self.pending.is_empty() {
            return Some(Instant::now());
        }
        self.tracker.oldest_dirty()
    }

    fn publish(&self) {
        let mut status = lock(&self.shared.status);
        status.files_pending = self.tracker.dirty_count() as u64;
        status.copies_written = self.copies_written;
        status.position = self.position.0;
        status.comparing = self.compare_pending;
    }
}

/// Formats an error with its sources.
fn error_text(e: &CopyError) -> String {
    crate::mirror::worker::error_chain(e)
}

/// Returns the marker file of the mirror `name`.
fn marker_path(state_dir: &Path, name: &str) -> PathBuf {
    let crc = crc32c::crc32c(name.as_bytes());
    state_dir.join("copies").join(format!("{crc:08x}.json"))
}

/// Reads and removes the marker file, returning the seq at which it shows the copies
/// current, if it belongs to this mirror and journal.
fn take_marker(path: &Path, name: &str, journal_id: u64) -> Option<Seq> {
    let text = std::fs::read(path).ok()?;
    if let Err(e) = std::fs::remove_file(path) {
        log::warn!("cannot remove {path:?}: {e}");
        return None;
    }
    let marker: CleanMarker = serde_json::from_slice(&text).ok()?;
    (marker.mirror == name && marker.journal_id == journal_id).then_some(Seq(marker.seq))
}

fn write_marker(path: &Path, marker: &CleanMarker) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::daemon::create_private_dir(dir)?;
    let text = serde_json::to_vec(marker).map_err(io::Error::other)?;
    let temporary = path.with_extension("tmp");
    {
        let mut file = File::create(&temporary)?;
        io::Write::write_all(&mut file, &text)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(path: &str, offset: u64) -> Change {
        Change::Data {
            path: RelPath::from_bytes(path.as_bytes()).unwrap(),
            from: offset,
            end: Some(offset + 10),
            size: None,
        }
    }

    fn record(seq: u64, change: Change) -> Item {
        Item::Record {
            seq: Seq(seq),
            change,
        }
    }

    fn seqs(items: &VecDeque<Item>) -> Vec<u64> {
        items
            .iter()
            .map(|item| match item {
                Item::Record { seq, .. } => seq.0,
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn queue_merges_writes_of_a_file() {
        let mut items = VecDeque::new();
        items.push_back(record(1, data("a", 0)));
        items.push_back(record(2, data("b", 0)));
        assert!(merge_into(&mut items, Seq(3), &data("a", 10)));
        assert_eq!(seqs(&items), [1, 3]);
        assert!(merge_into(&mut items, Seq(4), &Change::Nothing));
        assert_eq!(seqs(&items), [1, 4]);
        let created = Change::Created {
            path: RelPath::from_bytes(b"c").unwrap(),
        };
        assert!(!merge_into(&mut items, Seq(5), &created));
        items.push_back(record(5, created));
        // A change of names between two writes of a file keeps them apart.
        assert!(!merge_into(&mut items, Seq(6), &data("a", 20)));
    }

    #[test]
    fn marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = marker_path(dir.path(), "s3://logs/h");
        let marker = CleanMarker {
            mirror: "s3://logs/h".into(),
            journal_id: 7,
            seq: 42,
        };
        write_marker(&path, &marker).unwrap();
        assert_eq!(take_marker(&path, "s3://logs/h", 8), None);
        assert!(!path.exists(), "a read marker is removed");
        write_marker(&path, &marker).unwrap();
        assert_eq!(take_marker(&path, "s3://logs/h", 7), Some(Seq(42)));
        assert_eq!(take_marker(&path, "s3://logs/h", 7), None);
    }
}
