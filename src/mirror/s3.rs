//! S3 mirror: keeps the journal's records as objects in an S3-compatible bucket.
//!
//! The worker hands over records in sequence order. `apply` frames each one into an
//! in-memory object, and `flush` stores that object with one PUT (group commit), so a
//! confirmed record is in the store. Keys and byte layout are in `s3/object.rs`; requests
//! and retries in `s3/store.rs`.
//!
//! To list the tree (verify, resync) or to rebuild it (`logmirror restore`), the newest
//! snapshot and the objects after it are downloaded in order, checked, and replayed through
//! a [`DirMirror`] into a directory (`s3/replay.rs`). With `retention=`, old objects are
//! folded into a snapshot (`s3/fold.rs`, layout in `s3/snapshot.rs`).
//!
//! Each stored record also goes to the readable copies (`s3/copies.rs`), a plain object per
//! file that a copier thread keeps up to date from the backing directory.

mod chain;
mod copies;
mod fold;
pub mod key;
mod lease;
mod object;
mod position;
mod probe;
mod replay;
pub mod seal;
mod snapshot;
mod store;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use crate::config::{Compression, History, LockMode, MirrorSpec, S3Options, STATE_DIR_NAME};
use crate::journal::{Op, Record, Seq};

use super::cursor::Cursor;
use super::dir::DirMirror;
use super::manifest::{self, Manifest};
use super::{Error, Mirror};

pub use copies::{Copies, CopiesStatus, CopySettings};
pub use fold::{FoldStats, Folder, fold_once};
pub use lease::lease_key;
pub use object::{journal_prefix, object_key, parse_object_key};
pub use replay::{ReplayEnd, ReplayStats, ReplayTarget};
pub use snapshot::{index_key, part_key, snapshot_prefix};
pub use store::{Capabilities, StoreError, checksum_header};

use chain::ChainHead;
use lease::{
    Acquired, LEASE_VALIDITY, Lease, LeaseError, LeaseRecord, NEW_LEASE_WAIT, TAKEOVER_WAIT,
};
use object::{ObjectHeader, PendingObject};
use position::Verdict;
use probe::{checksums_text, probe};
use replay::Source;
use seal::Seal;
use store::{PutOutcome, Store};

/// Size at which `apply` stores the pending object before adding more, so that a long
/// resync does not hold the whole tree in memory. A worker's batch (at most 8 MiB of
/// payload) stays below it, so normally each flush stores one object.
const MAX_OBJECT_BYTES: usize = 16 << 20;

/// Times an upload moves past journal objects that another writer stored at its number
/// before it gives up.
const MAX_RENUMBERS: u32 = 3;

/// Age at which an idle mirror confirms its lease again, ahead of [`LEASE_VALIDITY`].
const LEASE_REFRESH: Duration = Duration::from_secs(LEASE_VALIDITY.as_secs() - 1);

/// Minimum time between two writes of the chain head file while objects are being stored.
/// A write costs a file creation and a rename, too much for every sync-mode object. An idle
/// mirror writes the newest head at once.
const HEAD_RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// Findings of the S3 mirror about its store at open, for status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    /// The endpoint requests go to.
    pub endpoint: String,
    /// A second PUT with `If-None-Match: *` to an existing key failed with 412.
    pub conditional_writes: bool,
    /// `verified` when the store rejected a PUT with a wrong `x-amz-checksum-crc32c`,
    /// `ignored` when it stored it.
    pub checksums: String,
    /// Key of the lease object this daemon holds.
    pub lease_key: String,
    /// Protection of the lease and the journal keys against a second writer.
    pub protection: String,
    /// `client (key id XXXXXXXXXXXXXXXX)` when `encrypt_key` is set, else `none`.
    #[serde(default)]
    pub encryption: String,
    /// `managed` or `append-only`, from `history=`.
    #[serde(default)]
    pub history: String,
    /// Object Lock retention of journal objects and snapshots, as in `30 days, compliance`.
    #[serde(default)]
    pub retention_lock: Option<String>,
    /// Server-side encryption requested, as in `sse=c`.
    #[serde(default)]
    pub sse: Option<String>,
}

/// Owner settings of an S3 mirror's lease.
#[derive(Clone, Debug)]
pub struct LeaseOptions<'a> {
    /// State directory of the daemon, which the lease names.
    pub state_dir: &'a Path,
    /// Take the lease even when another owner holds it (`takeover=true`).
    pub takeover: bool,
}

