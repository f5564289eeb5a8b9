//! Appends and writes past the end of a file, through the mount and on a plain directory:
//! O_APPEND from many processes, appends after another handle truncated the file, holes
//! that read as zeros, and offsets beyond 4 GiB whose hole stays unallocated on the
//! backing directory and on the mirror.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::thread;

use common::semantics::{lstat, with_case};
use common::{Mode, path_str};

both_modes!(
    append_many_processes,
    append_large_records,
    append_after_truncate,
    write_past_eof_hole,
    write_beyond_4gib
);

const WRITERS: usize = 8;
const LINES_PER_WRITER: usize = 400;

/// Appends `count` lines to `path` with one write(2) each, through an O_APPEND descriptor.
/// Line i of writer w is `w=W i=I ` padded with a letter to `40 + (i * 37) % 3000` bytes,
/// so that lines of many sizes race with each other.
const APPENDER: &str = r#"
import os, sys
path, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(count):
    head = "w=%d i=%d " % (writer, i)
    size = 40 + (i * 37) % 3000
    line = (head + chr(ord("a") + writer) * (size - len(head) - 1) + "\n").encode()
    assert os.write(fd, line) == len(line)
os.close(fd)
"#;

fn expected_line(writer: usize, i: usize) -> String {
    let head = format!("w={writer} i={i} ");
    let size = 40 + (i * 37) % 3000;
    let letter = (b'a' + writer as u8) as char;
    format!(
        "{head}{}\n",
        letter.to_string().repeat(size - head.len() - 1)
    )
}

fn append_many_processes(mode: Mode) {
    with_case(mode, |case| {
        let path = case.in_mount("app.log");
        thread::scope(|scope| {
            for writer in 0..WRITERS {
                let path = &path;
                scope.spawn(move || {
                    let out = common::python(
                        APPENDER,
                        &[
                            path_str(path),
                            &writer.to_string(),
                            &LINES_PER_WRITER.to_string(),
                        ],
                    );
                    out.assert_success("appender");
                });
            }
        });

        let data = fs::read_to_string(&path).expect("read the log through the mount");
        let expected_bytes: usize = (0..WRITERS)
            .flat_map(|w| (0..LINES_PER_WRITER).map(move |i| expected_line(w, i).len()))
            .sum();
        assert_eq!(data.len(), expected_bytes);
        let mut next = [0usize; WRITERS];
        for line in data.split_inclusive('\n') {
            let writer: usize = line
                .strip_prefix("w=")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|w| w.parse().ok())
                .unwrap_or_else(|| panic!("torn line: {line:?}"));
            assert_eq!(
                line,
                expected_line(writer, next[writer]),
                "line of writer {writer}"
            );
            next[writer] += 1;
        }
        assert_eq!(next, [LINES_PER_WRITER; WRITERS]);
        assert_eq!(lstat(&path).size(), expected_bytes as u64);
    });
}

/// Appends `count` records of `size` bytes, each one write(2) of the writer's digit, through
/// an O_APPEND descriptor. A record larger than the 1 MiB max_write reaches the daemon as
/// several requests.
const LARGE_APPENDER: &str = r#"
import os, sys
path, writer, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
for i in range(count):
    record = (b"%d" % writer) * size
    assert os.write(fd, record) == len(record)
os.close(fd)
"#;

fn append_large_records(mode: Mode) {
    const LARGE_WRITERS: usize = 4;
    const RECORDS: usize = 4;
    const RECORD_BYTES: usize = 2_500_000;
    with_case(mode, |case| {
        let path = case.in_mount("large.log");
        thread::scope(|scope| {
            for writer in 1..=LARGE_WRITERS {
                let path = &path;
                scope.spawn(move || {
                    let out = common::python(
                        LARGE_APPENDER,
                        &[
                            path_str(path),
                            &writer.to_string(),
                            &RECORDS.to_string(),
                            &RECORD_BYTES.to_string(),
                        ],
                    );
                    out.assert_success("large appender");
                });
            }
        });

        let data = fs::read(&path).expect("read through the mount");
        assert_eq!(data.len(), LARGE_WRITERS * RECORDS * RECORD_BYTES);
        let mut records = [0usize; LARGE_WRITERS];
        for record in data.chunks(RECORD_BYTES) {
            let digit = record[0];
            assert!(
                record.iter().all(|&b| b == digit),
                "a record at its place holds bytes of two writers"
            );
            records[usize::from(digit - b'1')] += 1;
        }
        assert_eq!(records, [RECORDS; LARGE_WRITERS]);
    });
}

/// Three handles on one file, as a logger, a copytruncate-style rotator and a writer that
/// keeps its own offset see it. Returns the content after each step.
fn truncate_under_appender(root: &Path) -> Vec<Vec<u8>> {
    let path = root.join("shared.log");
    let mut appender = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(&path)
        .expect("open O_APPEND");
    let mut positioned = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open O_WRONLY");
    let mut steps = Vec::new();

    appender
        .write_all(&b"first line\n".repeat(10))
        .expect("append");
    positioned
        .write_all(&[b'p'; 120])
        .expect("write at own offset");
    steps.push(fs::read(&path).expect("read"));

    // open(O_TRUNC) by another process-like handle, as logrotate copytruncate does.
    let truncator = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open O_TRUNC");
    appender.write_all(b"after truncate\n").expect("append");
    steps.push(fs::read(&path).expect("read"));

    truncator.set_len(5).expect("ftruncate to 5");
    appender.write_all(b"X\n").expect("append");
    steps.push(fs::read(&path).expect("read"));

    // The positioned handle still writes at offset 120, leaving a hole.
    positioned
        .write_all(b"late\n")
        .expect("write at own offset");
    steps.push(fs::read(&path).expect("read"));

    truncator.set_len(200).expect("extend to 200");
    appender.write_all(b"end\n").expect("append");
    steps.push(fs::read(&path).expect("read"));
    steps
}

