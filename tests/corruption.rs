//! Damage to what logmirror keeps: a flipped byte in a journal segment, a segment cut in
//! the middle of a record, a deleted cursor file, and a damaged journal object in the S3
//! store. Each must be logged at error level with the file or key, must never reach a
//! mirror or a restore as good data, and must leave everything that is provably intact.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::path::{Path, PathBuf};

use common::journal_objects::{FRAME_HEADER_BYTES, OBJECT_HEADER_BYTES, object_key};
use common::state_dir::{flip_byte, frame_offsets, mirror_cursor, only_cursor_file, segments};
use common::{
    EXIT_RUNTIME, Mode, Mount, ReadOnlyBind, TestDirs, append_lines, assert_mirrors_match,
    expected_lines, path_str, read_text, sha256_hex, tree_sha256,
};
use garage::Garage;

/// Lines of `app.log` that the mirror confirmed before it went down.
const CONFIRMED_LINES: usize = 100;
/// Lines of `app.log` written in all, the last ones while the mirror was down.
const ALL_LINES: usize = 250;

/// Returns the lines of the daemon log at error level that contain `needle`.
fn error_lines(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains(" ERROR ") && line.contains(needle))
        .map(String::from)
        .collect()
}

/// Returns the field `name=N` of the daemon log's "journal opened" line of the latest start.
fn journal_opened_field(log: &str, name: &str) -> u64 {
    let line = log
        .lines()
        .rfind(|line| line.contains("journal opened:"))
        .unwrap_or_else(|| panic!("no \"journal opened\" line in the daemon log:\n{log}"));
    let prefix = format!("{name}=");
    line.split(' ')
        .find_map(|field| field.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// Returns the `-o` values of an async mount whose unmount gives up draining after a
/// second, so that records the mirror lacks stay in the journal.
fn options(dirs: &TestDirs) -> Vec<String> {
    let mut options = dirs.options(Mode::Async);
    options.push("drain_timeout=1s".to_string());
    options
}

/// Writes `app.log` lines 0 to [`CONFIRMED_LINES`] and syncs, then the rest of the lines
/// with the mirror read-only, and unmounts cleanly. Returns the mirror's confirmed seq.
fn accept_with_mirror_down(dirs: &TestDirs) -> u64 {
    let mount = Mount::with_options(dirs, &options(dirs));
    let app = dirs.mnt.join("app.log");
    append_lines(&app, 0, CONFIRMED_LINES);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");
    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);
    append_lines(&app, CONFIRMED_LINES, ALL_LINES);
    mount.unmount();
    bind.remove();
    let (confirmed, _) = mirror_cursor(dirs);
    confirmed
}

/// Mounts again and asserts that the mirror contains exactly the accepted lines, that the
/// journal kept `kept_records`, and that an error-level line names `segment`. Returns that
/// line.
fn assert_recovered_from(dirs: &TestDirs, segment: &Path, kept_records: u64) -> String {
    let mount = Mount::with_options(dirs, &options(dirs));
    let tree = assert_mirrors_match(&mount);
    let expected = sha256_hex(expected_lines(ALL_LINES).as_bytes());
    assert_eq!(tree.entries["app.log"], expected);
    let copy = tree_sha256(&dirs.mirrors[0], &[]);
    assert_eq!(copy.entries["app.log"], expected, "mirror app.log");

    let log = read_text(&mount.log_file);
    let segment_name = format!("{segment:?}");
    let errors = error_lines(&log, &segment_name);
    assert_eq!(errors.len(), 1, "error lines naming {segment_name}:\n{log}");
    assert!(
        errors[0].contains("journal recovery lost records"),
        "{errors:?}"
    );
    assert_eq!(journal_opened_field(&log, "records"), kept_records, "{log}");
    assert_eq!(journal_opened_field(&log, "head"), kept_records, "{log}");
    mount.unmount();
    errors[0].clone()
}

/// Runs [`accept_with_mirror_down`] and returns the mirror's confirmed seq, the only
/// segment and the offset of each of its records (record with seq N at index N - 1).
fn accepted_segment(dirs: &TestDirs) -> (u64, PathBuf, Vec<u64>) {
    let confirmed = accept_with_mirror_down(dirs);
    let segments = segments(dirs);
    assert_eq!(segments.len(), 1, "segments: {segments:?}");
    let (first_seq, segment) = segments.into_iter().next().expect("one segment");
    assert_eq!(first_seq, 1);
    let offsets = frame_offsets(&segment);
    let written = (ALL_LINES - CONFIRMED_LINES) as u64;
    assert!(
        offsets.len() as u64 >= confirmed + written,
        "{} records in {segment:?}, confirmed {confirmed}",
        offsets.len()
    );
    (confirmed, segment, offsets)
}

#[test]
fn segment_flipped_byte() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let (confirmed, segment, offsets) = accepted_segment(&dirs);

    // A payload byte of the tenth record the mirror lacks. Valid records follow it, so no
    // crash explains the damage.
    let damaged = confirmed + 10;
    let damaged_offset = offsets[damaged as usize - 1];
    flip_byte(&segment, damaged_offset + FRAME_HEADER_BYTES as u64 + 5);

    let error = assert_recovered_from(&dirs, &segment, damaged - 1);
    let cut_at = format!("was cut at byte {damaged_offset}");
    assert!(error.contains(&cut_at), "{error}");
}