/// A mirror kept as journal objects in an S3 bucket.
pub struct S3Mirror {
    name: String,
    prefix: String,
    store: Arc<Store>,
    journal_id: u64,
    /// Number of the next object to store; one more than the highest in the bucket at open.
    next_number: u64,
    pending: PendingObject,
    /// Directory for replaying the objects when a manifest is needed. It is emptied before
    /// and removed after each use.
    scratch: PathBuf,
    /// Held while a replay for a manifest runs and while a fold removes objects, so that a
    /// fold never removes an object that the replay listed and has yet to download.
    history_lock: Arc<Mutex<()>>,
    lease: Lease,
    capabilities: Capabilities,
    /// Header of the highest-numbered journal object at open, if there is one.
    newest: Option<ObjectHeader>,
    /// The readable copies, once started.
    copies: Option<Arc<Copies>>,
    /// The `encrypt_key`, if set.
    seal: Option<Seal>,
    compression: Compression,
    /// The newest object of the hash chain: the next object records its digest.
    head: ChainHead,
    /// File in the state directory that keeps `head` across restarts.
    head_file: PathBuf,
    /// When `head_file` was last written, and whether `head` moved since.
    head_recorded: (Option<Instant>, bool),
    /// A contradiction between the store and what this state directory recorded as
    /// stored, found at open; verify reports it until the daemon stops.
    alert: Option<String>,
    /// What the mount may do to the history objects, from `history=`.
    history: History,
}

impl S3Mirror {
    /// Opens the mirror at `bucket`/`prefix` for the records of journal `journal_id`.
    ///
    /// Probes what the store does with preconditions and checksums, takes the prefix's
    /// lease, lists the journal objects and numbers the next object after the highest one
    /// found. The first request also checks that the bucket exists and that the credentials
    /// of the standard AWS chain work. `scratch` is a private directory the mirror may fill
    /// and remove.
    pub fn open(
        bucket: &str,
        prefix: &str,
        options: &S3Options,
        journal_id: u64,
        scratch: &Path,
        lease_options: &LeaseOptions<'_>,
    ) -> Result<S3Mirror, Error> {
        let name = s3_name(bucket, prefix);
        let store = connect(&name, bucket, options)?;
        S3Mirror::open_with_store(
            store,
            &name,
            prefix,
            options,
            journal_id,
            scratch,
            lease_options,
        )
    }

    /// Opens the mirror `name` at `prefix` of `store`, as [`S3Mirror::open`] does.
    fn open_with_store(
        mut store: Store,
        name: &str,
        prefix: &str,
        options: &S3Options,
        journal_id: u64,
        scratch: &Path,
        lease_options: &LeaseOptions<'_>,
    ) -> Result<S3Mirror, Error> {
        let name = name.to_string();
        let capabilities = probe(&mut store, prefix, &name, options.history)?;

        let owner = LeaseRecord::for_this_process(lease_options.state_dir, journal_id)
            .map_err(|e| lease_error(&name, LeaseError::Token(e)))?;
        let (lease, acquired) = Lease::acquire(&store, prefix, owner, lease_options.takeover)
            .map_err(|e| lease_error(&name, e))?;
        let mut lease = lease;
        let recheck_after = match acquired {
            Acquired::New => {
                debug!("mirror {name}: took the lease {}", lease.key());
                // Without If-None-Match, two daemons that read "no lease" at once both write
                // one. Reading it again after a pause shows the daemon whose lease was overwritten that it lost.
                (!capabilities.conditional_writes).then_some(NEW_LEASE_WAIT)
            }
            Acquired::Reclaimed { previous } => {
                info!(
                    "mirror {name}: took back the lease left by {previous}, an earlier daemon \
                     of this state directory"
                );
                None
            }
            Acquired::TakenOver { previous } => {
                warn!(
                    "mirror {name}: took over the lease of {previous} (takeover=true); that \
                     daemon stops storing journal objects within {}s. Waiting {}s for its \
                     uploads in progress before storing anything",
                    LEASE_VALIDITY.as_secs(),
                    TAKEOVER_WAIT.as_secs()
                );
                Some(TAKEOVER_WAIT)
            }
        };
        if let Some(pause) = recheck_after {
            std::thread::sleep(pause);
            lease.check(&store).map_err(|e| {
                let e = match e {
                    LeaseError::Lost { owner } => LeaseError::Held { owner },
                    other => other,
                };
                lease_error(&name, e)
            })?;
        }

        let seal = load_seal(&name, options)?;
        let objects = replay::list_objects(&store, prefix, &name)?;
        // A fold may have removed every object it covered, so the snapshots count too: a
        // new object must never take a number that a snapshot already covers.
        let snapshots = replay::list_snapshot_keys(&store, prefix, &name)?;
        let newest_object = objects.last().map_or(0, |(number, _)| *number);
        let newest_snapshot = snapshots.iter().map(|(k, _)| k.number()).max();
        let next_number = newest_object.max(newest_snapshot.unwrap_or(0)) + 1;
        let source = Source {
            store: &store,
            name: &name,
            seal: seal.as_ref(),
        };
        let (head, newest) = chain::find_head(source, prefix, &objects)?;
        let head_file = scratch.with_extension("chain");
        let alert = chain::check_recorded(source, prefix, &head_file, &head, &objects);
        if let Some(alert) = &alert {
            log::error!("mirror {name}: {alert}");
        }
        info!(
            "mirror {name}: {} journal objects in the bucket, newest snapshot {}; the next \
             object is number {next_number}, chained to object {}{}",
            objects.len(),
            newest_snapshot.map_or("none".to_string(), |n| n.to_string()),
            head.number,
            seal.as_ref().map_or(String::new(), |s| format!(
                ", encrypted with key id {:016x}",
                s.key_id()
            ))
        );
        Ok(S3Mirror {
            name,
            prefix: prefix.to_string(),
            store: Arc::new(store),
            journal_id,
            next_number,
            pending: PendingObject::default(),
            scratch: scratch.to_path_buf(),
            history_lock: Arc::new(Mutex::new(())),
            lease,
            capabilities,
            newest,
            copies: None,
            seal,
            compression: options.compression,
            head,
            head_file,
            head_recorded: (None, false),
            alert,
            history: options.history,
        })
    }

