//! The S3 mirror against a real single-node Garage on loopback. Real writers go through a
//! mount with `mirror=s3://BUCKET/host1`, then sync, verify and `logmirror restore` into an
//! empty directory must agree with the backing tree. Other cases: damaged and hand-made
//! journal objects, a missing bucket, wrong credentials, an outage of the store, and
//! `kill -9` of the daemon in sync mode followed by a restore.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::crash_writer;
use common::journal_objects;
use common::journal_objects::{
    FRAME_HEADER_BYTES, OBJECT_HEADER_BYTES, create_op, journal_object, symlink_op, write_op,
};
use common::{
    COMMAND_TIMEOUT, EXIT_RUNTIME, EXIT_USAGE, Mode, Mount, STATE_DIR, TestDirs, assert_same_tree,
    logmirror_env, path_str, tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";
const JOURNAL_PREFIX: &str = "host1/.logmirror/journal/";

fn mirror_spec(garage: &Garage) -> String {
    format!("s3://{}/{PREFIX}", garage.bucket)
}

fn mount_options(garage: &Garage, mode: Mode) -> Vec<String> {
    vec![
        format!("mirror={}", mirror_spec(garage)),
        garage.options(),
        format!("mode={}", mode.as_str()),
    ]
}

/// Runs `logmirror restore` of the test mirror into `dir`, with `extra` arguments.
fn restore(garage: &Garage, dir: &Path, extra: &[&str]) -> common::CmdOutput {
    let spec = mirror_spec(garage);
    let mut args = vec!["restore", spec.as_str(), path_str(dir)];
    args.extend_from_slice(extra);
    logmirror_env(&args, &garage.env())
}

/// Returns the key of journal object `number` of the test mirror.
fn object_key(number: u64) -> String {
    journal_objects::object_key(PREFIX, number)
}

/// Asserts that the bucket contains journal objects 1, 2, ... under the test prefix's
/// journal folder and nothing else, and returns their keys.
fn assert_journal_keys(garage: &Garage) -> Vec<String> {
    let keys = garage.client().list(JOURNAL_PREFIX);
    assert!(!keys.is_empty(), "no journal object under {JOURNAL_PREFIX}");
    let expected: Vec<String> = (1..=keys.len() as u64).map(object_key).collect();
    assert_eq!(keys, expected, "keys under {PREFIX}/");
    keys
}

/// Returns the number of regular files in a tree listing of `dir` and their total size.
fn files_and_bytes(dir: &Path, tree: &common::Tree) -> (usize, u64) {
    let sizes: Vec<u64> = tree
        .entries
        .keys()
        .map(|path| fs::symlink_metadata(dir.join(path)).expect("stat entry"))
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

const SHELL_LINES: usize = 300;

const APPEND_LOOP: &str = r#"
set -e
mkdir -p jobs/nightly
for i in $(seq 1 "$1"); do
    echo "line $i" >> shell.log
    echo "job $i done" >> jobs/nightly/run.log
done
"#;

const ROTATING_RECORDS: usize = 700;

const ROTATING_WRITER: &str = r#"
import logging, logging.handlers, sys
path, records = sys.argv[1], int(sys.argv[2])
handler = logging.handlers.RotatingFileHandler(path, maxBytes=16384, backupCount=5)
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("rotating")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(records):
    log.info("record %06d %s", i, "x" * 40)
handler.close()
"#;

#[test]
fn s3_writers_restore_sync() {
    writers_then_restore(Mode::Sync);
}

#[test]
fn s3_writers_restore_async() {
    writers_then_restore(Mode::Async);
}

fn writers_then_restore(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, mode), &garage.env());

    let out = common::run(
        Command::new("sh")
            .arg("-c")
            .arg(APPEND_LOOP)
            .arg("sh")
            .arg(SHELL_LINES.to_string())
            .current_dir(&dirs.mnt),
        COMMAND_TIMEOUT,
    );
    out.assert_success("shell append loop");
    fs::create_dir(dirs.mnt.join("app")).expect("mkdir app through the mount");
    let app_log = dirs.mnt.join("app/app.log");
    common::python_ok(
        ROTATING_WRITER,
        &[path_str(&app_log), &ROTATING_RECORDS.to_string()],
    );
    let expected: String = (1..=SHELL_LINES).map(|i| format!("line {i}\n")).collect();
    assert!(common::read_text(&dirs.mnt.join("shell.log")) == expected);
    // 700 records of 55 bytes roll over twice at 16384 bytes (297 records per file).
    assert_eq!(
        common::list_dir(&dirs.mnt.join("app")),
        ["app.log", "app.log.1", "app.log.2"]
    );

    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    assert_same_tree("backing", &backing, "mount", &tree_sha256(&dirs.mnt, &[]));
    let out = mount.verify();
    assert_eq!(out.code(), 0, "logmirror verify: {out}");
    let verified = format!(
        "mirror {}: entries compared: {}, differences: 0",
        mirror_spec(&garage),
        backing.entries.len()
    );
    assert!(out.stdout.contains(&verified), "verify output: {out}");
    assert_journal_keys(&garage);

    let restored = dirs.root.join("restored");
    let out = restore(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "logmirror restore: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
    let (files, bytes) = files_and_bytes(&dirs.backing, &backing);
    assert_eq!(files, 5, "files in the backing tree");
    let summary = format!("files: {files}, bytes: {bytes}, last seq: ");
    let last_line = out.stdout.lines().last().unwrap_or_default();
    assert!(last_line.starts_with(&summary), "restore output: {out}");

    let out = restore(&garage, &restored, &[]);
    assert_eq!(
        out.code(),
        EXIT_USAGE,
        "restore into a full directory: {out}"
    );
    assert!(out.stderr.contains("is not empty"), "{out}");
    let out = restore(&garage, &restored, &["--force"]);
    assert_eq!(out.code(), 0, "restore --force: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored twice",
        &tree_sha256(&restored, &[]),
    );

    let log = mount.log_tail(usize::MAX);
    assert!(
        !log.contains(garage.secret()),
        "the daemon log shows the secret key"
    );
    mount.unmount();
}

#[test]
fn s3_flipped_byte_fails_verify_and_restore() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mut options = mount_options(&garage, Mode::Async);
    // Plain frames, so that the flipped byte lands in a record's payload.
    options.push("compression=none".to_string());
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let lines: String = (0..20).map(|i| format!("hello {i}\n")).collect();
    fs::write(dirs.mnt.join("a.log"), &lines).expect("write a.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    mount.unmount();

    let keys = assert_journal_keys(&garage);
    let key = &keys[0];
    let client = garage.client();
    let mut bytes = client.get(key);
    // A byte of the first record's payload: the store's checksum is recomputed for the new
    // content, so only the record's own CRC32C can tell.
    let offset = OBJECT_HEADER_BYTES + FRAME_HEADER_BYTES + 6;
    assert!(
        bytes.len() > offset,
        "object {key} has {} bytes",
        bytes.len()
    );
    bytes[offset] ^= 0x20;
    client.put(key, bytes);

    let restored = dirs.root.join("restored");
    let out = restore(&garage, &restored, &[]);
    assert_eq!(
        out.code(),
        EXIT_RUNTIME,
        "restore of a damaged object: {out}"
    );
    assert!(out.stderr.contains(key.as_str()), "{out}");
    assert!(out.stderr.contains("record CRC32C mismatch"), "{out}");
    assert!(
        !restored.exists(),
        "restore left {restored:?} behind although it applied nothing"
    );

    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let out = mount.verify();
    assert_eq!(
        out.code(),
        EXIT_RUNTIME,
        "verify of a damaged object: {out}"
    );
    assert!(out.stdout.contains(key.as_str()), "{out}");
    assert!(out.stdout.contains("record CRC32C mismatch"), "{out}");
    mount.unmount();
}

#[test]
fn s3_outage_then_catch_up() {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, Mode::Async), &garage.env());
    let path = dirs.mnt.join("a.log");
    fs::write(&path, "before the outage\n").expect("write a.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");

    garage.stop();
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open a.log");
    for i in 0..50 {
        writeln!(file, "during the outage {i}").expect("append to a.log");
    }
    drop(file);
    let error = common::wait_until(Duration::from_secs(60), "mirror marked down", || {
        let status = mount.status();
        let mirror = &status.mirrors[0];
        match &mirror.last_error {
            Some(error) if mirror.state == "down" => Ok(error.clone()),
            _ => Err(format!(
                "state {}, last error {:?}",
                mirror.state, mirror.last_error
            )),
        }
    });
    // The first request to fail is the upload of the next journal object, or a lease
    // check when the idle mirror was due for one.
    let upload = "upload of host1/.logmirror/journal/00000000000000000002.lmj failed";
    let lease = "request for lease object host1/.logmirror/lease.json failed";
    assert!(error.contains(upload) || error.contains(lease), "{error}");
    assert!(error.contains("Connection refused"), "{error}");
    assert!(
        !error.contains(garage.secret()),
        "status shows the secret key"
    );

    garage.restart();
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the outage");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the outage: {out}");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();
    let restored = dirs.root.join("restored");
    let out = restore(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore after the outage: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}

