//! Least privilege, Object Lock and server-side encryption of the S3 mirror against a real
//! Garage on loopback. Garage grants per bucket read, write (which includes delete) and
//! owner, so a key without owner mounts, a read-only key fails at mount and still restores,
//! and `history=append-only` leaves its probe objects for `logmirror fold` to run with an
//! admin key. Garage 2.5 lacks Object Lock, SSE-S3 and SSE-KMS, so those options must fail
//! the mount; SSE-C works end to end. The append-only and Object Lock rules that Garage
//! cannot enforce are unit-tested against a fake bucket in `src/mirror/s3/tests.rs`.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{
    EXIT_RUNTIME, EXIT_USAGE, Mode, Mount, STATE_DIR, TestDirs, logmirror_env,
    mount_expecting_failure, path_str, tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";
const JOURNAL_PREFIX: &str = "host1/.logmirror/journal/";
const PROBE_PREFIX: &str = "host1/.logmirror/probe-";

fn mirror_spec(garage: &Garage) -> String {
    format!("s3://{}/{PREFIX}", garage.bucket)
}

fn mount_options(garage: &Garage, extra: &[&str]) -> Vec<String> {
    let mut options = vec![
        format!("mirror={}", mirror_spec(garage)),
        garage.options(),
        format!("mode={}", Mode::Sync.as_str()),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    options
}

/// Runs `logmirror restore` of the test mirror into `dir` with `-o OPTIONS` and `env`.
fn restore(
    garage: &Garage,
    dir: &Path,
    options: &str,
    env: &[(String, String)],
) -> common::CmdOutput {
    let spec = mirror_spec(garage);
    let mut args = vec!["restore", spec.as_str(), path_str(dir)];
    if !options.is_empty() {
        args.extend_from_slice(&["-o", options]);
    }
    logmirror_env(&args, env)
}

/// Writes two log files through the mount, syncs, and checks that verify finds the mirror
/// equal, so that every journal object and readable copy is stored.
fn write_logs(mount: &Mount) {
    let mnt = mount.mnt();
    fs::write(mnt.join("auth.log"), "sshd: accepted key for root\n").expect("write auth.log");
    fs::create_dir(mnt.join("app")).expect("mkdir app");
    fs::write(mnt.join("app/app.log"), "started\nstopped\n").expect("write app.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    mount.verify().assert_success("logmirror verify");
}

/// Restores into `name` below the test directory and asserts that it equals the backing
/// tree.
fn assert_restores(
    garage: &Garage,
    dirs: &TestDirs,
    name: &str,
    options: &str,
    env: &[(String, String)],
) {
    let target = dirs.root.join(name);
    let out = restore(garage, &target, options, env);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_eq!(
        tree_sha256(&target, &[]),
        tree_sha256(&dirs.backing, &[STATE_DIR]),
        "restored tree differs from the backing tree"
    );
}

/// Writes a 32-byte SSE-C key file of `mode` and returns its path and the key.
fn key_file(dirs: &TestDirs, mode: u32) -> (PathBuf, [u8; 32]) {
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let path = dirs.root.join("sse-c.key");
    fs::write(&path, key).expect("write key file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod key file");
    (path, key)
}

#[test]
fn key_without_owner_mounts_and_reader_restores() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let (writer_env, _) = garage.key_with("writer", &["--read", "--write"]);
    let (reader_env, _) = garage.key_with("reader", &["--read"]);
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &writer_env);
    write_logs(&mount);
    mount.unmount();

    let journal = garage.client().list(JOURNAL_PREFIX);
    assert!(!journal.is_empty(), "no journal objects stored");
    assert_restores(&garage, &dirs, "restored-by-reader", "", &reader_env);
}

#[test]
fn read_only_key_rejected_at_mount() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let (reader_env, _) = garage.key_with("reader", &["--read"]);
    let dirs = TestDirs::new(0);
    let out = mount_expecting_failure(&dirs, &mount_options(&garage, &[]), &reader_env);
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("AccessDenied"), "{out}");
    assert!(out.stderr.contains(PROBE_PREFIX), "{out}");
    assert_eq!(garage.client().list(PREFIX), Vec::<String>::new());
}

