//! Unit tests of the S3 mirror's history requests against an in-process bucket that
//! enforces an append-only policy or S3 Object Lock (`store/fake.rs`). Garage can express
//! neither, so these rules are tested here; `tests/s3_security.rs` covers what Garage can.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::SseKind;
use crate::config::{History, LockMode, S3Options};
use crate::journal::{Op, Record, RelPath, Seq};
use crate::mirror::worker::error_chain;
use crate::mirror::{Error, Mirror};

use super::store::fake::{FakeBucket, Rules};
use super::store::{Condition, PutOutcome, Store};
use super::{Folder, LeaseOptions, S3Mirror, lease_key, object_key};

const PREFIX: &str = "web1";
const DAY: Duration = Duration::from_secs(86_400);

fn append_only_bucket() -> Arc<FakeBucket> {
    Arc::new(FakeBucket::new(Rules {
        append_only: Some(PREFIX.into()),
        ..Rules::default()
    }))
}

fn locking_bucket() -> Arc<FakeBucket> {
    Arc::new(FakeBucket::new(Rules {
        object_lock: true,
        ..Rules::default()
    }))
}

fn options(history: History) -> S3Options {
    S3Options {
        history,
        ..S3Options::default()
    }
}

fn locked_options(days: u32, mode: Option<LockMode>) -> S3Options {
    S3Options {
        retention_lock_days: Some(days),
        retention_lock_mode: mode,
        ..S3Options::default()
    }
}

fn store(bucket: &Arc<FakeBucket>, options: &S3Options) -> Store {
    Store::with_fake(bucket.clone(), options).expect("fake store")
}

fn open(bucket: &Arc<FakeBucket>, options: &S3Options, dir: &Path) -> Result<S3Mirror, Error> {
    let lease = LeaseOptions {
        state_dir: dir,
        takeover: false,
    };
    S3Mirror::open_with_store(
        store(bucket, options),
        "s3://fake/web1",
        PREFIX,
        options,
        7,
        &dir.join("scratch"),
        &lease,
    )
}

/// Stores one journal object that creates `name` with `data`, committed at `at_ns`.
fn store_file(mirror: &mut S3Mirror, seq: u64, name: &str, data: &[u8], at_ns: u64) {
    let path = RelPath::from_bytes(name.as_bytes()).expect("valid path");
    let ops = [
        Op::Create {
            path: path.clone(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path,
            offset: 0,
            data: data.to_vec(),
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        let record = Record {
            seq: Seq(seq + i as u64),
            committed_at_ns: at_ns,
            op,
        };
        mirror.apply_record(&record).expect("apply");
    }
    mirror.flush().expect("flush");
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

fn journal_keys(bucket: &FakeBucket) -> Vec<String> {
    bucket.keys(&format!("{PREFIX}/.logmirror/journal/"))
}

fn refusals(bucket: &FakeBucket, code: &str) -> Vec<String> {
    let refused = bucket.refused.lock().unwrap();
    refused
        .iter()
        .filter(|r| r.ends_with(code))
        .cloned()
        .collect()
}

#[test]
fn append_only_mount_stores_history() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = append_only_bucket();
    let mut mirror = open(&bucket, &options(History::AppendOnly), dir.path()).expect("open");
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    store_file(&mut mirror, 3, "b.log", b"second\n", now_ns());
    mirror.release().expect("release");

    assert_eq!(
        journal_keys(&bucket),
        vec![object_key(PREFIX, 1), object_key(PREFIX, 2)]
    );
    assert_eq!(refusals(&bucket, "AccessDenied"), Vec::<String>::new());
    // The probe object stays, because deleting it is not allowed. The second probe, with a
    // wrong checksum, was rejected by the bucket and never stored.
    assert_eq!(bucket.keys(&format!("{PREFIX}/.logmirror/probe-")).len(), 1);
    // The lease is outside the append-only part, so it was removed at release.
    assert_eq!(bucket.keys(&lease_key(PREFIX)), Vec::<String>::new());
}

#[test]
fn managed_mount_denied_on_append_only_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = append_only_bucket();
    let Err(error) = open(&bucket, &options(History::Managed), dir.path()) else {
        panic!("a managed mount must fail when it may not delete its probe objects");
    };
    let message = error_chain(&error);
    assert!(message.contains("AccessDenied"), "{message}");
    assert!(message.contains("/.logmirror/probe-"), "{message}");
}

#[test]
fn append_only_credentials_cannot_rewrite_history() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = append_only_bucket();
    let mut mirror = open(&bucket, &options(History::AppendOnly), dir.path()).expect("open");
    store_file(&mut mirror, 1, "audit.log", b"login root\n", now_ns());
    store_file(&mut mirror, 3, "audit.log.1", b"sudo\n", now_ns());
    mirror.release().expect("release");
    let first = object_key(PREFIX, 1);
    let original = bucket.objects.lock().unwrap()[&first].clone();

    // An intruder with root on the host holds the same credentials.
    let intruder = store(&bucket, &options(History::AppendOnly));
    let deleted = intruder.delete(&first, Condition::Always);
    assert_eq!(deleted.unwrap_err().code.as_deref(), Some("AccessDenied"));
    let replaced = intruder.put(&first, b"nothing happened\n", Condition::Always);
    assert_eq!(replaced.unwrap_err().code.as_deref(), Some("AccessDenied"));
    let matched = intruder.put(&first, b"x", Condition::Matches(&original.etag));
    assert_eq!(matched.unwrap_err().code.as_deref(), Some("AccessDenied"));
    let taken = intruder
        .put_new(&first, b"nothing happened\n")
        .expect("put_new");
    assert_eq!(taken, PutOutcome::Taken);
    assert_eq!(bucket.objects.lock().unwrap()[&first].bytes, original.bytes);

    // Adding history is allowed: that is what the mount needs.
    let added = intruder
        .put_new(&object_key(PREFIX, 3), b"more\n")
        .expect("put_new");
    assert_eq!(added, PutOutcome::Stored);

    // A fold with these credentials cannot remove the folded objects either.
    let append_only = options(History::AppendOnly);
    let mut folder = Folder::with_store(
        store(&bucket, &append_only),
        "s3://fake/web1".into(),
        PREFIX,
        &append_only,
        &dir.path().join("fold"),
        Arc::new(Mutex::new(())),
    )
    .expect("folder");
    // Object 3 is not a journal object, so the fold fails before it folds anything.
    bucket
        .objects
        .lock()
        .unwrap()
        .remove(&object_key(PREFIX, 3));
    let folded = folder.fold(now_ns() + 1);
    let message = error_chain(&folded.unwrap_err());
    assert!(message.contains("AccessDenied"), "{message}");
    assert_eq!(
        journal_keys(&bucket),
        vec![object_key(PREFIX, 1), object_key(PREFIX, 2)]
    );
}

