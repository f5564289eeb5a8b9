//! `logmirror restore` of an S3 mirror on a real single-node Garage on loopback. The tree
//! as of an earlier seq or time must equal a listing of the backing tree taken at that
//! point, and a non-empty directory is rejected unless `--force`. With `retention=` the
//! daemon folds old journal objects into a snapshot. Restore, verify and a remount must
//! then still give the backing tree, and points before the fold fail with the earliest
//! point that can be restored.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{
    EXIT_RUNTIME, EXIT_USAGE, Mode, Mount, STATE_DIR, TestDirs, Tree, assert_same_tree, tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";
const SNAPSHOT_PREFIX: &str = "host1/.logmirror/snapshot/";

fn mirror_spec(garage: &Garage) -> String {
    garage.mirror_spec(PREFIX)
}

fn mount_options(garage: &Garage, extra: &[&str]) -> Vec<String> {
    let mut options = vec![
        format!("mirror={}", mirror_spec(garage)),
        garage.options(),
        format!("mode={}", Mode::Async.as_str()),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    options
}

/// Runs `logmirror restore` of the test mirror into `dir`, with `extra` arguments.
fn restore(garage: &Garage, dir: &Path, extra: &[&str]) -> common::CmdOutput {
    garage.restore(PREFIX, dir, extra)
}

/// Restores into a new directory `name` with `extra` arguments, asserts exit 0, and returns
/// the restored tree and the last line of stdout.
fn restore_tree(garage: &Garage, dirs: &TestDirs, name: &str, extra: &[&str]) -> (Tree, String) {
    let target = dirs.root.join(name);
    let out = restore(garage, &target, extra);
    assert_eq!(out.code(), 0, "restore {extra:?}: {out}");
    let last = out.stdout.lines().last().unwrap_or_default().to_string();
    (tree_sha256(&target, &[]), last)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Formats ns since the Unix epoch as RFC 3339 in UTC.
fn rfc3339(ns: u64) -> String {
    jiff::Timestamp::from_nanosecond(i128::from(ns))
        .expect("valid time")
        .to_string()
}

fn append(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("append to {path:?}: {e}"));
}

fn lines(tag: &str, count: usize) -> String {
    (0..count).map(|i| format!("{tag} line {i:04}\n")).collect()
}

/// A point of the history: the backing tree, the journal head and a time after the last
/// record of the point and before the first one after it.
struct Point {
    tree: Tree,
    seq: u64,
    at_ns: u64,
}

/// Syncs the mount and records the point it reached.
fn mark(mount: &Mount) -> Point {
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let tree = tree_sha256(&mount.dirs.backing, &[STATE_DIR]);
    let seq = mount.status().head_seq;
    Point {
        tree,
        seq,
        at_ns: now_ns(),
    }
}

#[test]
fn restore_at_seq_and_time() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    let mnt = mount.mnt();

    fs::create_dir(mnt.join("app")).expect("mkdir app");
    append(&mnt.join("app/a.log"), &lines("first", 200));
    append(&mnt.join("b.log"), &lines("b", 50));
    symlink("b.log", mnt.join("current")).expect("symlink current");
    let first = mark(&mount);

    append(&mnt.join("app/a.log"), &lines("second", 100));
    fs::rename(mnt.join("b.log"), mnt.join("b.log.1")).expect("rename b.log");
    append(&mnt.join("b.log"), &lines("new b", 10));
    fs::remove_file(mnt.join("current")).expect("unlink current");
    fs::create_dir(mnt.join("app/sub")).expect("mkdir app/sub");
    append(&mnt.join("app/sub/c.log"), &lines("c", 30));
    let second = mark(&mount);

    fs::remove_file(mnt.join("app/sub/c.log")).expect("unlink c.log");
    fs::remove_dir(mnt.join("app/sub")).expect("rmdir app/sub");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("app/a.log"))
        .expect("open a.log");
    file.set_len(100).expect("truncate a.log");
    drop(file);
    append(&mnt.join("app/a.log"), &lines("third", 5));
    let third = mark(&mount);
    mount.unmount();

    assert!(first.seq < second.seq, "{} {}", first.seq, second.seq);
    assert!(second.seq < third.seq, "{} {}", second.seq, third.seq);
    assert_ne!(first.tree, second.tree);
    assert_ne!(second.tree, third.tree);

    let seq = first.seq.to_string();
    let (tree, last) = restore_tree(&garage, &dirs, "seq-first", &["--seq", &seq]);
    assert_same_tree("backing at the first point", &first.tree, "--seq", &tree);
    assert!(
        last.contains(&format!("last seq: {seq}, committed at ")),
        "{last}"
    );

    let at = rfc3339(first.at_ns);
    let (tree, _) = restore_tree(&garage, &dirs, "at-first", &["--at", &at]);
    assert_same_tree("backing at the first point", &first.tree, "--at", &tree);

    let seq = second.seq.to_string();
    let (tree, last) = restore_tree(&garage, &dirs, "seq-second", &["--seq", &seq]);
    assert_same_tree("backing at the second point", &second.tree, "--seq", &tree);
    assert!(
        last.contains(&format!("last seq: {seq}, committed at ")),
        "{last}"
    );

    // Unix seconds with a fraction, as the other form --at takes.
    let unix = format!(
        "{}.{:09}",
        second.at_ns / 1_000_000_000,
        second.at_ns % 1_000_000_000
    );
    let (tree, _) = restore_tree(&garage, &dirs, "at-second", &["--at", &unix]);
    assert_same_tree("backing at the second point", &second.tree, "--at", &tree);

    let (tree, last) = restore_tree(&garage, &dirs, "latest", &[]);
    assert_same_tree("backing at the end", &third.tree, "restored", &tree);
    assert!(
        last.contains(&format!("last seq: {}, committed at ", third.seq)),
        "{last}"
    );

    // With stderr not a terminal, progress comes as whole lines, here one per object; the
    // last one has the counts of the summary.
    let out = restore(
        &garage,
        &dirs.root.join("progress"),
        &["--progress-interval", "0s"],
    );
    assert_eq!(out.code(), 0, "restore with progress lines: {out}");
    assert!(!out.stderr.contains('\r'), "{out}");
    let progress: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("restoring: "))
        .collect();
    let summary = out.stdout.lines().next().unwrap_or_default();
    let counts = summary
        .split_once("journal objects: ")
        .and_then(|(_, rest)| rest.split_once(", repeated"))
        .map(|(counts, _)| counts.replace(": ", " "))
        .unwrap_or_else(|| panic!("no counts in the summary {summary:?}"));
    let last_progress = progress
        .last()
        .unwrap_or_else(|| panic!("no progress: {out}"));
    assert!(
        last_progress.contains(&format!("journal objects {counts}, downloaded ")),
        "{last_progress:?} lacks {counts:?}"
    );

    // The summary's time restores the same point.
    let committed_at = last.rsplit(' ').next().unwrap_or_default();
    let (tree, _) = restore_tree(&garage, &dirs, "at-summary", &["--at", committed_at]);
    assert_same_tree("backing at the end", &third.tree, "--at summary", &tree);

    let early = dirs.root.join("early");
    let out = restore(&garage, &early, &["--at", "2000-01-01T00:00:00Z"]);
    assert_eq!(out.code(), EXIT_RUNTIME, "--at before the history: {out}");
    assert!(
        out.stderr
            .contains("2000-01-01T00:00:00Z is before the earliest point"),
        "{out}"
    );
    assert!(out.stderr.contains("which is seq 1 at "), "{out}");
    assert!(!early.exists(), "restore left {early:?} behind");

    let beyond = (third.seq + 10).to_string();
    let out = restore(&garage, &dirs.root.join("beyond"), &["--seq", &beyond]);
    assert_eq!(out.code(), EXIT_RUNTIME, "--seq after the end: {out}");
    let expected = format!("ends at seq {} (", third.seq);
    assert!(out.stderr.contains(&expected), "{out}");
    assert!(
        out.stderr.contains(&format!("has no seq {beyond}")),
        "{out}"
    );

    let out = restore(
        &garage,
        &dirs.root.join("both"),
        &["--seq", "1", "--at", "0"],
    );
    assert_eq!(out.code(), EXIT_USAGE, "--seq with --at: {out}");
    let out = restore(&garage, &dirs.root.join("zero"), &["--seq", "0"]);
    assert_eq!(out.code(), EXIT_USAGE, "--seq 0: {out}");
    let out = restore(&garage, &dirs.root.join("bad"), &["--at", "yesterday"]);
    assert_eq!(out.code(), EXIT_USAGE, "--at yesterday: {out}");
    assert!(out.stderr.contains("invalid time \"yesterday\""), "{out}");
}

