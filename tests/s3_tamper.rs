//! Tamper evidence of the S3 mirror's hash chain, on a real single-node Garage on loopback.
//! Each test writes a history through a mount and edits the bucket by hand as an intruder
//! would: it removes, replaces, swaps or cuts journal objects. It then asserts the exit
//! codes of `logmirror verify` and `logmirror restore`, and that their messages name the
//! key and number of the first break. An untouched history, a history across a daemon restart and
//! one across a retention fold must pass.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::journal_objects::{
    self, chained_object, create_op, hex, journal_object, recorded_previous, sha256, write_op,
};
use common::{EXIT_RUNTIME, Mode, Mount, STATE_DIR, TestDirs, Tree, assert_same_tree, tree_sha256};
use garage::Garage;

const PREFIX: &str = "host1";
const JOURNAL_PREFIX: &str = "host1/.logmirror/journal/";
const SNAPSHOT_PREFIX: &str = "host1/.logmirror/snapshot/";

/// Journal objects each test writes: one per sync.
const OBJECTS: u64 = 4;

fn mount_options(garage: &Garage, extra: &[&str]) -> Vec<String> {
    let mut options = vec![
        format!("mirror={}", garage.mirror_spec(PREFIX)),
        garage.options(),
        format!("mode={}", Mode::Async.as_str()),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    options
}

fn object_key(number: u64) -> String {
    journal_objects::object_key(PREFIX, number)
}

/// Runs `logmirror restore` of the test mirror into `dir`.
fn restore(garage: &Garage, dir: &Path) -> common::CmdOutput {
    garage.restore(PREFIX, dir, &[])
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

/// Appends `batches` batches of lines to the mount, syncing after each, so that each batch
/// becomes one journal object.
fn write_batches(mount: &Mount, tag: &str, batches: u64) {
    for batch in 0..batches {
        let text: String = (0..50)
            .map(|line| format!("{tag} batch {batch} line {line:03}\n"))
            .collect();
        append(&mount.mnt().join(format!("{tag}.log")), &text);
        mount
            .sync(common::SYNC_TIMEOUT_SECS)
            .assert_success("logmirror sync");
    }
}

fn journal_numbers(garage: &Garage) -> Vec<u64> {
    garage.journal_numbers(PREFIX)
}

/// Mounts, writes [`OBJECTS`] journal objects and returns the mount with the backing tree.
fn mount_with_history<'a>(garage: &Garage, dirs: &'a TestDirs) -> (Mount<'a>, Tree) {
    let mount = Mount::with_env(dirs, &mount_options(garage, &[]), &garage.env());
    write_batches(&mount, "app", OBJECTS);
    assert_eq!(
        journal_numbers(garage),
        (1..=OBJECTS).collect::<Vec<_>>(),
        "one journal object per sync"
    );
    let tree = tree_sha256(&dirs.backing, &[STATE_DIR]);
    (mount, tree)
}

/// Asserts that every journal object in the bucket records the SHA-256 of the one before it
/// (zeros for object 1, or `first_previous` after a fold).
fn assert_chained(garage: &Garage, first_previous: [u8; 32]) {
    let client = garage.client();
    let mut expected = first_previous;
    for key in client.list(JOURNAL_PREFIX) {
        let bytes = client.get(&key);
        assert_eq!(
            hex(&recorded_previous(&bytes)),
            hex(&expected),
            "predecessor digest recorded in {key}"
        );
        expected = sha256(&bytes);
    }
}

/// Asserts that a restore into a new directory exits 0 and gives the tree `backing`.
fn assert_restores(garage: &Garage, dirs: &TestDirs, backing: &Tree, what: &str) {
    let target = dirs.root.join("restored");
    let out = restore(garage, &target);
    assert_eq!(out.code(), 0, "restore {what}: {out}");
    assert_same_tree("backing", backing, "restored", &tree_sha256(&target, &[]));
}

/// Asserts exit 1 of verify and that its output contains every one of `needles`.
fn assert_verify_fails(mount: &Mount, needles: &[&str]) {
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify: {out}");
    for needle in needles {
        assert!(
            out.stdout.contains(needle),
            "verify lacks {needle:?}: {out}"
        );
    }
}

/// Asserts that a restore into a new directory `name` exits 1 with `class` and names every
/// one of `needles`.
fn assert_restore_fails(
    garage: &Garage,
    dirs: &TestDirs,
    name: &str,
    class: &str,
    needles: &[&str],
) {
    let out = restore(garage, &dirs.root.join(name));
    assert_eq!(out.code(), EXIT_RUNTIME, "restore: {out}");
    assert!(out.stderr.contains(class), "restore lacks {class:?}: {out}");
    for needle in needles {
        assert!(
            out.stderr.contains(needle),
            "restore lacks {needle:?}: {out}"
        );
    }
}

#[test]
fn untouched_history_passes() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, backing) = mount_with_history(&garage, &dirs);
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify of an untouched history: {out}");
    mount.unmount();

    assert_chained(&garage, [0; 32]);
    assert_restores(&garage, &dirs, &backing, "of an untouched history");
}

