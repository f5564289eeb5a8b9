//! Write data that the journal keeps in memory instead of copying it into a segment. It
//! stays while any mirror still needs it, here a mirror made read-only or an S3 mirror whose
//! server is down, and goes once every mirror applied it.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{
    Mode, Mount, ReadOnlyBind, STATE_DIR, SmallTmpfs, TestDirs, assert_mirrors_match,
    assert_same_tree, tree_sha256, wait_until,
};
use garage::Garage;

/// Records appended, each large enough to be held by reference.
const RECORDS: usize = 256;
const RECORD_BYTES: usize = 4096;

/// Returns record `index`: its number, then a pattern that differs per record.
fn record(index: usize) -> Vec<u8> {
    let mut bytes = format!("record {index:06}\n").into_bytes();
    bytes.extend((bytes.len()..RECORD_BYTES).map(|i| ((i * 7 + index) % 251) as u8));
    bytes
}

#[test]
fn data_held_until_every_mirror_applied_it() {
    let dirs = TestDirs::new(2);
    let mount = Mount::new(&dirs, Mode::Async);
    let mut read_only = ReadOnlyBind::new(&dirs.mirrors[1]);

    append_records(&mount, "app.log");

    let status = wait_until(
        Duration::from_secs(20),
        "mirror 0 to confirm every record",
        || {
            let status = mount.status();
            let confirmed = status.mirrors[0].confirmed_seq;
            if confirmed >= status.head_seq {
                Ok(status)
            } else {
                Err(format!("confirmed {confirmed} of head {}", status.head_seq))
            }
        },
    );
    assert_eq!(
        status.mirrors[1].confirmed_seq, 0,
        "the read-only mirror confirmed records: {:?}",
        status.mirrors[1]
    );
    assert_eq!(
        status.journal_memory_bytes,
        (RECORDS * RECORD_BYTES) as u64,
        "mirror 1 has applied nothing, so the journal must still hold every write's data"
    );

    read_only.remove();
    wait_until(
        Duration::from_secs(30),
        "the journal to drop the data",
        || {
            let held_bytes = mount.status().journal_memory_bytes;
            if held_bytes == 0 {
                Ok(())
            } else {
                Err(format!("{held_bytes} bytes held"))
            }
        },
    );
    let tree = assert_mirrors_match(&mount);
    assert_eq!(tree.entries.keys().collect::<Vec<_>>(), ["app.log"]);
    let written = std::fs::read(dirs.backing.join("app.log")).expect("read backing app.log");
    let expected: Vec<u8> = (0..RECORDS).flat_map(record).collect();
    assert_eq!(written.len(), RECORDS * RECORD_BYTES);
    assert!(
        written == expected,
        "backing app.log differs from the records written"
    );
    mount.unmount();
}

/// Files written at once during the S3 outage, each by its own writer thread.
const WRITERS: usize = 4;

/// Appends records `0..RECORDS` to `name` under the mount, each with one write.
fn append_records(mount: &Mount, name: &str) {
    let path = mount.mnt().join(name);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"));
    for index in 0..RECORDS {
        file.write_all(&record(index))
            .unwrap_or_else(|e| panic!("append record {index} to {name}: {e}"));
    }
}

/// Appends the records to `w0.log`, `w1.log` and on, from `WRITERS` threads at once, one file
/// per thread.
fn append_from_writers(mount: &Mount) {
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            scope.spawn(move || append_records(mount, &format!("w{writer}.log")));
        }
    });
}

/// Truncates `w0.log` and overwrites the first record of `w1.log` through the mount, so
/// that the backing files no longer have the bytes those records wrote.
fn change_in_place(mount: &Mount) {
    fs::write(mount.mnt().join("w0.log"), "").expect("truncate w0.log");
    let w1 = OpenOptions::new()
        .write(true)
        .open(mount.mnt().join("w1.log"))
        .expect("open w1.log");
    w1.write_all_at(&[b'#'; RECORD_BYTES], 0)
        .expect("overwrite the first record of w1.log");
    drop(w1);
}