#[test]
fn restore_nonempty_needs_force() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    fs::create_dir(mount.mnt().join("app")).expect("mkdir app");
    append(&mount.mnt().join("app/a.log"), &lines("a", 100));
    let point = mark(&mount);
    mount.unmount();

    let target = dirs.root.join("full");
    fs::create_dir(&target).expect("mkdir full");
    fs::write(target.join("keep.txt"), "kept\n").expect("write keep.txt");
    let out = restore(&garage, &target, &[]);
    assert_eq!(
        out.code(),
        EXIT_USAGE,
        "restore into a non-empty directory: {out}"
    );
    assert!(
        out.stderr
            .contains(&format!("directory {target:?} is not empty")),
        "{out}"
    );
    assert!(out.stderr.contains("--force"), "{out}");
    assert_eq!(common::list_dir(&target), ["keep.txt"]);

    let out = restore(&garage, &target, &["--force"]);
    assert_eq!(out.code(), 0, "restore --force: {out}");
    let mut expected = point.tree.entries.clone();
    expected.insert("keep.txt".into(), common::sha256_hex(b"kept\n"));
    assert_eq!(tree_sha256(&target, &[]).entries, expected);
}

#[test]
fn restore_force_keeps_symlink_target() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    append(&mount.mnt().join("a.log"), "from the mirror\n");
    mark(&mount);
    mount.unmount();

    let outside = dirs.root.join("outside");
    fs::create_dir(&outside).expect("mkdir outside");
    fs::write(outside.join("victim"), "untouched\n").expect("write victim");
    let target = dirs.root.join("target");
    fs::create_dir(&target).expect("mkdir target");
    symlink(outside.join("victim"), target.join("a.log")).expect("plant symlink");

    let out = restore(&garage, &target, &["--force"]);
    assert_eq!(
        out.code(),
        EXIT_RUNTIME,
        "restore over a planted symlink: {out}"
    );
    assert!(out.stderr.contains("a.log"), "{out}");
    assert_eq!(common::read_text(&outside.join("victim")), "untouched\n");
}