#[test]
fn chain_continues_across_restart() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    mount.unmount();

    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    write_batches(&mount, "after-restart", 2);
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after a restart: {out}");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();

    assert_eq!(
        journal_numbers(&garage),
        (1..=OBJECTS + 2).collect::<Vec<_>>()
    );
    assert_chained(&garage, [0; 32]);
    assert_restores(&garage, &dirs, &backing, "after a restart");
}

#[test]
fn chain_continues_across_fold() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["retention=1s"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    write_batches(&mount, "app", 3);
    let snapshot = garage.wait_folded(PREFIX, mount.mnt(), 3);
    write_batches(&mount, "after-fold", 1);
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after a fold: {out}");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();

    // The first object after the snapshot records the digest the snapshot index carries
    // for the folded object it covers last.
    let client = garage.client();
    let index = client
        .try_get(&format!("{SNAPSHOT_PREFIX}{snapshot:020}.lmi"))
        .or_else(|| {
            // A later fold may have folded the new object too.
            let newest = client
                .list(SNAPSHOT_PREFIX)
                .into_iter()
                .filter(|k| k.ends_with(".lmi"))
                .max()?;
            client.try_get(&newest)
        })
        .expect("a snapshot index");
    let chain: [u8; 32] = index[72..104].try_into().expect("a version 2 index");
    assert_ne!(chain, [0; 32], "the index records no chain digest");
    if !journal_numbers(&garage).is_empty() {
        assert_chained(&garage, chain);
    }
    assert_restores(&garage, &dirs, &backing, "across a fold");
}

#[test]
fn removed_object_detected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    garage.client().delete(&object_key(2));

    let missing = "journal object number 2 is missing before it";
    assert_verify_fails(&mount, &[&object_key(3), missing]);
    mount.unmount();
    assert_restore_fails(
        &garage,
        &dirs,
        "restored",
        "restore stopped after",
        &[&object_key(3), missing],
    );
}

#[test]
fn replaced_object_detected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    let client = garage.client();
    let original = client.get(&object_key(2));
    // A valid-looking object 2 of other content, chained to object 1 as the original is.
    let forged = chained_object(
        2,
        1,
        sha256(&client.get(&object_key(1))),
        &[
            create_op("forged.log"),
            write_op("forged.log", b"all is well\n"),
        ],
    );
    client.put(&object_key(2), forged.clone());

    let broken = "hash chain broken at object 3";
    let recorded = hex(&sha256(&original));
    let found = hex(&sha256(&forged));
    let needles = [
        object_key(3),
        broken.to_string(),
        format!("records SHA-256 {recorded} for its predecessor, but expected {found}"),
        "object 2 was replaced".to_string(),
    ];
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    assert_verify_fails(&mount, &needles);
    mount.unmount();
    assert_restore_fails(
        &garage,
        &dirs,
        "restored",
        "restore stopped after",
        &needles,
    );
}

#[test]
fn swapped_objects_detected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    let client = garage.client();
    let second = client.get(&object_key(2));
    let third = client.get(&object_key(3));
    client.put(&object_key(2), third.clone());
    client.put(&object_key(3), second.clone());

    let swapped = "header names object number 3, but the key names 2";
    assert_verify_fails(&mount, &[&object_key(2), swapped]);
    mount.unmount();
    assert_restore_fails(
        &garage,
        &dirs,
        "restored",
        "restore stopped after",
        &[&object_key(2), swapped],
    );

    // The intruder also rewrites each header's number (and its CRC32C) to match the key, so
    // only the chain detects the swap, at the first swapped key.
    client.put(&object_key(2), renumbered(&third, 2));
    client.put(&object_key(3), renumbered(&second, 3));
    assert_restore_fails(
        &garage,
        &dirs,
        "restored-renumbered",
        "restore stopped after",
        &[&object_key(2), "hash chain broken at object 2"],
    );
}