#[test]
fn s3_restore_rejects_escaping_path() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let client = garage.client();
    let first = journal_object(1, 1, &[create_op("ok.txt"), write_op("ok.txt", b"fine\n")]);
    client.put(&object_key(1), first);
    let escaping = journal_object(2, 3, &[create_op("../escape")]);
    client.put(&object_key(2), escaping);

    let dirs = TestDirs::new(0);
    let parent = dirs.root.join("restore");
    fs::create_dir(&parent).expect("mkdir restore");
    let target = parent.join("dir");
    let out = restore(&garage, &target, &[]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore: {out}");
    assert!(out.stderr.contains(&object_key(2)), "{out}");
    assert!(out.stderr.contains("invalid path \"../escape\""), "{out}");
    assert!(
        out.stderr
            .contains("restore stopped after 2 records of 1 whole journal objects"),
        "{out}"
    );
    assert_eq!(common::list_dir(&parent), ["dir"]);
    assert_eq!(common::list_dir(&target), ["ok.txt"]);
    assert_eq!(common::read_text(&target.join("ok.txt")), "fine\n");
    assert!(!dirs.root.join("escape").exists());
}

#[test]
fn s3_restore_rejects_symlink_escape() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let outside = dirs.root.join("outside");
    fs::create_dir(&outside).expect("mkdir outside");
    let object = journal_object(
        1,
        1,
        &[
            symlink_op("link", path_str(&outside)),
            create_op("link/evil"),
            write_op("link/evil", b"should never land\n"),
        ],
    );
    garage.client().put(&object_key(1), object);

    let target = dirs.root.join("restored");
    let out = restore(&garage, &target, &[]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore: {out}");
    assert!(out.stderr.contains(&object_key(1)), "{out}");
    assert!(out.stderr.contains("replaying record 1 (seq 2)"), "{out}");
    assert_eq!(common::list_dir(&outside), Vec::<String>::new());
    assert_eq!(common::list_dir(&target), ["link"]);
}

