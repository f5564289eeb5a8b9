//! Group commit: makes appended records durable with as few fdatasync calls as possible.
//!
//! FUSE threads call `Journal::sync_to` after their append. One of them becomes the leader
//! and syncs every segment written since the last commit. The others wait for it and return
//! when its commit covers their record. Nothing here writes a record.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use super::{Error, OpenSegment, Seq, lock};

pub(super) struct Commit {
    state: Mutex<CommitState>,
    /// Signalled when a leader finishes, whether it succeeded or not.
    finished: Condvar,
    fsyncs: AtomicU64,
}

struct CommitState {
    /// Every record up to this one is on stable storage.
    durable: Seq,
    /// True while a leader is syncing. Callers arriving then wait instead of syncing too.
    is_syncing: bool,
    /// Segment and error of the first failed fsync. It stays set because the kernel may
    /// drop the pages it failed to write, and a retried fsync would then succeed anyway.
    failure: Option<(PathBuf, io::ErrorKind)>,
}

impl Commit {
    /// Starts with every record up to `durable` counted as on stable storage.
    pub fn new(durable: Seq) -> Commit {
        Commit {
            state: Mutex::new(CommitState {
                durable,
                is_syncing: false,
                failure: None,
            }),
            finished: Condvar::new(),
            fsyncs: AtomicU64::new(0),
        }
    }