/// Two directory mirrors apply and drop their share at once, but the S3 mirror, down while
/// the writes arrive, still needs every write's data. The files change in place before the
/// server returns, so the S3 history must come from the held data, not the backing files.
#[test]
fn data_held_for_s3_mirror_during_outage() {
    if !common::can_mount() {
        return;
    }
    let Some(mut garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(2);
    let mut options = dirs.options(Mode::Async);
    options.push(format!("mirror={}", garage.mirror_spec("outage")));
    options.push(garage.options());
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    fs::write(
        mount.mnt().join("before.txt"),
        "written before the outage\n",
    )
    .expect("write before.txt");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");

    garage.stop();
    append_from_writers(&mount);
    let status = wait_until(
        Duration::from_secs(30),
        "both directory mirrors to confirm every record",
        || {
            let status = mount.status();
            let confirmed: Vec<u64> = status.mirrors.iter().map(|m| m.confirmed_seq).collect();
            if confirmed[..2].iter().all(|&seq| seq >= status.head_seq) {
                Ok(status)
            } else {
                Err(format!(
                    "confirmed {confirmed:?} of head {}",
                    status.head_seq
                ))
            }
        },
    );
    assert!(
        status.mirrors[2].confirmed_seq < status.head_seq,
        "the S3 mirror confirmed every record while its server was down: {:?}",
        status.mirrors[2]
    );
    assert_eq!(
        status.journal_memory_bytes,
        (WRITERS * RECORDS * RECORD_BYTES) as u64,
        "the S3 mirror has uploaded none of the outage's writes, so their data must stay held"
    );

    change_in_place(&mount);

    garage.restart();
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the outage");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the outage: {out}");
    wait_until(
        Duration::from_secs(30),
        "the journal to drop the data",
        || match mount.status().journal_memory_bytes {
            0 => Ok(()),
            held_bytes => Err(format!("{held_bytes} bytes held")),
        },
    );
    let log = mount.log_tail(1 << 20);
    assert!(
        !log.contains("no longer held"),
        "a mirror read released data back from the backing files: {log}"
    );
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    assert_mirrors_match(&mount);
    mount.unmount();
    let restored = dirs.root.join("restored");
    let out = garage.restore("outage", &restored, &[]);
    assert_eq!(out.code(), 0, "restore from the S3 history: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}

/// Size of the disk of the mirror that fills up: less than the writes of the test.
const SMALL_MIRROR_BYTES: u64 = 2 << 20;

/// The disk of one of two directory mirrors fills while several writers append, after that
/// mirror applied and dropped part of the data. The files change through the mount while it
/// is down, the daemon stops with the mirror behind, and the disk grows. At the next mount
/// the mirror gets the released data back from the unchanged backing files, resyncs for the
/// changed ones, and ends equal to the backing tree.
#[test]
fn full_mirror_disk_then_files_rewritten() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(2);
    let disk = SmallTmpfs::new(&dirs.mirrors[0], SMALL_MIRROR_BYTES);
    let mut options = dirs.options(Mode::Async);
    options.push("drain_timeout=1s".to_string());
    let mount = Mount::with_options(&dirs, &options);
    append_from_writers(&mount);
    let error = wait_until(
        Duration::from_secs(30),
        "the mirror on the full disk to be down",
        || {
            let status = mount.status();
            let mirror = &status.mirrors[0];
            match &mirror.last_error {
                Some(error) if mirror.state == "down" => Ok(error.clone()),
                _ => Err(format!("{mirror:?}")),
            }
        },
    );
    assert!(error.contains("No space left on device"), "{error}");

    change_in_place(&mount);
    fs::rename(mount.mnt().join("w2.log"), mount.mnt().join("w2.log.1")).expect("rename w2.log");
    append_records(&mount, "w2.log");
    mount.unmount();

    disk.resize(64 << 20);
    let mount = Mount::with_options(&dirs, &options);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the disk grew");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the disk grew: {out}");
    let tree = assert_mirrors_match(&mount);
    let names: Vec<&String> = tree.entries.keys().collect();
    assert_eq!(names, ["w0.log", "w1.log", "w2.log", "w2.log.1", "w3.log"]);
    let w3 = fs::read(dirs.mirrors[0].join("w3.log")).expect("read w3.log on the mirror");
    assert!(
        w3 == (0..RECORDS).flat_map(record).collect::<Vec<u8>>(),
        "w3.log on the mirror differs from the records written"
    );
    mount.unmount();
}
