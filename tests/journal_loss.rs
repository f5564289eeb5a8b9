//! Journal records lost at recovery after a clean unmount. A mirror that was down keeps
//! records unconfirmed, and then the newest segment is damaged or deleted. The next mount
//! must resync that mirror from the backing tree instead of reporting it level.

mod common;

use std::fs;
use std::io::Write;

use common::journal_objects::SEGMENT_HEADER_BYTES;
use common::state_dir::{flip_byte, mirror_cursor, segments};
use common::{
    Mode, Mount, ReadOnlyBind, TestDirs, append_lines, assert_mirrors_match, expected_lines,
};

/// Returns the `-o` values of an async mount with `extra` added and a drain that gives up
/// after a second, so that an unmount with the mirror down leaves records unconfirmed.
fn options(dirs: &TestDirs, extra: &[&str]) -> Vec<String> {
    let mut options = dirs.options(Mode::Async);
    options.push("drain_timeout=1s".to_string());
    options.extend(extra.iter().map(|o| o.to_string()));
    options
}

/// Returns `len` bytes of a pattern that differs at every offset within 251 bytes.
fn bulk(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Writes `app.log` lines 0 to 99 and syncs, then writes with the mirror read-only:
/// `app.log` lines 100 to 199, `outage.log`, and `bulk.bin` of `bulk_bytes` in 64 KiB
/// writes. Unmounts at the end.
fn write_with_mirror_down(dirs: &TestDirs, options: &[String], bulk_bytes: usize) {
    let mount = Mount::with_options(dirs, options);
    let app = dirs.mnt.join("app.log");
    append_lines(&app, 0, 100);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");

    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);
    append_lines(&app, 100, 200);
    fs::write(
        dirs.mnt.join("outage.log"),
        b"written while the mirror was down\n",
    )
    .expect("write outage.log");
    let mut file = fs::File::create(dirs.mnt.join("bulk.bin")).expect("create bulk.bin");
    for chunk in bulk(bulk_bytes).chunks(64 << 10) {
        file.write_all(chunk).expect("write bulk.bin");
    }
    drop(file);
    mount.unmount();
    bind.remove();
}

fn assert_recovered(dirs: &TestDirs, options: &[String], bulk_bytes: usize) {
    let mount = Mount::with_options(dirs, options);
    let tree = assert_mirrors_match(&mount);
    assert_eq!(
        tree.entries["app.log"],
        common::sha256_hex(expected_lines(200).as_bytes())
    );
    assert_eq!(
        tree.entries["bulk.bin"],
        common::sha256_hex(&bulk(bulk_bytes))
    );
    assert_eq!(
        tree.entries["outage.log"],
        common::sha256_hex(b"written while the mirror was down\n")
    );
    let log = common::read_text(&mount.log_file);
    assert_eq!(log.matches("journal recovery lost records (").count(), 1);
}

#[test]
fn damaged_segment_after_clean_unmount() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = options(&dirs, &[]);
    write_with_mirror_down(&dirs, &options, 100_000);

    let (_, position) = mirror_cursor(&dirs);
    let segments = segments(&dirs);
    assert_eq!(segments.len(), 1, "segments: {segments:?}");
    // A byte inside the payload of the first record the mirror lacks fails its CRC32C, so
    // recovery cuts that record and every record after it.
    flip_byte(&segments[0].1, SEGMENT_HEADER_BYTES as u64 + position + 30);

    assert_recovered(&dirs, &options, 100_000);
}

#[test]
fn deleted_segments_after_clean_unmount() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = options(&dirs, &["segment_size=1M"]);
    // The records the mirror lacks fill several segments of 1 MiB: the first 8 MiB of
    // bulk writes are held in memory and journaled by reference, the 3 MiB after them are
    // copied into the segments.
    let bulk_bytes = logmirror::journal::DATA_CACHE_BYTES as usize + (3 << 20);
    write_with_mirror_down(&dirs, &options, bulk_bytes);

    let (seq, _) = mirror_cursor(&dirs);
    let newer: Vec<_> = segments(&dirs)
        .into_iter()
        .filter(|(first_seq, _)| *first_seq > seq + 1)
        .collect();
    assert!(newer.len() >= 2, "segments after seq {seq}: {newer:?}");
    for (_, path) in &newer {
        fs::remove_file(path).unwrap_or_else(|e| panic!("remove {path:?}: {e}"));
    }

    assert_recovered(&dirs, &options, bulk_bytes);
}