    /// Returns the lock that a [`Folder`] of this mirror must share with it.
    pub fn history_lock(&self) -> Arc<Mutex<()>> {
        self.history_lock.clone()
    }

    /// Returns the findings about the store at open.
    pub fn report(&self) -> StoreReport {
        let validity = LEASE_VALIDITY.as_secs();
        let protection = if self.capabilities.conditional_writes {
            format!(
                "conditional writes (If-None-Match, If-Match) and a lease confirmed every \
                 {validity}s"
            )
        } else {
            format!(
                "read-after-write lease confirmed every {validity}s, read again after a pause \
                 when taken (the store ignores conditional writes)"
            )
        };
        let history = match self.history {
            History::Managed => "managed",
            History::AppendOnly => "append-only",
        };
        let retention_lock = self.store.retention_lock().map(|lock| {
            let mode = match lock.mode {
                LockMode::Compliance => "compliance",
                LockMode::Governance => "governance",
            };
            format!("{} days, {mode}", lock.days)
        });
        StoreReport {
            endpoint: self.store.endpoint().to_string(),
            conditional_writes: self.capabilities.conditional_writes,
            checksums: checksums_text(self.capabilities).to_string(),
            lease_key: self.lease.key().to_string(),
            protection,
            encryption: match &self.seal {
                Some(seal) => format!("client (key id {:016x})", seal.key_id()),
                None => "none".to_string(),
            },
            history: history.to_string(),
            retention_lock,
            sse: self.store.encryption().map(|e| e.option_text().to_string()),
        }
    }

    /// Checks the mirror's position in the store against the local journal, at `head`, and
    /// the mirror's `cursor` file. Returns the reason for a resync when the store does not
    /// hold what the cursor records as confirmed.
    ///
    /// # Errors
    ///
    /// [`Error::StoreAhead`] when the store contains records of this journal beyond `head`,
    /// and [`Error::TakenOver`] when another daemon stored objects after the cursor and
    /// `takeover` is off.
    pub fn check_position(
        &self,
        head: Seq,
        cursor: Option<&Cursor>,
        journal_dir: &Path,
        takeover: bool,
    ) -> Result<Option<String>, Error> {
        let newest = self.newest.as_ref();
        match position::compare(newest, self.journal_id, head, cursor, takeover) {
            Verdict::InStep => Ok(None),
            Verdict::Resync(reason) => Ok(Some(reason)),
            Verdict::StoreAhead { store_seq, head } => Err(Error::StoreAhead {
                mirror: self.name.clone(),
                store_seq,
                head,
                journal_dir: journal_dir.to_path_buf(),
            }),
            Verdict::TakenOver {
                number,
                other_journal,
                confirmed,
            } => Err(Error::TakenOver {
                mirror: self.name.clone(),
                number,
                other_journal,
                confirmed,
                journal_dir: journal_dir.to_path_buf(),
            }),
        }
    }