#[test]
fn segment_cut_mid_record() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let (confirmed, segment, offsets) = accepted_segment(&dirs);

    let cut = confirmed + 5;
    let cut_record_offset = offsets[cut as usize - 1];
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.set_len(cut_record_offset + 10)
        .expect("truncate segment");
    drop(file);

    let error = assert_recovered_from(&dirs, &segment, cut - 1);
    assert!(error.contains("10 bytes cut"), "{error}");
    let cut_at = format!("was cut at byte {cut_record_offset}");
    assert!(error.contains(&cut_at), "{error}");
}

#[test]
fn cursor_file_deleted() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(2);
    let first_mirror = vec![format!("mirror=dir:{}", dirs.mirrors[0].display())];
    let mount = Mount::with_options(&dirs, &first_mirror);
    append_lines(&dirs.mnt.join("app.log"), 0, CONFIRMED_LINES);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    mount.unmount();
    let cursor = only_cursor_file(&dirs);
    let head = mirror_cursor(&dirs).0;
    fs::remove_file(&cursor).expect("remove the cursor file");

    // The second mirror is new, so its missing cursor is no error.
    let mount = Mount::with_options(&dirs, &dirs.mirror_options());
    append_lines(&dirs.mnt.join("app.log"), CONFIRMED_LINES, ALL_LINES);
    let tree = assert_mirrors_match(&mount);
    let expected = sha256_hex(expected_lines(ALL_LINES).as_bytes());
    assert_eq!(tree.entries["app.log"], expected);

    let log = read_text(&mount.log_file);
    let errors: Vec<String> = log
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .map(String::from)
        .collect();
    assert_eq!(errors.len(), 1, "error lines:\n{log}");
    assert!(
        errors[0].contains(&format!("cursor file {cursor:?} is missing")),
        "{errors:?}"
    );
    let resyncs = format!(
        "mirror dir:{}: will resync from the backing tree",
        dirs.mirrors[0].display()
    );
    assert_eq!(log.matches(&resyncs).count(), 1, "{log}");
    assert_eq!(journal_opened_field(&log, "head"), head, "{log}");
    mount.unmount();
}

/// Returns the seqs of the frames of a journal object that carry journal records (the
/// others, with seq 0, carry the ops of a resync).
fn record_seqs(object: &[u8]) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut offset = OBJECT_HEADER_BYTES;
    while offset + FRAME_HEADER_BYTES <= object.len() {
        let len = u32::from_le_bytes(object[offset..offset + 4].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(object[offset + 8..offset + 16].try_into().expect("8 bytes"));
        if seq != 0 {
            seqs.push(seq);
        }
        offset += FRAME_HEADER_BYTES + len as usize;
    }
    seqs
}

