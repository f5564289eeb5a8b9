//! The crash-recovery writer: a Python program that appends checksummed records
//! round-robin to `data0.log`... through the mount and lists each acknowledged record id in a
//! file outside the mount, and the checks of those files after the daemon was killed.
//!
//! Record `i` goes to `data{i % 4}.log` at byte offset `(i / 4) * 64`, and its last 17 bytes
//! are a sha256 prefix of the rest, so an id names both the offset and the content of an
//! acknowledged write.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::{Helper, path_str, sha256_hex, wait_until};

/// Files the writer appends to: `data0.log` to `data3.log`.
pub const FILES: u64 = 4;
const RECORD_BYTES: usize = 64;
/// Bytes of a record covered by its checksum. The checksum (16 hex digits) and a newline
/// follow them.
const BODY_BYTES: usize = RECORD_BYTES - 17;
/// Upper bound on records, so that a writer whose mount never fails stops by itself.
const RECORD_LIMIT: u64 = 1_000_000;

/// Appends records round-robin to `data0.log`... and, after each `write(2)` that returned
/// the full length, appends the record id to the acknowledgement list outside the mount.
/// With `sync_every` above 0 it fsyncs every file after each `sync_every` records and then
/// appends the number of records the fsync covered to `ACKED_PATH.synced`.
/// On the first failed write or fsync it prints `stopped ID ERRNO_NAME` and exits 0.
const WRITER: &str = r#"
import errno, hashlib, os, sys
directory, acked_path, files, limit, width = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sync_every = int(sys.argv[6])
fds = [os.open(os.path.join(directory, "data%d.log" % k), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
       for k in range(files)]
acked = open(acked_path, "a")
synced = open(acked_path + ".synced", "a")
for i in range(limit):
    k = i % files
    head = "rec %08d file %d " % (i, k)
    body = head + "z" * (width - 17 - len(head))
    record = (body + hashlib.sha256(body.encode()).hexdigest()[:16] + "\n").encode()
    try:
        written = os.write(fds[k], record)
    except OSError as e:
        print("stopped %d %s" % (i, errno.errorcode.get(e.errno, str(e.errno))))
        sys.exit(0)
    if written != len(record):
        print("short write of record %d: %d bytes" % (i, written))
        sys.exit(4)
    acked.write("%d\n" % i)
    acked.flush()
    if sync_every > 0 and (i + 1) % sync_every == 0:
        try:
            for fd in fds:
                os.fsync(fd)
        except OSError as e:
            print("stopped %d %s" % (i + 1, errno.errorcode.get(e.errno, str(e.errno))))
            sys.exit(0)
        synced.write("%d\n" % (i + 1))
        synced.flush()
print("never stopped after %d records" % limit)
sys.exit(5)
"#;

/// Starts the writer on the mount point `mnt`, with the acknowledgement list at `acked_path`.
pub fn start(mnt: &Path, acked_path: &Path) -> Helper {
    start_with_fsync(mnt, acked_path, 0)
}

/// Starts the writer as [`start`] does, fsyncing every file after each `sync_every` records
/// (0 for never) and listing the records each fsync covered (see [`read_synced`]).
pub fn start_with_fsync(mnt: &Path, acked_path: &Path, sync_every: u64) -> Helper {
    Helper::python(
        WRITER,
        &[
            path_str(mnt),
            path_str(acked_path),
            &FILES.to_string(),
            &RECORD_LIMIT.to_string(),
            &RECORD_BYTES.to_string(),
            &sync_every.to_string(),
        ],
    )
}

/// Waits up to `timeout` until at least `count` records are acknowledged.
pub fn wait_for_acks(acked_path: &Path, count: u64, timeout: Duration) {
    wait_until(
        timeout,
        "acknowledged records before the kill",
        || match read_acked(acked_path) {
            n if n >= count => Ok(()),
            n => Err(format!("{n} acknowledged")),
        },
    );
}

/// Waits for the writer to stop after the kill, asserts it exited 0, and returns its
/// `stopped ID ERRNO_NAME` line and the number of acknowledged records.
pub fn finish(writer: Helper, acked_path: &Path) -> (String, u64) {
    let stop = writer.read_line(Duration::from_secs(60));
    let (status, rest) = writer.finish(Duration::from_secs(60));
    assert!(
        status.success(),
        "writer: {status}, output {stop:?} {rest:?}"
    );
    (stop, read_acked(acked_path))
}

/// Returns the number of complete lines in the acknowledgement list, after checking that
/// they are the ids 0, 1, 2, ... in order.
pub fn read_acked(path: &Path) -> u64 {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("read {path:?}: {e}"),
    };
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let mut count = 0;
    for line in complete.lines() {
        assert_eq!(
            line,
            count.to_string(),
            "acknowledgement list out of sequence"
        );
        count += 1;
    }
    count
}