/// Writes of 64 KiB are journaled by reference. After a clean unmount that left them
/// unconfirmed, the next mount reads their data from the backing file: the mirror catches
/// up from the journal, with no resync.
#[test]
fn referenced_writes_read_from_backing_after_clean_unmount() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = options(&dirs, &[]);
    write_with_mirror_down(&dirs, &options, 1 << 20);

    let mount = Mount::with_options(&dirs, &options);
    let tree = assert_mirrors_match(&mount);
    assert_eq!(tree.entries["bulk.bin"], common::sha256_hex(&bulk(1 << 20)));
    let log = common::read_text(&mount.log_file);
    assert!(!log.contains("resync"), "{log}");
}

/// A file changed in the backing directory behind the daemon's back no longer holds the
/// bytes a referenced write recorded. The mirror must not receive other bytes under that
/// record: it is resynced, and ends equal to the backing tree.
#[test]
fn changed_backing_file_resyncs_instead_of_replaying() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = options(&dirs, &[]);
    write_with_mirror_down(&dirs, &options, 1 << 20);
    let mut changed = bulk(1 << 20);
    changed[100_000] ^= 0xff;
    fs::write(dirs.backing.join("bulk.bin"), &changed).expect("change bulk.bin in the backing");

    let mount = Mount::with_options(&dirs, &options);
    let tree = assert_mirrors_match(&mount);
    assert_eq!(tree.entries["bulk.bin"], common::sha256_hex(&changed));
    let log = common::read_text(&mount.log_file);
    assert!(log.contains("is no longer held"), "{log}");
    assert!(
        log.contains("resyncing the mirror from the backing tree"),
        "{log}"
    );
}

/// Sets the last 4 bytes of `block` so that its CRC32C becomes `target`. CRC32C is affine
/// in its input, so running the register backwards over 4 zero bytes from the wanted final
/// value gives the value those 4 bytes must XOR into the register after the rest.
fn forge_crc32c(block: &mut [u8], target: u32) {
    const REFLECTED_POLY: u32 = 0x82f6_3b78;
    let prefix_len = block.len() - 4;
    let after_prefix = !crc32c::crc32c(&block[..prefix_len]);
    let mut needed = !target;
    for _ in 0..32 {
        needed = if needed & 0x8000_0000 != 0 {
            ((needed ^ REFLECTED_POLY) << 1) | 1
        } else {
            needed << 1
        };
    }
    block[prefix_len..].copy_from_slice(&(needed ^ after_prefix).to_le_bytes());
}

/// After a clean stop with the mirror behind, `bulk.bin` is renamed in the backing directory
/// and a new `bulk.bin` takes its place whose first 4 KiB differ but have the same CRC32C.
/// The referenced writes named the renamed file, so the mirror must not get the forged
/// block under them: it is resynced, and `moved.bin` holds exactly the bytes written.
#[test]
fn renamed_file_with_forged_crc_resyncs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = options(&dirs, &[]);
    write_with_mirror_down(&dirs, &options, 1 << 20);
    let original = bulk(1 << 20);
    fs::rename(
        dirs.backing.join("bulk.bin"),
        dirs.backing.join("moved.bin"),
    )
    .expect("rename bulk.bin in the backing");
    let mut forged = original.clone();
    forged[0] ^= 0xff;
    forge_crc32c(&mut forged[..4096], crc32c::crc32c(&original[..4096]));
    assert_ne!(forged[..4096], original[..4096]);
    assert_eq!(
        crc32c::crc32c(&forged[..4096]),
        crc32c::crc32c(&original[..4096])
    );
    fs::write(dirs.backing.join("bulk.bin"), &forged).expect("write the forged bulk.bin");

    let mount = Mount::with_options(&dirs, &options);
    let tree = assert_mirrors_match(&mount);
    assert_eq!(tree.entries["moved.bin"], common::sha256_hex(&original));
    assert_eq!(tree.entries["bulk.bin"], common::sha256_hex(&forged));
    let mirrored = fs::read(dirs.mirrors[0].join("moved.bin")).expect("read the mirror copy");
    assert_eq!(common::sha256_hex(&mirrored), common::sha256_hex(&original));
    let log = common::read_text(&mount.log_file);
    assert!(log.contains("the path names another file now"), "{log}");
    assert!(
        log.contains("resyncing the mirror from the backing tree"),
        "{log}"
    );
}