    /// Starts the readable copies: from now on every record the mirror stores also updates
    /// the copy of the file it changes.
    pub fn start_copies(&mut self, settings: CopySettings) -> Result<(), Error> {
        // NOTE: copies use the mirror's bucket and key, which may overwrite and delete them,
        // also with history=append-only.
        if self.seal.is_some() {
            info!(
                "mirror {}: readable copies are off because encrypt_key is set; a copy would \
                 store the file in plain text",
                self.name
            );
            return Ok(());
        }
        let copies = Copies::start(settings, self.store.clone(), &self.name, &self.prefix)?;
        self.copies = Some(copies);
        Ok(())
    }

    fn push(&mut self, record: &Record) -> Result<(), Error> {
        // Storing first keeps a failed apply without effect, so the worker's retry of the
        // same record adds it once.
        if self.pending.len_bytes() >= MAX_OBJECT_BYTES {
            self.upload()?;
        }
        self.pending.push(record).map_err(|e| Error::Setup {
            mirror: self.name.clone(),
            reason: format!("seq {} cannot be framed: {e}", record.seq),
        })?;
        Ok(())
    }

    /// Stores the pending object under the next free number. The lease must have been
    /// confirmed within [`LEASE_VALIDITY`]; [`Mirror::idle`] keeps it confirmed, so that a
    /// sync-mode write seldom waits for a lease check.
    fn upload(&mut self) -> Result<(), Error> {
        let checked = self.lease.check_if_older(&self.store, LEASE_VALIDITY);
        self.lease_checked(checked)?;
        let (first, last) = self.pending.seq_range();
        let frames = self.pending.frame_count();
        let started = Instant::now();
        let mut renumbered = 0;
        loop {
            let number = self.next_number;
            let key = object_key(&self.prefix, number);
            let body = self
                .pending
                .encode(
                    self.journal_id,
                    number,
                    self.head.digest,
                    self.seal.as_ref(),
                    self.compression,
                )
                .map_err(|e| Error::Setup {
                    mirror: self.name.clone(),
                    reason: format!("cannot encode journal object {key}: {e}"),
                })?;
            let digest = object::sha256(&body);
            // An append-only policy accepts only PUTs with If-None-Match, so they carry it
            // even to a store that ignores it.
            let outcome =
                if self.capabilities.conditional_writes || self.history == History::AppendOnly {
                    self.store.put_new(&key, &body)
                } else {
                    // The lease is the only protection here (see DESIGN.md, "Ownership").
                    self.store
                        .put_history(&key, &body, store::Condition::Always)
                        .map(|_| PutOutcome::Stored)
                };
            drop(body);
            let outcome = outcome.map_err(|source| self.store_error("upload of", &key, source))?;
            if outcome == PutOutcome::Stored {
                self.head = ChainHead { number, digest };
                debug!(
                    "mirror {}: stored key={key} bytes={} records={frames} seqs={first}-{last} \
                     in {:.1?}",
                    self.name,
                    self.pending.len_bytes(),
                    started.elapsed()
                );
                break;
            }
            renumbered += 1;
            if renumbered > MAX_RENUMBERS {
                return Err(Error::Setup {
                    mirror: self.name.clone(),
                    reason: format!(
                        "journal object {key} and the numbers before it were taken by another \
                         writer {MAX_RENUMBERS} times in a row; is a daemon without the lease \
                         writing to this prefix?"
                    ),
                });
            }
            self.skip_taken_numbers(&key)?;
        }
        self.pending = PendingObject::default();
        self.next_number += 1;
        self.head_recorded.1 = true;
        if self
            .head_recorded
            .0
            .is_none_or(|at| at.elapsed() >= HEAD_RECORD_INTERVAL)
        {
            self.record_head();
        }
        Ok(())
    }

    /// Writes the chain head to the state directory.
    fn record_head(&mut self) {
        chain::record(&self.head_file, &self.name, &self.head);
        self.head_recorded = (Some(Instant::now()), false);
    }