#[test]
fn retention_lock_sent_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = locking_bucket();
    let options = locked_options(30, Some(LockMode::Governance));
    let mut mirror = open(&bucket, &options, dir.path()).expect("open");
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    store_file(&mut mirror, 3, "a.log.1", b"second\n", now_ns());

    let keys = journal_keys(&bucket);
    assert_eq!(keys.len(), 2);
    for key in &keys {
        let object = bucket.objects.lock().unwrap()[key].clone();
        let (mode, until) = object.lock.expect("journal object locked");
        assert_eq!(mode, LockMode::Governance, "{key}");
        let locked_for = until.duration_since(object.modified).expect("date ahead");
        assert!(locked_for <= 30 * DAY, "{key}: {locked_for:?}");
        assert!(
            locked_for >= 30 * DAY - Duration::from_secs(60),
            "{key}: {locked_for:?}"
        );
    }
    // The lease and the probe objects carry no retention, so they can be removed.
    let lease = bucket.objects.lock().unwrap()[&lease_key(PREFIX)].clone();
    assert_eq!(lease.lock, None);
    assert_eq!(
        bucket.keys(&format!("{PREFIX}/.logmirror/probe-")),
        Vec::<String>::new()
    );

    let deleted = store(&bucket, &options).delete(&keys[0], Condition::Always);
    assert_eq!(deleted.unwrap_err().code.as_deref(), Some("AccessDenied"));
    let report = mirror.report();
    assert_eq!(
        report.retention_lock.as_deref(),
        Some("30 days, governance")
    );
    assert_eq!(report.history, "managed");
    mirror.release().expect("release");
}

#[test]
fn retention_lock_default_mode_compliance() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = locking_bucket();
    let mut mirror = open(&bucket, &locked_options(1, None), dir.path()).expect("open");
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    let key = object_key(PREFIX, 1);
    let lock = bucket.objects.lock().unwrap()[&key].lock;
    assert_eq!(lock.map(|(mode, _)| mode), Some(LockMode::Compliance));
}

#[test]
fn retention_lock_rejected_without_object_lock() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(FakeBucket::new(Rules::default()));
    let Err(error) = open(&bucket, &locked_options(30, None), dir.path()) else {
        panic!("retention_lock must fail on a bucket without Object Lock");
    };
    let message = error_chain(&error);
    assert!(message.contains("retention_lock=30"), "{message}");
    assert!(message.contains("Object Lock"), "{message}");
    assert_eq!(journal_keys(&bucket), Vec::<String>::new());
}