#[test]
fn append_only_leaves_probes_and_fold_runs_apart() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let (writer_env, _) = garage.key_with("writer", &["--read", "--write"]);
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["history=append-only"]);
    let mount = Mount::with_env(&dirs, &options, &writer_env);
    write_logs(&mount);
    let store = mount.status().mirrors[0]
        .store
        .clone()
        .expect("store in status");
    assert_eq!(store.history, "append-only");
    assert_eq!(store.retention_lock, None);
    assert_eq!(store.sse, None);
    mount.unmount();

    let client = garage.client();
    // Garage checks x-amz-checksum-crc32c, so of the two probe objects only the one with the
    // right checksum was stored, and it stays.
    assert_eq!(client.list(PROBE_PREFIX).len(), 1);
    let journal = client.list(JOURNAL_PREFIX);
    assert!(!journal.is_empty(), "no journal objects stored");

    // A key that may not write cannot fold; the history stays as it is.
    let spec = mirror_spec(&garage);
    let (reader_env, _) = garage.key_with("reader", &["--read"]);
    let denied = logmirror_env(&["fold", &spec, "0", "-o", &garage.options()], &reader_env);
    assert_eq!(
        denied.code(),
        EXIT_RUNTIME,
        "fold with a read-only key: {denied}"
    );
    assert!(denied.stderr.contains("AccessDenied"), "{denied}");
    assert!(denied.stderr.contains(&format!("fold {spec}")), "{denied}");
    assert_eq!(client.list(JOURNAL_PREFIX), journal);

    // With retention 0 every journal object is old enough to fold.
    let out = logmirror_env(
        &["fold", &spec, "0", "-o", &garage.options()],
        &garage.env(),
    );
    assert_eq!(out.code(), 0, "fold: {out}");
    let expected = format!("removed {} objects", journal.len());
    assert!(out.stdout.contains(&expected), "{out}");
    assert_eq!(client.list(JOURNAL_PREFIX), Vec::<String>::new());
    assert_restores(&garage, &dirs, "restored-after-fold", "", &garage.env());

    let again = logmirror_env(
        &["fold", &spec, "0", "-o", &garage.options()],
        &garage.env(),
    );
    assert_eq!(again.code(), 0, "second fold: {again}");
    assert!(again.stdout.contains("nothing to fold"), "{again}");
}

#[test]
fn append_only_rejects_retention() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["history=append-only", "retention=30d"]);
    let out = mount_expecting_failure(&dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(out.stderr.contains("conflicting options"), "{out}");
    assert!(out.stderr.contains("logmirror fold"), "{out}");
}

#[test]
fn fold_rejects_directory_mirror() {
    let out = common::logmirror(&["fold", "dir:/var/log/copy", "30d"]);
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(out.stderr.contains("no history to fold"), "{out}");
}

#[test]
fn retention_lock_rejected_by_garage() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["retention_lock=30"]);
    let out = mount_expecting_failure(&dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("retention_lock=30"), "{out}");
    assert!(out.stderr.contains("Object Lock"), "{out}");
    assert!(out.stderr.contains("NotImplemented"), "{out}");
    assert!(out.stderr.contains(&garage.endpoint), "{out}");
    assert_eq!(garage.client().list(JOURNAL_PREFIX), Vec::<String>::new());
}

#[test]
fn sse_s3_and_kms_rejected_by_garage() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    for (option, shown) in [("sse=aes256", "sse=aes256"), ("sse=aws:kms", "sse=aws:kms")] {
        let dirs = TestDirs::new(0);
        let out = mount_expecting_failure(&dirs, &mount_options(&garage, &[option]), &garage.env());
        assert_eq!(out.code(), EXIT_RUNTIME, "{option}: {out}");
        assert!(out.stderr.contains(shown), "{option}: {out}");
        assert!(out.stderr.contains("did not confirm"), "{option}: {out}");
        assert_eq!(garage.client().list(JOURNAL_PREFIX), Vec::<String>::new());
    }
}