    /// Moves the next number past the journal objects another writer stored at or after
    /// `key`, and logs it. This daemon's lease was confirmed recently, so the other writer
    /// has lost its lease or never had one.
    fn skip_taken_numbers(&mut self, key: &str) -> Result<(), Error> {
        let objects = replay::list_objects(&self.store, &self.prefix, &self.name)?;
        let highest = objects.last().map_or(0, |(number, _)| *number);
        warn!(
            "mirror {}: journal object {key} already exists with other content although this \
             daemon holds the lease; another writer stored objects in the prefix. Continuing \
             after object {highest}",
            self.name
        );
        self.next_number = self.next_number.max(highest + 1);
        let source = Source {
            store: &self.store,
            name: &self.name,
            seal: self.seal.as_ref(),
        };
        (self.head, _) = chain::find_head(source, &self.prefix, &objects)?;
        Ok(())
    }

    /// Turns the outcome of a lease check into the mirror's error. A lost lease also stops
    /// the readable copies: the new owner writes them now.
    fn lease_checked(&self, checked: Result<(), LeaseError>) -> Result<(), Error> {
        let error = match checked {
            Ok(()) => return Ok(()),
            Err(e) => lease_error(&self.name, e),
        };
        if let (Error::LeaseLost { owner, .. }, Some(copies)) = (&error, &self.copies) {
            copies.halt(&format!(
                "the lease {} is now held by {owner}",
                self.lease.key()
            ));
        }
        Err(error)
    }

    fn store_error(&self, action: &'static str, key: &str, source: StoreError) -> Error {
        Error::Store {
            mirror: self.name.clone(),
            action,
            key: key.to_string(),
            source: Box::new(source),
        }
    }

    /// Empties the scratch directory and opens it as a directory mirror.
    fn fresh_scratch(&self) -> Result<DirMirror, Error> {
        let failed = |what: &str, e: std::io::Error| Error::Setup {
            mirror: self.name.clone(),
            reason: format!("cannot {what} scratch directory {:?}: {e}", self.scratch),
        };
        remove_scratch(&self.scratch).map_err(|e| failed("empty", e))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.scratch)
            .map_err(|e| failed("create", e))?;
        DirMirror::open(&self.scratch)
    }
}

impl Mirror for S3Mirror {
    fn name(&self) -> &str {
        &self.name
    }

    /// Adds an op that has no journal record (a resync's) with seq 0.
    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        self.push(&Record {
            seq: Seq(0),
            committed_at_ns: super::worker::now_ns(),
            op: op.clone(),
        })
    }

    fn apply_record(&mut self, record: &Record) -> Result<(), Error> {
        self.push(record)?;
        if let Some(copies) = &self.copies {
            copies.record(record);
        }
        Ok(())
    }

    fn copies(&self) -> Option<Arc<Copies>> {
        self.copies.clone()
    }

    fn integrity_alert(&self) -> Option<String> {
        self.alert.clone()
    }

    /// Confirms the lease before its validity runs out, so that the next upload need not.
    fn idle(&mut self) -> Result<(), Error> {
        if self.head_recorded.1 {
            self.record_head();
        }
        self.store.tend_connections();
        let checked = self.lease.check_if_older(&self.store, LEASE_REFRESH);
        self.lease_checked(checked)
    }

    fn resynced(&mut self, head: Seq) {
        if let Some(copies) = &self.copies {
            copies.resynced(head);
        }
    }

    fn release(&mut self) -> Result<(), Error> {
        match self.lease.release(&self.store) {
            // Credentials that may not delete leave the lease; the next mount from the same
            // state directory reclaims it without takeover.
            Err(LeaseError::Store { key, source })
                if source.code.as_deref() == Some("AccessDenied") =>
            {
                warn!(
                    "mirror {}: the store refused to delete the lease object {key} \
                     (AccessDenied); it stays until a mount from this state directory \
                     reclaims it",
                    self.name
                );
                Ok(())
            }
            Ok(true) => {
                info!(
                    "mirror {}: released the lease {}",
                    self.name,
                    self.lease.key()
                );
                Ok(())
            }
            Ok(false) => {
                warn!(
                    "mirror {}: the lease {} names another owner now; left it alone",
                    self.name,
                    self.lease.key()
                );
                Ok(())
            }
            Err(e) => Err(lease_error(&self.name, e)),
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.upload()
    }

    /// Stores what is pending, then replays the history into the scratch directory and
    /// lists it.
    fn manifest(&mut self) -> Result<Manifest, Error> {
        self.flush()?;
        let started = Instant::now();
        let mut target = self.fresh_scratch()?;
        let mut stats = ReplayStats::default();
        let replayed = {
            let _history = self.history_lock.lock().unwrap_or_else(|e| e.into_inner());
            let source = Source {
                store: &self.store,
                name: &self.name,
                seal: self.seal.as_ref(),
            };
            replay::list_history(&self.store, &self.prefix, &self.name, self.seal.as_ref())
                .and_then(|history| {
                    replay::replay(
                        source,
                        &history,
                        &mut target,
                        ReplayTarget::End,
                        &mut stats,
                        &mut |_| {},
                    )
                })
                .and_then(|_| chain::check_end(&self.name, &self.prefix, &stats, &self.head))
        };
        drop(target);
        let skip = [OsStr::new(STATE_DIR_NAME)];
        let result = replayed.and_then(|_| {
            manifest::scan_tree(&self.scratch, &skip).map_err(|e| Error::Setup {
                mirror: self.name.clone(),
                reason: format!("cannot list the replayed tree in {:?}: {e}", self.scratch),
            })
        });
        if let Err(e) = remove_scratch(&self.scratch) {
            warn!(
                "mirror {}: cannot remove scratch directory {:?}: {e}",
                self.name, self.scratch
            );
        }
        debug!(
            "mirror {}: replayed {} objects ({} records, {} bytes) for a manifest in {:.1?}",
            self.name,
            stats.objects,
            stats.records,
            stats.bytes_downloaded,
            started.elapsed()
        );
        result
    }
}