#[test]
fn fold_leaves_locked_objects() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = locking_bucket();
    let options = locked_options(1, None);
    let mut mirror = open(&bucket, &options, dir.path()).expect("open");
    let old = now_ns() - 10 * DAY.as_nanos() as u64;
    store_file(&mut mirror, 1, "a.log", b"first\n", old);
    store_file(&mut mirror, 3, "b.log", b"second\n", old);
    let mut folder = Folder::with_store(
        store(&bucket, &options),
        "s3://fake/web1".into(),
        PREFIX,
        &options,
        &dir.path().join("fold"),
        mirror.history_lock(),
    )
    .expect("folder");

    // The records are old, but the objects were stored just now and stay locked a day.
    let first = folder.fold(now_ns()).expect("fold").expect("foldable");
    assert_eq!(first.snapshot, 2);
    assert_eq!(first.objects_removed, 0);
    assert_eq!(journal_keys(&bucket).len(), 2);
    assert_eq!(refusals(&bucket, "AccessDenied"), Vec::<String>::new());

    // Two days later the retention has ended; the next fold removes what the snapshot
    // covers, but not the object stored just now.
    bucket.age(2 * DAY);
    store_file(&mut mirror, 5, "c.log", b"third\n", old);
    let second = folder.fold(now_ns()).expect("fold").expect("foldable");
    assert_eq!(second.snapshot, 3);
    assert_eq!(second.objects_removed, 2);
    assert_eq!(journal_keys(&bucket), vec![object_key(PREFIX, 3)]);
    assert_eq!(refusals(&bucket, "AccessDenied"), Vec::<String>::new());
    let snapshots = bucket.keys(&format!("{PREFIX}/.logmirror/snapshot"));
    assert!(
        snapshots
            .iter()
            .all(|k| !k.contains("00000000000000000002")),
        "the snapshot 2 unlocked and replaced must be removed: {snapshots:?}"
    );
    mirror.release().expect("release");
}

fn sse_options() -> S3Options {
    S3Options {
        sse: Some(SseKind::Aes256),
        ..S3Options::default()
    }
}

#[test]
fn sse_sent_with_every_history_object() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(FakeBucket::new(Rules {
        confirms_encryption: true,
        ..Rules::default()
    }));
    let mut mirror = open(&bucket, &sse_options(), dir.path()).expect("open");
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    let objects = bucket.objects.lock().unwrap().clone();
    assert!(objects.len() >= 2, "{:?}", objects.keys());
    for (key, object) in objects {
        assert_eq!(object.encryption, Some("sse=aes256"), "{key}");
    }
    mirror.release().expect("release");
}

#[test]
fn sse_unconfirmed_rejects_mount() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(FakeBucket::new(Rules::default()));
    let Err(error) = open(&bucket, &sse_options(), dir.path()) else {
        panic!("a store that does not confirm sse=aes256 must fail the mount");
    };
    let message = error_chain(&error);
    assert!(message.contains("sse=aes256"), "{message}");
    assert!(message.contains("did not confirm"), "{message}");
    assert_eq!(journal_keys(&bucket), Vec::<String>::new());
}

#[test]
fn append_only_without_conditional_writes() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(FakeBucket::new(Rules {
        append_only: Some(PREFIX.into()),
        ignores_conditions: true,
        ..Rules::default()
    }));
    let mut mirror = open(&bucket, &options(History::AppendOnly), dir.path()).expect("open");
    assert!(!mirror.report().conditional_writes);
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    mirror.release().expect("release");
    assert_eq!(journal_keys(&bucket), vec![object_key(PREFIX, 1)]);
    assert_eq!(refusals(&bucket, "AccessDenied"), Vec::<String>::new());
}

#[test]
fn retention_lock_without_conditional_writes() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = Arc::new(FakeBucket::new(Rules {
        object_lock: true,
        ignores_conditions: true,
        ..Rules::default()
    }));
    let mut mirror = open(&bucket, &locked_options(7, None), dir.path()).expect("open");
    assert!(!mirror.report().conditional_writes);
    store_file(&mut mirror, 1, "a.log", b"first\n", now_ns());
    let key = object_key(PREFIX, 1);
    let lock = bucket.objects.lock().unwrap()[&key].lock;
    assert_eq!(lock.map(|(mode, _)| mode), Some(LockMode::Compliance));
    mirror.release().expect("release");
}