    pub fn durable_seq(&self) -> Seq {
        lock(&self.state).durable
    }

    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Returns once every record up to `seq` is durable, syncing as the leader when no
    /// other thread is.
    ///
    /// `take_batch` runs on the leader only. It returns the published head and every segment
    /// file that may contain unsynced records up to that head.
    pub fn sync_to(
        &self,
        seq: Seq,
        take_batch: impl FnOnce() -> (Seq, Vec<OpenSegment>),
    ) -> Result<(), Error> {
        let mut state = lock(&self.state);
        loop {
            if let Some((path, kind)) = &state.failure {
                let source = io::Error::new(
                    *kind,
                    "an earlier fsync of the journal failed, so durability is unknown",
                );
                return Err(Error::io("fsync journal segment", path, source));
            }
            if state.durable >= seq {
                return Ok(());
            }
            if !state.is_syncing {
                break;
            }
            state = self
                .finished
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.is_syncing = true;
        let previous = state.durable;
        drop(state);

        let (head, files) = take_batch();
        let result = self.sync_files(&files);

        let mut state = lock(&self.state);
        state.is_syncing = false;
        match &result {
            Ok(()) => state.durable = state.durable.max(head),
            Err((path, source)) => state.failure = Some((path.clone(), source.kind())),
        }
        drop(state);
        self.finished.notify_all();

        log::debug!(
            "journal group commit: records={} files={} head={}",
            head.0.saturating_sub(previous.0),
            files.len(),
            head
        );
        result.map_err(|(path, source)| Error::Io {
            action: "fsync journal segment",
            path,
            source,
        })
    }

    fn sync_files(&self, files: &[OpenSegment]) -> Result<(), (PathBuf, io::Error)> {
        for open in files {
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            open.file.sync_data().map_err(|e| (open.path.clone(), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::sync::{Arc, Barrier};
    use std::thread;

    use super::super::Journal;
    use super::super::testing::write_op;
    use super::*;

    fn open(dir: &Path, segment_size_bytes: u64) -> Journal {
        Journal::open(dir, segment_size_bytes).unwrap().0
    }

    #[test]
    fn group_commit_shares_one_fsync() {
        const THREADS: usize = 16;
        let tmp = tempfile::tempdir().unwrap();
        let journal = Arc::new(open(tmp.path(), 1 << 20));
        let appended = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let journal = Arc::clone(&journal);
                let appended = Arc::clone(&appended);
                thread::spawn(move || {
                    let (seq, _) = journal.append(&write_op(t as u64, 10)).unwrap();
                    appended.wait();
                    journal.sync_to(seq).unwrap();
                    assert!(journal.durable_seq() >= seq);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // Every record was written before the first sync started, so that sync covered all.
        assert_eq!(journal.fsync_count(), 1);
        assert_eq!(journal.durable_seq(), Seq(THREADS as u64));
    }

    #[test]
    fn group_commit_under_concurrent_appends() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 50;
        let tmp = tempfile::tempdir().unwrap();
        let journal = Arc::new(open(tmp.path(), 8192));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let journal = Arc::clone(&journal);
                thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let (seq, _) = journal.append(&write_op(t * 1000 + i, 200)).unwrap();
                        journal.sync_to(seq).unwrap();
                        assert!(journal.durable_seq() >= seq);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(journal.durable_seq(), Seq(THREADS * PER_THREAD));
        assert!(journal.fsync_count() >= 1);
        // One fsync per sync_to call plus one per rolled segment is the most a commit without
        // sharing would need.
        let segments = std::fs::read_dir(tmp.path()).unwrap().count() as u64;
        assert!(journal.fsync_count() <= THREADS * PER_THREAD + segments);
    }

    #[test]
    fn sync_covers_rolled_segments() {
        let tmp = tempfile::tempdir().unwrap();
        // Every record starts a new segment.
        let journal = open(tmp.path(), 44);
        for n in 1..=3 {
            journal.append(&write_op(n, 10)).unwrap();
        }
        assert_eq!(journal.durable_seq(), Seq(0));
        journal.sync_to(Seq(3)).unwrap();
        assert_eq!(journal.fsync_count(), 3);
        assert_eq!(journal.durable_seq(), Seq(3));

        journal.sync_to(Seq(3)).unwrap();
        assert_eq!(journal.fsync_count(), 3);

        journal.append(&write_op(4, 10)).unwrap();
        journal.sync_to(Seq(4)).unwrap();
        // Segment 3 rolled after the last commit, so it is synced again along with 4.
        assert_eq!(journal.fsync_count(), 5);
    }

    #[test]
    fn sync_beyond_head_syncs_head() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = open(tmp.path(), 1 << 20);
        journal.sync_to(Seq(0)).unwrap();
        assert_eq!(journal.fsync_count(), 0);
        journal.append(&write_op(1, 10)).unwrap();
        journal.append(&write_op(2, 10)).unwrap();
        journal.sync_to(Seq(100)).unwrap();
        assert_eq!(journal.durable_seq(), Seq(2));
        assert_eq!(journal.fsync_count(), 1);
    }

    #[test]
    fn reopen_counts_records_as_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let journal = open(tmp.path(), 1 << 20);
        journal.append(&write_op(1, 10)).unwrap();
        drop(journal);
        let journal = open(tmp.path(), 1 << 20);
        assert_eq!(journal.durable_seq(), Seq(1));
        journal.sync_to(Seq(1)).unwrap();
        assert_eq!(journal.fsync_count(), 0);
    }

    #[test]
    fn failed_fsync_fails_later_commits() {
        let (socket, _peer) = UnixStream::pair().unwrap();
        // fdatasync(2) on a socket fails with EINVAL.
        let broken = OpenSegment {
            first_seq: Seq(1),
            path: "broken.seg".into(),
            file: Arc::new(File::from(OwnedFd::from(socket))),
        };
        let tmp = tempfile::tempdir().unwrap();
        let good = OpenSegment {
            first_seq: Seq(1),
            path: tmp.path().join("good.seg"),
            file: Arc::new(File::create(tmp.path().join("good.seg")).unwrap()),
        };

        let commit = Commit::new(Seq(0));
        match commit.sync_to(Seq(1), || (Seq(1), vec![broken])) {
            Err(Error::Io {
                action,
                path,
                source,
            }) => {
                assert_eq!(action, "fsync journal segment");
                assert_eq!(path, PathBuf::from("broken.seg"));
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("expected Io, got {other:?}"),
        }
        match commit.sync_to(Seq(1), || (Seq(1), vec![good])) {
            Err(Error::Io { path, source, .. }) => {
                assert_eq!(path, PathBuf::from("broken.seg"));
                assert_eq!(source.kind(), io::ErrorKind::InvalidInput);
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert_eq!(commit.durable_seq(), Seq(0));
        assert_eq!(commit.fsync_count(), 1);
    }
}