/// Rebuilds the tree of the S3 mirror at `bucket`/`prefix` in the existing directory `dir`
/// as of `until`, by replaying its history through a [`DirMirror`], then syncs it.
///
/// `stats` counts what was applied, and `progress` is called after each object, also when
/// an object fails its checks and the replay stops there. `dir` then contains the tree as of
/// the last frame applied.
pub fn restore(
    bucket: &str,
    prefix: &str,
    options: &S3Options,
    dir: &Path,
    until: ReplayTarget,
    stats: &mut ReplayStats,
    progress: &mut dyn FnMut(&ReplayStats),
) -> Result<ReplayEnd, Error> {
    let name = s3_name(bucket, prefix);
    let store = connect(&name, bucket, options)?;
    let seal = load_seal(&name, options)?;
    let history = replay::list_history(&store, prefix, &name, seal.as_ref())?;
    let mut target = DirMirror::open(dir)?;
    let source = Source {
        store: &store,
        name: &name,
        seal: seal.as_ref(),
    };
    // NOTE: a restore has no recorded chain head, so newest objects removed from the store
    // go unnoticed here. Only a mount's verify compares the store with what it stored.
    let end = replay::replay(source, &history, &mut target, until, stats, progress)?;
    target.flush()?;
    Ok(end)
}

fn s3_name(bucket: &str, prefix: &str) -> String {
    MirrorSpec::S3 {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    }
    .name()
}

fn connect(name: &str, bucket: &str, options: &S3Options) -> Result<Store, Error> {
    Store::connect(options, bucket).map_err(|source| Error::Store {
        mirror: name.to_string(),
        action: "connection to bucket",
        key: bucket.to_string(),
        source: Box::new(source),
    })
}

fn lease_error(name: &str, error: LeaseError) -> Error {
    match error {
        LeaseError::Held { owner } => Error::LeaseHeld {
            mirror: name.to_string(),
            owner,
        },
        LeaseError::Lost { owner } => Error::LeaseLost {
            mirror: name.to_string(),
            owner,
        },
        LeaseError::Store { key, source } => Error::Store {
            mirror: name.to_string(),
            action: "request for lease object",
            key,
            source: Box::new(source),
        },
        LeaseError::Token(e) => Error::Setup {
            mirror: name.to_string(),
            reason: format!("cannot create a lease token: {e}"),
        },
    }
}

/// Reads the `encrypt_key` file of `options`, if set.
fn load_seal(name: &str, options: &S3Options) -> Result<Option<Seal>, Error> {
    let Some(path) = &options.encrypt_key else {
        return Ok(None);
    };
    Seal::load(path).map(Some).map_err(|e| Error::Setup {
        mirror: name.to_string(),
        reason: e.to_string(),
    })
}

/// Removes a scratch directory and everything in it; a missing one is fine.
fn remove_scratch(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