/// Returns a copy of a version 2 object with `number` in its header and the CRC32C fixed.
fn renumbered(object: &[u8], number: u64) -> Vec<u8> {
    let mut bytes = object.to_vec();
    bytes[24..32].copy_from_slice(&number.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..100]);
    bytes[100..104].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn removed_tail_detected_by_running_mount() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    let client = garage.client();
    client.delete(&object_key(OBJECTS));
    client.delete(&object_key(OBJECTS - 1));

    let truncated = format!("tail truncated: this mount stored journal object {OBJECTS} (SHA-256 ");
    let ends = format!("the chain in the store ends at object {}", OBJECTS - 2);
    assert_verify_fails(&mount, &[&object_key(OBJECTS), &truncated, &ends]);
    mount.unmount();

    // The store alone cannot prove that the newest objects existed: a restore replays the
    // shorter chain and succeeds.
    let target = dirs.root.join("restored");
    let out = restore(&garage, &target);
    assert_eq!(out.code(), 0, "restore of a cut history: {out}");
}

#[test]
fn removed_tail_detected_after_restart() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    mount.unmount();
    let client = garage.client();
    client.delete(&object_key(OBJECTS));
    client.delete(&object_key(OBJECTS - 1));

    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    let truncated = format!(
        "tail truncated: this state directory stored journal object {OBJECTS} ({}",
        object_key(OBJECTS)
    );
    let ends = format!("the chain in the store ends at object {}", OBJECTS - 2);
    assert_verify_fails(&mount, &["history check failed", &truncated, &ends]);
    let log = mount.log_tail(usize::MAX);
    assert!(log.contains(&truncated), "daemon log: {log}");
    mount.unmount();
}

#[test]
fn cut_object_detected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    mount.unmount();
    let client = garage.client();
    let last = client.get(&object_key(OBJECTS));
    client.put(&object_key(OBJECTS), last[..last.len() / 2].to_vec());

    assert_restore_fails(
        &garage,
        &dirs,
        "restored",
        "restore stopped after",
        &[&format!(
            "journal object {} is invalid",
            object_key(OBJECTS)
        )],
    );

    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    let replaced = format!(
        "journal object {OBJECTS} ({}) was replaced: this state directory stored it with \
         SHA-256 {}",
        object_key(OBJECTS),
        hex(&sha256(&last))
    );
    assert_verify_fails(&mount, &[&replaced]);
    mount.unmount();
}

#[test]
fn chain_continues_from_version_1() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    // Two objects of an older release, which are not chained.
    let client = garage.client();
    let old = [
        journal_object(
            1,
            1,
            &[create_op("old.log"), write_op("old.log", b"from v1\n")],
        ),
        journal_object(2, 3, &[write_op("old.log", b"from v1, again\n")]),
    ];
    for (number, object) in (1..).zip(&old) {
        client.put(&object_key(number), object.clone());
    }

    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, &[]), &garage.env());
    write_batches(&mount, "app", 2);
    let out = mount.verify();
    assert_eq!(
        out.code(),
        0,
        "verify of a history begun by version 1: {out}"
    );
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();

    let numbers = journal_numbers(&garage);
    assert!(numbers.len() >= 4, "journal objects: {numbers:?}");
    let third = client.get(&object_key(3));
    assert_eq!(&third[8..12], &2u32.to_le_bytes(), "object 3 has version 2");
    assert_eq!(hex(&recorded_previous(&third)), hex(&sha256(&old[1])));
    assert_restores(&garage, &dirs, &backing, "of a history begun by version 1");
}

#[test]
fn version_1_after_chain_rejected() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let (mount, _) = mount_with_history(&garage, &dirs);
    mount.unmount();

    // An unchained object of the old format after chained ones, as an intruder would add
    // to escape the chain.
    let number = OBJECTS + 1;
    let downgrade = journal_object(number, 1, &[create_op("planted.log")]);
    garage.client().put(&object_key(number), downgrade);
    assert_restore_fails(
        &garage,
        &dirs,
        "restored",
        "restore stopped after",
        &[
            &object_key(number),
            &format!("hash chain broken at object {number}"),
            "version 1 object without a chain",
        ],
    );
}
