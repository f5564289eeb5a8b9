//! Python `logging.handlers.RotatingFileHandler` writing through the mount: every rollover is
//! a close, a chain of renames and a create, so the mirror must follow renames in order.

mod common;

use std::collections::BTreeMap;
use std::fs;

use common::{Mode, Mount, TestDirs, assert_mirrors_match, can_mount, list_dir, path_str};

const RECORDS: usize = 2000;
const MAX_BYTES: usize = 16384;
/// Each record line is 55 bytes ("record NNNNNN " + 40 `x` + newline). The handler rolls over
/// before a write when size + 55 >= 16384, so every full file contains 297 records.
const RECORDS_PER_FILE: usize = 297;

const WRITER: &str = r#"
import logging, logging.handlers, sys
path, records, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=50)
handler.setFormatter(logging.Formatter("%(message)s"))
log = logging.getLogger("rotating")
log.propagate = False
log.setLevel(logging.INFO)
log.addHandler(handler)
for i in range(records):
    log.info("record %06d %s", i, "x" * 40)
handler.close()
"#;

fn record_line(i: usize) -> String {
    format!("record {i:06} {}\n", "x".repeat(40))
}

#[test]
fn rotating_handler_sync() {
    rotating_handler(Mode::Sync);
}

#[test]
fn rotating_handler_async() {
    rotating_handler(Mode::Async);
}

fn rotating_handler(mode: Mode) {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    let logs = dirs.mnt.join("logs");
    fs::create_dir(&logs).expect("mkdir logs through the mount");

    let app_log = logs.join("app.log");
    common::python_ok(
        WRITER,
        &[
            path_str(&app_log),
            &RECORDS.to_string(),
            &MAX_BYTES.to_string(),
        ],
    );

    // The oldest records are in the highest suffix, and app.log contains the newest ones.
    let file_count = RECORDS.div_ceil(RECORDS_PER_FILE);
    assert_eq!(file_count, 7);
    let name = |suffix: usize| match suffix {
        0 => "app.log".to_string(),
        n => format!("app.log.{n}"),
    };
    let mut expected_names: Vec<String> = (0..file_count).map(name).collect();
    expected_names.sort();
    assert_eq!(list_dir(&logs), expected_names);

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for chunk in 0..file_count {
        let first = chunk * RECORDS_PER_FILE;
        let end = (first + RECORDS_PER_FILE).min(RECORDS);
        let expected: String = (first..end).map(record_line).collect();
        let path = logs.join(name(file_count - 1 - chunk));
        let content = common::read_text(&path);
        for line in content.lines() {
            *seen.entry(line.to_string()).or_default() += 1;
        }
        assert_eq!(content.len(), expected.len(), "size of {path:?}");
        assert!(
            content == expected,
            "content of {path:?} is not records {first}..{end}"
        );
    }
    assert_eq!(seen.len(), RECORDS, "distinct records across all files");
    let repeated: Vec<&String> = seen
        .iter()
        .filter(|(_, n)| **n != 1)
        .map(|(l, _)| l)
        .collect();
    assert!(
        repeated.is_empty(),
        "records seen more than once: {repeated:?}"
    );

    assert_mirrors_match(&mount);
}