#[test]
fn s3_restore_stops_at_gap() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let client = garage.client();
    let first = journal_object(1, 1, &[create_op("a.log"), write_op("a.log", b"one\n")]);
    client.put(&object_key(1), first);
    let third = journal_object(3, 5, &[write_op("a.log", b"three\n")]);
    client.put(&object_key(3), third);

    let dirs = TestDirs::new(0);
    let target = dirs.root.join("restored");
    let out = restore(&garage, &target, &[]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore across a gap: {out}");
    assert!(out.stderr.contains(&object_key(3)), "{out}");
    assert!(
        out.stderr.contains("journal object number 2 is missing"),
        "{out}"
    );
    assert_eq!(common::read_text(&target.join("a.log")), "one\n");

    let stray = format!("{JOURNAL_PREFIX}notes.txt");
    client.put(&stray, b"not an object".to_vec());
    let other = dirs.root.join("other");
    let out = restore(&garage, &other, &[]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore with a stray key: {out}");
    assert!(out.stderr.contains(&stray), "{out}");
    assert!(!other.exists(), "restore left {other:?} behind");
}

#[test]
fn s3_mount_missing_bucket() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = vec![
        "mirror=s3://no-such-bucket/host1".to_string(),
        garage.options(),
    ];
    let out = common::mount_expecting_failure(&dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("NoSuchBucket (HTTP 404)"), "{out}");
    assert!(out.stderr.contains("s3://no-such-bucket/host1"), "{out}");
    let endpoint = format!("(endpoint {})", garage.endpoint);
    assert!(out.stderr.contains(&endpoint), "{out}");
}

