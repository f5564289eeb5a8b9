//! Write data that the journal holds in memory instead of copying it into a segment. It
//! stays while any mirror still needs it, here a mirror made read-only, and goes once every
//! mirror applied it.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use common::{Mode, Mount, ReadOnlyBind, TestDirs, assert_mirrors_match, wait_until};

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

    let path = mount.mnt().join("app.log");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"));
    for index in 0..RECORDS {
        file.write_all(&record(index))
            .unwrap_or_else(|e| panic!("append record {index}: {e}"));
    }
    drop(file);

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
            let held = mount.status().journal_memory_bytes;
            if held == 0 {
                Ok(())
            } else {
                Err(format!("{held} bytes held"))
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