/// Runs `logmirror restore` of `spec` into `dir`.
fn restore(garage: &Garage, spec: &str, dir: &Path) -> common::CmdOutput {
    let options = garage.options();
    let args = ["restore", spec, path_str(dir), "-o", &options];
    common::logmirror_env(&args, &garage.env())
}

/// Asserts that a restore stopped at `key` and kept exactly the objects before it.
fn assert_restore_stops_at(
    garage: &Garage,
    dirs: &TestDirs,
    spec: &str,
    key: &str,
    kept: &[Vec<u8>],
) {
    let target = dirs.root.join(format!("restored-{}", kept.len()));
    let out = restore(garage, spec, &target);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore: {out}");
    assert!(
        out.stderr.contains(key),
        "stderr does not name {key}: {out}"
    );
    let seqs: Vec<u64> = kept.iter().flat_map(|object| record_seqs(object)).collect();
    let records = seqs.len();
    let last_seq = seqs.last().copied().unwrap_or(0);
    let stopped = format!(
        "restore stopped after {records} records of {} whole journal objects (last seq {last_seq})",
        kept.len()
    );
    assert!(out.stderr.contains(&stopped), "{stopped:?}: {out}");

    // The restored file is a whole-line prefix of what was written, nothing else.
    let restored = fs::read(target.join("app.log")).expect("read restored app.log");
    assert_eq!(common::list_dir(&target), ["app.log"]);
    let whole_lines = restored.len() / "line 000000\n".len();
    assert_eq!(restored, expected_lines(whole_lines).into_bytes());
}

#[test]
fn s3_object_damaged() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let spec = format!("s3://{}/host1", garage.bucket);
    // Plain frames, so that the test can read the seqs and flip a byte of a record.
    let options = vec![
        format!("mirror={spec}"),
        garage.options(),
        "compression=none".to_string(),
    ];
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let app = dirs.mnt.join("app.log");
    for batch in 0..3 {
        let lines = batch * CONFIRMED_LINES;
        append_lines(&app, lines, lines + CONFIRMED_LINES);
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync");
    }
    mount.unmount();

    let client = garage.client();
    let keys = client.list("host1/.logmirror/journal/");
    assert!(keys.len() >= 3, "journal objects: {keys:?}");
    let objects: Vec<Vec<u8>> = keys.iter().map(|key| client.get(key)).collect();
    let middle = keys.len() / 2;
    assert_eq!(keys[middle], object_key("host1", middle as u64 + 1));

    // A flipped payload byte: the store's checksum matches the new bytes, so only the
    // record's CRC32C detects it.
    let mut flipped = objects[middle].clone();
    flipped[OBJECT_HEADER_BYTES + FRAME_HEADER_BYTES + 6] ^= 0x20;
    client.put(&keys[middle], flipped);
    assert_restore_stops_at(&garage, &dirs, &spec, &keys[middle], &objects[..middle]);

    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify: {out}");
    assert!(out.stdout.contains(keys[middle].as_str()), "{out}");
    let log = read_text(&mount.log_file);
    let errors = error_lines(&log, &keys[middle]);
    assert_eq!(
        errors.len(),
        1,
        "error lines naming {}:\n{log}",
        keys[middle]
    );
    assert!(errors[0].contains("record CRC32C mismatch"), "{errors:?}");
    mount.unmount();

    // The newest object cut in the middle of its last record.
    client.put(&keys[middle], objects[middle].clone());
    let last = keys.len() - 1;
    let cut = objects[last][..objects[last].len() - 3].to_vec();
    client.put(&keys[last], cut);
    assert_restore_stops_at(&garage, &dirs, &spec, &keys[last], &objects[..last]);
}