#[test]
fn s3_mount_wrong_credentials() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Sync);
    let wrong_secret = "f".repeat(64);
    let out =
        common::mount_expecting_failure(&dirs, &options, &garage.env_with_secret(&wrong_secret));
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("AccessDenied (HTTP 403)"), "{out}");
    assert!(out.stderr.contains(&mirror_spec(&garage)), "{out}");
    let endpoint = format!("(endpoint {})", garage.endpoint);
    assert!(out.stderr.contains(&endpoint), "{out}");
    assert!(
        !out.stderr.contains(&wrong_secret),
        "the secret key is shown: {out}"
    );
}

/// Returns the environment of `garage` with the value of `variable` changed by `change`.
fn env_with(
    garage: &Garage,
    variable: &str,
    change: impl FnOnce(&mut String),
) -> Vec<(String, String)> {
    let mut env = garage.env();
    let (_, value) = env
        .iter_mut()
        .find(|(name, _)| name == variable)
        .unwrap_or_else(|| panic!("{variable} in the environment"));
    change(value);
    env
}

/// A carriage return at the end of the access key ID or the region, as a file with Windows
/// line endings leaves it, cannot go into the `Authorization` header. Mount and restore must
/// name the problem instead of panicking in the signer.
#[test]
fn s3_carriage_return_in_credentials() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let key_id_problem = format!(
        "the AWS access key ID contains the control character 0x0D at byte {}",
        garage.key_id.len()
    );
    let region_problem = format!(
        "the AWS region \"{}\\r\" from AWS_REGION or the profile is invalid",
        garage.region
    );
    // The endpoint and region come from the environment only.
    let options = [format!("mirror={}", mirror_spec(&garage))];
    for (variable, problem) in [
        ("AWS_ACCESS_KEY_ID", key_id_problem),
        ("AWS_REGION", region_problem),
    ] {
        let env = env_with(&garage, variable, |value| value.push('\r'));

        let dirs = TestDirs::new(0);
        let out = common::mount_expecting_failure(&dirs, &options, &env);
        assert_eq!(out.code(), EXIT_RUNTIME, "{variable}: {out}");
        assert!(out.stderr.contains(&problem), "{variable}: {out}");
        assert!(out.stderr.contains(&mirror_spec(&garage)), "{out}");
        let log = common::read_text(&dirs.root.join("failed-mount.log"));
        assert!(!log.contains("panicked"), "{variable}: daemon log: {log}");

        let restored = dirs.root.join("restored");
        let spec = mirror_spec(&garage);
        let out = logmirror_env(&["restore", &spec, path_str(&restored)], &env);
        assert_eq!(out.code(), EXIT_RUNTIME, "{variable}: {out}");
        assert!(out.stderr.contains(&problem), "{variable}: {out}");
        assert!(!out.stderr.contains("panicked"), "{variable}: {out}");
    }
}