#[test]
fn sse_c_end_to_end() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (path, key) = key_file(&dirs, 0o600);
    let sse = format!("sse=c,sse_c_key={}", path.display());
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[&sse]), &garage.env());
    write_logs(&mount);
    let store = mount.status().mirrors[0]
        .store
        .clone()
        .expect("store in status");
    assert_eq!(store.history, "managed");
    assert_eq!(store.sse.as_deref(), Some("sse=c"));
    let text = common::logmirror(&["status", path_str(mount.mnt())]);
    let line = "history: managed, Object Lock: none, server-side encryption: sse=c";
    assert!(text.stdout.contains(line), "{text}");
    mount.unmount();

    let client = garage.client();
    let copy = format!("{PREFIX}/auth.log");
    let with_key = client.get_with_key(&copy, Some(&key));
    assert_eq!(
        with_key.as_deref(),
        Ok(&b"sshd: accepted key for root\n"[..])
    );
    let without_key = client.get_with_key(&copy, None).unwrap_err();
    assert!(without_key.contains("400"), "{without_key}");
    let journal = client.list(JOURNAL_PREFIX);
    let first = journal.first().expect("a journal object");
    assert!(client.get_with_key(first, None).is_err());
    assert!(client.get_with_key(first, Some(&key)).is_ok());

    assert_restores(&garage, &dirs, "restored-with-key", &sse, &garage.env());
    let target = dirs.root.join("restored-without-key");
    let out = restore(&garage, &target, "", &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "restore without the key: {out}");
    assert!(out.stderr.contains("400"), "{out}");

    // A remount with the key reads the lease and the newest header back.
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[&sse]), &garage.env());
    fs::write(mount.mnt().join("late.log"), "after remount\n").expect("write late.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    mount
        .verify()
        .assert_success("logmirror verify after remount");
    mount.unmount();
}

#[test]
fn sse_c_key_file_mode_checked() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (path, key) = key_file(&dirs, 0o644);
    let sse = format!("sse=c,sse_c_key={}", path.display());
    let out = mount_expecting_failure(&dirs, &mount_options(&garage, &[&sse]), &garage.env());
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(out.stderr.contains("mode 0644"), "{out}");
    assert!(out.stderr.contains("chmod 600"), "{out}");
    let encoded = aws_smithy_types::base64::encode(key);
    assert!(!out.stderr.contains(&encoded), "{out}");
    let out = restore(&garage, &dirs.root.join("r"), &sse, &garage.env());
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(out.stderr.contains("mode 0644"), "{out}");
}

/// Waits until the object at `key`, read with the SSE-C key, contains exactly `expected`.
fn wait_for_encrypted_copy(
    client: &garage::TestClient,
    key: &str,
    sse_key: &[u8; 32],
    expected: &[u8],
) {
    common::wait_until(
        common::COMMAND_TIMEOUT,
        &format!("copy {key:?}"),
        || match client.get_with_key(key, Some(sse_key)) {
            Ok(bytes) if bytes == expected => Ok(()),
            Ok(bytes) => Err(format!(
                "{} bytes, expected {}",
                bytes.len(),
                expected.len()
            )),
            Err(e) => Err(e),
        },
    );
}

#[test]
fn sse_c_large_copy_appended_and_renamed() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (path, key) = key_file(&dirs, 0o600);
    let sse = format!("sse=c,sse_c_key={}", path.display());
    let options = mount_options(&garage, &[&sse, "materialize_interval=1s"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let client = garage.client();

    // Above 5 MiB, an append keeps the stored prefix with UploadPartCopy, whose source
    // must be read with the key.
    let mut content: Vec<u8> = (0..6 << 20)
        .map(|i: u32| b"abcdefghij\n"[(i % 11) as usize])
        .collect();
    fs::write(mount.mnt().join("big.log"), &content).expect("write big.log");
    wait_for_encrypted_copy(&client, &format!("{PREFIX}/big.log"), &key, &content);
    let tail = b"one more line\n";
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(mount.mnt().join("big.log"))
        .expect("open big.log");
    std::io::Write::write_all(&mut file, tail).expect("append");
    drop(file);
    content.extend_from_slice(tail);
    wait_for_encrypted_copy(&client, &format!("{PREFIX}/big.log"), &key, &content);

    // A rename moves the copy with CopyObject, whose source needs the key too.
    fs::rename(mount.mnt().join("big.log"), mount.mnt().join("big.log.1")).expect("rename");
    wait_for_encrypted_copy(&client, &format!("{PREFIX}/big.log.1"), &key, &content);
    mount.verify().assert_success("logmirror verify");
    mount.unmount();
    assert!(
        client
            .get_with_key(&format!("{PREFIX}/big.log.1"), None)
            .is_err()
    );
}
