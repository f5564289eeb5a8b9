//! Client-side encryption of the S3 mirror (`encrypt_key=FILE`) on a real single-node Garage
//! on loopback. A mount encrypts every journal object, `restore --key` gives back the exact
//! tree, and the bucket never contains the plaintext. A missing or wrong key fails with the
//! exit code and the key of the first object that cannot be opened.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::journal_objects;
use common::{
    EXIT_RUNTIME, EXIT_USAGE, Mode, Mount, STATE_DIR, TestDirs, assert_same_tree, logmirror,
    path_str, tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";

/// Text written into the logs; no object in the bucket may contain it.
const MARKER: &str = "PLAINTEXT-MARKER-5d1c9e";

fn mount_options(garage: &Garage, key: Option<&Path>) -> Vec<String> {
    let mut options = vec![
        format!("mirror={}", garage.mirror_spec(PREFIX)),
        garage.options(),
        format!("mode={}", Mode::Async.as_str()),
    ];
    if let Some(key) = key {
        options.push(format!("encrypt_key={}", key.display()));
    }
    options
}

/// Writes a key file of 64 hex digits with `mode` and returns its path.
fn key_file(dirs: &TestDirs, name: &str, hex: &str, mode: u32) -> PathBuf {
    let path = dirs.root.join(name);
    fs::write(&path, format!("{hex}\n")).expect("write key file");
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod key file");
    path
}

const KEY: &str = "7f0e1d2c3b4a59687766554433221100ffeeddccbbaa99887766554433221100";
const OTHER_KEY: &str = "0011223344556677889900aabbccddeeff0011223344556677889900aabbccdd";

/// Runs `logmirror restore` of the test mirror into `dir`, with `extra` arguments.
fn restore(garage: &Garage, dir: &Path, extra: &[&str]) -> common::CmdOutput {
    garage.restore(PREFIX, dir, extra)
}

/// Mounts with `key`, writes logs that contain [`MARKER`] in three journal objects, and
/// returns the backing tree after unmounting.
fn write_encrypted_history(garage: &Garage, dirs: &TestDirs, key: &Path) -> common::Tree {
    let mount = Mount::with_env(dirs, &mount_options(garage, Some(key)), &garage.env());
    let status = logmirror(&["status", path_str(mount.mnt())]);
    status.assert_success("logmirror status");
    assert!(
        status.stdout.contains("encryption: client (key id "),
        "{status}"
    );
    assert!(
        !status.stdout.contains(KEY),
        "status shows the key: {status}"
    );

    fs::create_dir(mount.mnt().join("app")).expect("mkdir app");
    for batch in 0..3 {
        let text: String = (0..40)
            .map(|line| format!("{MARKER} batch {batch} line {line}\n"))
            .collect();
        let path = mount.mnt().join("app/secret.log");
        let mut old = fs::read(&path).unwrap_or_default();
        old.extend_from_slice(text.as_bytes());
        fs::write(&path, old).expect("write secret.log");
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync");
    }

    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify of an encrypted history: {out}");
    let log = mount.log_tail(usize::MAX);
    assert!(!log.contains(KEY), "the daemon log shows the key");
    let tree = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();
    tree
}

#[test]
fn encrypted_round_trip() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let key = key_file(&dirs, "key", KEY, 0o600);
    let backing = write_encrypted_history(&garage, &dirs, &key);

    let client = garage.client();
    let keys = client.list(&format!("{PREFIX}/"));
    let journal: Vec<&String> = keys.iter().filter(|k| k.ends_with(".lmj")).collect();
    assert!(journal.len() >= 3, "journal objects: {keys:?}");
    // Readable copies are off with encrypt_key: only the mirror's own objects are stored.
    for key in &keys {
        assert!(
            key.starts_with(&format!("{PREFIX}/.logmirror/")),
            "a plain copy {key} was stored"
        );
    }
    for object in &keys {
        let bytes = client.get(object);
        for needle in [MARKER.as_bytes(), b"secret.log"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{object} contains {:?} in plain text",
                String::from_utf8_lossy(needle)
            );
        }
    }

    let target = dirs.root.join("restored");
    let out = restore(&garage, &target, &["--key", path_str(&key)]);
    assert_eq!(out.code(), 0, "restore --key: {out}");
    assert_same_tree("backing", &backing, "restored", &tree_sha256(&target, &[]));

    let target = dirs.root.join("restored-option");
    let option = format!("encrypt_key={}", key.display());
    let out = restore(&garage, &target, &["-o", &option]);
    assert_eq!(out.code(), 0, "restore -o encrypt_key: {out}");
    assert_same_tree("backing", &backing, "restored", &tree_sha256(&target, &[]));
}