/// An endpoint from AWS_ENDPOINT_URL gets the checks of `endpoint=`: a password in it is
/// rejected and never shown, in place of being sent in the Host header and printed in
/// messages.
#[test]
fn s3_endpoint_variable_with_password() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let password = "pw-not-for-logs";
    let with_password = garage
        .endpoint
        .replace("http://", &format!("http://user:{password}@"));
    let env = env_with(&garage, "AWS_ENDPOINT_URL", |value| *value = with_password);
    let options = [format!("mirror={}", mirror_spec(&garage))];

    let dirs = TestDirs::new(0);
    let out = common::mount_expecting_failure(&dirs, &options, &env);
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    let problem = "the endpoint from AWS_ENDPOINT_URL or the profile's endpoint_url is invalid: \
                   invalid value for endpoint: it contains a user name or password";
    assert!(out.stderr.contains(problem), "{out}");
    assert!(!out.stderr.contains(password), "{out}");
    let log = common::read_text(&dirs.root.join("failed-mount.log"));
    assert!(!log.contains(password), "daemon log: {log}");
}

const ACKS_BEFORE_KILL: u64 = 300;

#[test]
fn s3_kill_sync_then_restore() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Sync);
    let mut first = Mount::with_env(&dirs, &options, &garage.env());
    let acked_path = dirs.root.join("acked.txt");

    let writer = crash_writer::start(&dirs.mnt, &acked_path);
    crash_writer::wait_for_acks(&acked_path, ACKS_BEFORE_KILL, Duration::from_secs(120));
    first.kill_daemon();
    let (stop, acked) = crash_writer::finish(writer, &acked_path);
    assert!(stop.starts_with("stopped "), "writer output {stop:?}");
    assert!(acked >= ACKS_BEFORE_KILL);

    // A sync-mode write returned only after its record was in the bucket, so the bucket
    // alone contains every acknowledged write, without the local journal.
    let restored = dirs.root.join("restored");
    let out = restore(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore after kill -9: {out}");
    crash_writer::assert_acked_records(&restored, acked, "restore after kill -9");

    // The next mount resyncs the mirror (the daemon did not stop cleanly); then the bucket
    // rebuilds exactly the backing tree.
    first.clear_dead();
    drop(first);
    let second = Mount::with_env(&dirs, &options, &garage.env());
    crash_writer::assert_acked_records(&dirs.backing, acked, "backing after the remount");
    second
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = second.verify();
    assert_eq!(out.code(), 0, "verify after the remount: {out}");
    second.unmount();

    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    let again = dirs.root.join("restored-again");
    let out = restore(&garage, &again, &[]);
    assert_eq!(out.code(), 0, "restore after the resync: {out}");
    assert_same_tree("backing", &backing, "restored", &tree_sha256(&again, &[]));
}

/// `path_style=false` with an endpoint that is an IP address: S3's endpoint rules keep the
/// bucket in the path for such an endpoint, since an address has no subdomains. The PUTs,
/// which bypass the SDK, must go there too, and not to `BUCKET.127.0.0.1`, a host name that no
/// resolver can find.
#[test]
fn s3_path_style_false_with_ip_endpoint() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mut options = mount_options(&garage, Mode::Sync);
    options.push("path_style=false".to_string());
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    common::append_lines(&dirs.mnt.join("app.log"), 0, 50);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    assert_journal_keys(&garage);
    let expected = common::expected_lines(50);
    let copy_key = format!("{PREFIX}/app.log");
    common::wait_until(
        COMMAND_TIMEOUT,
        "the readable copy of app.log",
        || match garage.client().try_get(&copy_key) {
            Some(body) if body == expected.as_bytes() => Ok(()),
            other => Err(format!("{copy_key}: {:?}", other.map(String::from_utf8))),
        },
    );
    let out = mount.verify();
    assert_eq!(out.code(), 0, "logmirror verify: {out}");
    mount.unmount();

    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    let restored = dirs.root.join("restored");
    let out = restore(&garage, &restored, &["-o", "path_style=false"]);
    assert_eq!(out.code(), 0, "logmirror restore: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}