/// Returns the number of records that every fsync up to now covered, from the list
/// [`start_with_fsync`] keeps next to `acked_path`.
pub fn read_synced(acked_path: &Path) -> u64 {
    let mut name = acked_path.as_os_str().to_owned();
    name.push(".synced");
    let path = std::path::PathBuf::from(name);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => panic!("read {path:?}: {e}"),
    };
    let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    complete
        .lines()
        .last()
        .map_or(0, |line| line.parse().expect("fsync list holds numbers"))
}

/// Returns how many of the acknowledged records `0..acked` are missing from the
/// `dataK.log` files in `dir`. A missing file counts all its records as lost; a damaged
/// record panics with its position.
pub fn count_lost(dir: &Path, acked: u64, label: &str) -> u64 {
    let mut lost = 0;
    for k in 0..FILES {
        let path = dir.join(format!("data{k}.log"));
        let found: std::collections::BTreeSet<u64> = match fs::read(&path) {
            Ok(content) => record_ids(&content, k, &path, label).into_iter().collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => panic!("{label}: read {path:?}: {e}"),
        };
        lost += (k..acked)
            .step_by(FILES as usize)
            .filter(|id| !found.contains(id))
            .count() as u64;
    }
    lost
}

/// Asserts that each `dataK.log` in `dir` contains only whole, valid records and exactly the
/// acknowledged ids for that file in order, plus at most the one record whose write was in
/// flight at the kill (id `acked`).
pub fn assert_acked_records(dir: &Path, acked: u64, label: &str) {
    for k in 0..FILES {
        let path = dir.join(format!("data{k}.log"));
        let content = fs::read(&path).unwrap_or_else(|e| panic!("{label}: read {path:?}: {e}"));
        let ids = record_ids(&content, k, &path, label);
        let expected: Vec<u64> = (k..acked).step_by(FILES as usize).collect();
        let mut with_in_flight = expected.clone();
        if acked % FILES == k {
            with_in_flight.push(acked);
        }
        assert!(
            ids == expected || ids == with_in_flight,
            "{label}: {path:?} holds {} records, expected the {} acknowledged ones for this \
             file in order (first mismatch at index {:?})",
            ids.len(),
            expected.len(),
            ids.iter().zip(&expected).position(|(a, b)| a != b)
        );
    }
}

/// Returns the ids of the records in the content of `dataK.log`, in file order. Panics on a
/// partial or damaged record.
fn record_ids(content: &[u8], file: u64, path: &Path, label: &str) -> Vec<u64> {
    assert_eq!(
        content.len() % RECORD_BYTES,
        0,
        "{label}: {path:?} ends in a partial record"
    );
    content
        .chunks(RECORD_BYTES)
        .enumerate()
        .map(|(n, record)| {
            parse_record(record, file)
                .unwrap_or_else(|e| panic!("{label}: {path:?} record {n}: {e}"))
        })
        .collect()
}

/// Checks one record's layout and checksum and returns its id.
fn parse_record(record: &[u8], file: u64) -> Result<u64, String> {
    let shown = String::from_utf8_lossy(record);
    let (body, tail) = record.split_at(BODY_BYTES);
    if tail.last() != Some(&b'\n') {
        return Err(format!("no newline: {shown:?}"));
    }
    let expected = &sha256_hex(body)[..16];
    if &tail[..16] != expected.as_bytes() {
        return Err(format!("checksum mismatch: {shown:?}"));
    }
    let body = std::str::from_utf8(body).map_err(|_| format!("not UTF-8: {shown:?}"))?;
    let fields: Vec<&str> = body.split(' ').collect();
    let ["rec", id, "file", k, _] = fields.as_slice() else {
        return Err(format!("bad layout: {shown:?}"));
    };
    if *k != file.to_string() {
        return Err(format!("record for file {k} in file {file}: {shown:?}"));
    }
    id.parse().map_err(|_| format!("bad id: {shown:?}"))
}
