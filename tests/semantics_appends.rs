//! Appends and writes past the end of a file, through the mount and on a plain directory:
//! O_APPEND from many processes, appends after another handle truncated the file, holes
//! that read as zeros, and offsets beyond 4 GiB whose hole stays unallocated on the
//! backing directory and on the mirror. Also the other ways loggers add data: O_APPEND
//! set later with F_SETFL, writev, pwritev, sendfile and splice from a pipe.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
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
    write_beyond_4gib,
    append_other_syscalls
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

fn check_len(what: &str, ret: isize) -> usize {
    assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
    ret as usize
}

/// Returns the file offset of `fd` (lseek SEEK_CUR).
fn position(fd: &impl AsRawFd) -> i64 {
    // SAFETY: lseek on an open descriptor.
    unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_CUR) }
}

/// Adds data to `root/other.log` with F_SETFL O_APPEND, writev, pwritev (which appends on
/// an O_APPEND descriptor), then with O_APPEND cleared, sendfile and splice. Returns the byte counts each call
/// reported, the offsets after the F_SETFL steps, and the final content.
fn append_by_other_calls(root: &Path) -> (Vec<usize>, Vec<i64>, Vec<u8>) {
    let path = root.join("other.log");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    let fd = file.as_raw_fd();
    let mut counts = Vec::new();
    let mut offsets = Vec::new();
    (&file).write_all(b"0123456789").expect("write");
    // SAFETY: fcntl and lseek on an open descriptor.
    unsafe {
        libc::lseek(fd, 2, libc::SEEK_SET);
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND), 0);
    }
    (&file)
        .write_all(b"<setfl append>\n")
        .expect("write with O_APPEND set");
    offsets.push(position(&file));

    let parts: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("part {i:03}|").into_bytes())
        .collect();
    let iovecs: Vec<libc::iovec> = parts
        .iter()
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: the iovecs point into `parts`, which outlives both calls.
    counts.push(check_len("writev", unsafe {
        libc::writev(fd, iovecs.as_ptr(), 200)
    }));
    // SAFETY: as for writev, with the last 100 iovecs.
    counts.push(check_len("pwritev", unsafe {
        libc::pwritev(fd, iovecs[200..].as_ptr(), 100, 0)
    }));

    // sendfile and splice reject an O_APPEND destination (EINVAL), so clear it and write at
    // the end through the file offset.
    // SAFETY: fcntl and lseek on an open descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        assert_eq!(libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_APPEND), 0);
        libc::lseek(fd, 0, libc::SEEK_END);
    }
    fs::write(root.join("source.log"), b"sent by sendfile\n".repeat(100)).expect("write source");
    let source = fs::File::open(root.join("source.log")).expect("open source");
    let mut source_offset: libc::off_t = 17;
    // SAFETY: open descriptors and a valid offset pointer.
    counts.push(check_len("sendfile", unsafe {
        libc::sendfile(fd, source.as_raw_fd(), &mut source_offset, 1000)
    }));
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let piped = b"through a pipe\n".repeat(200);
    // SAFETY: writes `piped` into the pipe, then splices it into the file, then closes both
    // ends. 3000 bytes fit in the pipe buffer, so the write does not block.
    unsafe {
        assert_eq!(
            libc::write(pipe[1], piped.as_ptr().cast(), piped.len()),
            piped.len() as isize
        );
        counts.push(check_len(
            "splice",
            libc::splice(
                pipe[0],
                std::ptr::null_mut(),
                fd,
                std::ptr::null_mut(),
                4096,
                0,
            ),
        ));
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }

    // SAFETY: lseek on an open descriptor.
    unsafe { libc::lseek(fd, 0, libc::SEEK_SET) };
    (&file)
        .write_all(b"X")
        .expect("write after clearing O_APPEND");
    offsets.push(position(&file));
    drop(file);
    (counts, offsets, fs::read(&path).expect("read back"))
}

/// F_SETFL O_APPEND, writev, pwritev, sendfile and splice add the same bytes at the same
/// offsets as on a plain directory, and the mirror gets the same content.
fn append_other_syscalls(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(append_by_other_calls);
        let parts: Vec<u8> = (0..300)
            .flat_map(|i| format!("part {i:03}|").into_bytes())
            .collect();
        let mut expected = b"X123456789<setfl append>\n".to_vec();
        expected.extend_from_slice(&parts);
        expected.extend_from_slice(&b"sent by sendfile\n".repeat(100)[17..1017]);
        expected.extend_from_slice(&b"through a pipe\n".repeat(200));
        assert_eq!(
            plain.0,
            vec![1800, 900, 1000, 3000],
            "counts, plain directory"
        );
        assert_eq!(mounted.0, plain.0, "counts, mount");
        assert_eq!(plain.1, vec![25, 1], "offsets, plain directory");
        assert_eq!(mounted.1, plain.1, "offsets, mount");
        assert!(plain.2 == expected, "content, plain directory");
        assert!(mounted.2 == expected, "content, mount");
        case.sync();
        let copy = fs::read(case.in_mirror("other.log")).expect("read mirror");
        assert!(copy == expected, "content, mirror");
    });
}