#[test]
fn encrypted_needs_right_key() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let key = key_file(&dirs, "key", KEY, 0o600);
    write_encrypted_history(&garage, &dirs, &key);
    let first = journal_objects::object_key(PREFIX, 1);

    let target = dirs.root.join("no-key");
    let out = restore(&garage, &target, &[]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore without a key: {out}");
    assert!(
        out.stderr
            .contains("restore failed before any record was applied"),
        "{out}"
    );
    assert!(
        out.stderr.contains(&format!(
            "journal object {first} is invalid at byte 88: the object is encrypted with key id"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("--key FILE"), "{out}");
    assert!(!target.exists(), "restore left {target:?} behind");

    let other = key_file(&dirs, "other-key", OTHER_KEY, 0o600);
    let target = dirs.root.join("wrong-key");
    let out = restore(&garage, &target, &["--key", path_str(&other)]);
    assert_eq!(out.code(), EXIT_RUNTIME, "restore with a wrong key: {out}");
    assert!(
        out.stderr
            .contains("restore failed before any record was applied"),
        "{out}"
    );
    assert!(
        out.stderr
            .contains(&format!("journal object {first} is invalid")),
        "{out}"
    );
    assert!(out.stderr.contains("but the key given has id"), "{out}");
    assert!(!target.exists(), "restore left {target:?} behind");

    // A mount without the key cannot continue the encrypted chain.
    let out = common::mount_expecting_failure(&dirs, &mount_options(&garage, None), &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "mount without the key: {out}");
    assert!(out.stderr.contains("is encrypted with key id"), "{out}");
    assert!(out.stderr.contains("set encrypt_key=FILE"), "{out}");
}

#[test]
fn key_file_rejected() {
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let cases = [
        (key_file(&dirs, "readable", KEY, 0o644), "mode 0644"),
        (
            key_file(&dirs, "short", &KEY[..60], 0o600),
            "expected 64 hex digits",
        ),
        (dirs.root.join("missing"), "cannot read key file"),
    ];
    for (path, reason) in cases {
        let out = restore(
            &garage,
            &dirs.root.join("restored"),
            &["--key", path_str(&path)],
        );
        assert_eq!(out.code(), EXIT_USAGE, "restore --key {path:?}: {out}");
        let named = format!("invalid value \"{}\" for encrypt_key", path.display());
        assert!(out.stderr.contains(&named), "{out}");
        assert!(out.stderr.contains(reason), "{out}");
        assert!(!out.stderr.contains(KEY), "the key is echoed: {out}");
    }
}

/// Returns an unsealed version 2 snapshot index of an empty tree covering objects 1 to
/// `number`, claiming `chain` as the digest of object `number`: a fold forged without the
/// key.
fn forged_index(number: u64, chain: [u8; 32]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"LMSNAP\0\x01");
    bytes.extend_from_slice(&2u32.to_le_bytes());
    bytes.extend_from_slice(&112u32.to_le_bytes());
    bytes.extend_from_slice(&number.to_le_bytes());
    // journal_id, last_seq, last_seq_at_ns, last_frame_at_ns, frame_count: all zero.
    bytes.extend_from_slice(&[0; 40]);
    // part_count and flags: no parts, not sealed.
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(&chain);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn fake_fold_detected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let key = key_file(&dirs, "key", KEY, 0o600);
    write_encrypted_history(&garage, &dirs, &key);

    // The intruder removes objects 1 and 2 and hides the removal behind a snapshot that
    // claims to cover them, with the right digest of object 2 in it.
    let client = garage.client();
    let second = client.get(&journal_objects::object_key(PREFIX, 2));
    client.put(
        &format!("{PREFIX}/.logmirror/snapshot/{:020}.lmi", 2),
        forged_index(2, journal_objects::sha256(&second)),
    );
    client.delete(&journal_objects::object_key(PREFIX, 1));
    client.delete(&journal_objects::object_key(PREFIX, 2));

    let out = restore(
        &garage,
        &dirs.root.join("restored"),
        &["--key", path_str(&key)],
    );
    assert_eq!(
        out.code(),
        EXIT_RUNTIME,
        "restore behind a forged fold: {out}"
    );
    let third = journal_objects::object_key(PREFIX, 3);
    // The forged snapshot contains no frames, so nothing was applied before the break.
    assert!(
        out.stderr
            .contains("restore failed before any record was applied"),
        "{out}"
    );
    assert!(
        out.stderr.contains(&format!(
            "object 3 ({third}) is encrypted, but the index of snapshot 2 before it is not \
             sealed"
        )),
        "{out}"
    );
}

#[test]
fn mount_rejects_readable_key() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let key = key_file(&dirs, "key", KEY, 0o640);
    let out =
        common::mount_expecting_failure(&dirs, &mount_options(&garage, Some(&key)), &garage.env());
    assert_eq!(out.code(), EXIT_USAGE, "mount with a readable key: {out}");
    let named = format!("invalid value \"{}\" for encrypt_key", key.display());
    assert!(out.stderr.contains(&named), "{out}");
    assert!(out.stderr.contains("mode 0640"), "{out}");
}