fn append_after_truncate(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(truncate_under_appender);
        // The positioned handle, at offset 0, overwrote the ten appended lines.
        let mut expected = vec![vec![b'p'; 120]];
        expected.push(b"after truncate\n".to_vec());
        expected.push(b"afterX\n".to_vec());
        let mut late = b"afterX\n".to_vec();
        late.resize(120, 0);
        late.extend_from_slice(b"late\n");
        expected.push(late.clone());
        late.resize(200, 0);
        late.extend_from_slice(b"end\n");
        expected.push(late);
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Writes one byte at 0 and `tail` at `offset`; returns the file's stat.
fn write_with_hole(path: &Path, offset: u64, tail: &[u8]) -> fs::Metadata {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .expect("create");
    file.write_all_at(b"A", 0).expect("write at 0");
    file.write_all_at(tail, offset).expect("write past the end");
    file.sync_all().expect("fsync");
    file.metadata().expect("fstat")
}

fn write_past_eof_hole(mode: Mode) {
    const OFFSET: u64 = 3 * (1 << 20) + 123;
    with_case(mode, |case| {
        let (mounted, plain) =
            case.on_both(|root| write_with_hole(&root.join("holes.log"), OFFSET, b"tail\n"));
        assert_eq!(mounted.size(), OFFSET + 5);
        assert_eq!(plain.size(), OFFSET + 5);
        assert_eq!(
            mounted.blocks(),
            plain.blocks(),
            "st_blocks, mount and plain"
        );
        let backing = lstat(&case.in_backing("holes.log"));
        assert_eq!(
            backing.blocks(),
            plain.blocks(),
            "st_blocks, backing and plain"
        );

        let data = fs::read(case.in_mount("holes.log")).expect("read through the mount");
        let mut expected = vec![0u8; OFFSET as usize + 5];
        expected[0] = b'A';
        expected[OFFSET as usize..].copy_from_slice(b"tail\n");
        assert!(data == expected, "content read through the mount differs");

        case.sync();
        let mirrored = lstat(&case.in_mirror("holes.log"));
        assert_eq!(mirrored.size(), OFFSET + 5);
        assert_eq!(
            mirrored.blocks(),
            plain.blocks(),
            "st_blocks, mirror and plain"
        );
        assert!(fs::read(case.in_mirror("holes.log")).expect("read mirror") == expected);
    });
}

fn write_beyond_4gib(mode: Mode) {
    const OFFSET: u64 = 5 * (1 << 30) + 10;
    let tail = vec![b'z'; 4096];
    with_case(mode, |case| {
        let (mounted, plain) =
            case.on_both(|root| write_with_hole(&root.join("big.log"), OFFSET, &tail));
        assert_eq!(mounted.size(), OFFSET + 4096);
        assert_eq!(plain.size(), OFFSET + 4096);
        assert_eq!(
            mounted.blocks(),
            plain.blocks(),
            "st_blocks, mount and plain"
        );
        // One block at 0 and two for the unaligned tail, plus extent tree blocks at most.
        assert!(plain.blocks() <= 64, "plain st_blocks {}", plain.blocks());
        let backing = lstat(&case.in_backing("big.log"));
        assert_eq!(
            backing.blocks(),
            plain.blocks(),
            "st_blocks, backing and plain"
        );

        // An O_APPEND write lands at the end, beyond 4 GiB.
        let (appended, _) = case.on_both(|root| {
            let mut file = OpenOptions::new()
                .append(true)
                .open(root.join("big.log"))
                .expect("open O_APPEND");
            file.write_all(b"appended\n").expect("append");
            file.metadata().expect("fstat").size()
        });
        assert_eq!(appended, OFFSET + 4096 + 9);

        let file = fs::File::open(case.in_mount("big.log")).expect("open through the mount");
        let mut buf = vec![1u8; 4096 + 9];
        file.read_exact_at(&mut buf, OFFSET).expect("read the tail");
        assert_eq!(&buf[..4096], &tail[..]);
        assert_eq!(&buf[4096..], b"appended\n");
        let mut hole = vec![1u8; 8192];
        file.read_exact_at(&mut hole, 1 << 32)
            .expect("read the hole at 4 GiB");
        assert!(
            hole.iter().all(|&b| b == 0),
            "the hole at 4 GiB reads as zeros"
        );

        case.sync();
        let mirrored = lstat(&case.in_mirror("big.log"));
        assert_eq!(mirrored.size(), OFFSET + 4096 + 9);
        let plain_after = lstat(&case.in_plain("big.log"));
        assert_eq!(
            mirrored.blocks(),
            plain_after.blocks(),
            "st_blocks, mirror and plain"
        );
        let copy = fs::File::open(case.in_mirror("big.log")).expect("open mirror copy");
        let mut buf = vec![1u8; 4096 + 9];
        copy.read_exact_at(&mut buf, OFFSET)
            .expect("read the mirror's tail");
        assert_eq!(&buf[..4096], &tail[..]);
        assert_eq!(&buf[4096..], b"appended\n");
    });
}