fn journal_numbers(garage: &Garage) -> Vec<u64> {
    garage.journal_numbers(PREFIX)
}

/// Returns the numbers of the snapshot indexes in the bucket.
fn snapshot_numbers(garage: &Garage) -> Vec<u64> {
    garage
        .client()
        .list(SNAPSHOT_PREFIX)
        .iter()
        .filter_map(|key| key.strip_prefix(SNAPSHOT_PREFIX)?.strip_suffix(".lmi"))
        .map(|digits| digits.parse().expect("20 digits"))
        .collect()
}

fn wait_folded(mount: &Mount, garage: &Garage, number: u64) -> u64 {
    garage.wait_folded(PREFIX, mount.mnt(), number)
}

#[test]
fn restore_across_fold() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["retention=1s"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let mnt = mount.mnt();

    let before = now_ns();
    fs::create_dir(mnt.join("app")).expect("mkdir app");
    for i in 0..5 {
        append(&mnt.join("app/a.log"), &lines(&format!("batch {i}"), 100));
        symlink("a.log", mnt.join(format!("app/link{i}"))).expect("symlink");
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync");
    }
    fs::hard_link(mnt.join("app/a.log"), mnt.join("app/hard.log")).expect("hard link");
    let first = mark(&mount);
    let written = journal_numbers(&garage);
    let newest = written.iter().copied().max().unwrap_or(0);
    assert!(
        newest >= 5,
        "journal objects after the first writes: {written:?}"
    );

    let snapshot = wait_folded(&mount, &garage, newest);
    assert_eq!(snapshot_numbers(&garage), [snapshot]);
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after a fold: {out}");

    append(&mnt.join("app/a.log"), &lines("after the fold", 20));
    fs::remove_file(mnt.join("app/link0")).expect("unlink link0");
    let second = mark(&mount);
    let newest = journal_numbers(&garage).into_iter().max().unwrap_or(0);
    let snapshot = wait_folded(&mount, &garage, newest.max(snapshot));
    assert_eq!(journal_numbers(&garage), Vec::<u64>::new());
    mount.unmount();

    // Every journal object was folded and removed, so the next object's number must come
    // from the snapshot, or a restore would leave it out as already covered.
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    append(
        &mount.mnt().join("app/a.log"),
        &lines("after the remount", 7),
    );
    let third = mark(&mount);
    mount.unmount();
    assert_eq!(journal_numbers(&garage), [snapshot + 1]);

    let (tree, last) = restore_tree(&garage, &dirs, "latest", &[]);
    assert_same_tree("backing", &third.tree, "restored", &tree);
    assert!(
        last.contains(&format!("last seq: {}, committed at ", third.seq)),
        "{last}"
    );

    let seq = second.seq.to_string();
    let (tree, _) = restore_tree(&garage, &dirs, "at-snapshot", &["--seq", &seq]);
    assert_same_tree("backing at the fold", &second.tree, "--seq", &tree);

    let seq = first.seq.to_string();
    let out = restore(&garage, &dirs.root.join("folded-seq"), &["--seq", &seq]);
    assert_eq!(out.code(), EXIT_RUNTIME, "--seq before the snapshot: {out}");
    let earliest = format!(
        "seq {seq} is before the earliest point that {} can restore, which is seq {} at ",
        mirror_spec(&garage),
        second.seq
    );
    assert!(out.stderr.contains(&earliest), "{out}");

    let at = rfc3339(before);
    let out = restore(&garage, &dirs.root.join("folded-at"), &["--at", &at]);
    assert_eq!(out.code(), EXIT_RUNTIME, "--at before the snapshot: {out}");
    assert!(
        out.stderr
            .contains(&format!("{at} is before the earliest point")),
        "{out}"
    );
}
