//! Eight processes append to one file with `O_APPEND` at the same time, one `write(2)` per
//! line, the way several workers share one log. No line may be lost, torn or reordered
//! within its writer, and the mirror must contain the same interleaving as the backing file.
//! Eight processes that append to a file each, beside a ninth that writes overlapping ranges
//! through two hard-linked names, interleave writes to many files in each mirror batch, which
//! the directory mirror merges per inode.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Mode, Mount, TestDirs, assert_mirrors_match, path_str};

const WRITERS: usize = 8;
const LINES_PER_WRITER: usize = 5000;
const LINE_BYTES: usize = 64;

/// Python helpers of both cases. `append_lines` writes numbered lines of `width` bytes to
/// `path` with `O_APPEND`, one `write(2)` per line. `run_gated` forks `count` processes that
/// run `work(n)` once a pipe they all block on closes, so that they start together, and exits
/// non-zero if any of them failed or wrote short.
const GATED_RUN: &str = r#"
import os, sys

def append_lines(path, w, lines, width, word):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(lines):
        head = "writer %d %s %06d " % (w, word, i)
        line = (head + "." * (width - 1 - len(head)) + "\n").encode()
        if os.write(fd, line) != len(line):
            return 3
    os.close(fd)
    return 0

def run_gated(count, work):
    gate_r, gate_w = os.pipe()
    pids = []
    for n in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(gate_w)
            os.read(gate_r, 1)
            try:
                code = work(n)
            except OSError as e:
                print("writer", n, "failed:", e, file=sys.stderr)
                code = 4
            os._exit(code)
        pids.append(pid)
    os.close(gate_r)
    os.close(gate_w)
    failed = 0
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failed += 1
    sys.exit(1 if failed else 0)
"#;

/// Runs the writers, all appending to one file.
const WRITERS_SCRIPT: &str = r#"
path, writers, lines, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
run_gated(writers, lambda w: append_lines(path, w, lines, width, "line"))
"#;

/// Records per appender of the many-files case, and their size in bytes.
const RECORDS_PER_FILE: usize = 1000;
const RECORD_BYTES: usize = 1024;
/// Rounds of the hard-linked pair: round `i` writes `PAIR_STEP` bytes at `i * PAIR_STEP`
/// through `pair-a`, then as many at half a step further through `pair-b`, so each write
/// overlaps the one before it.
const PAIR_ROUNDS: usize = 2000;
const PAIR_STEP: usize = 1000;

/// Creates `pair-a` and its hard link `pair-b` in DIR, then runs WRITERS appenders, each to
/// its own `writer-N.log`, and one process that writes the pair's rounds.
const MANY_FILES_SCRIPT: &str = r#"
root, writers, records, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rounds, step = int(sys.argv[5]), int(sys.argv[6])
pair_a, pair_b = os.path.join(root, "pair-a"), os.path.join(root, "pair-b")
os.close(os.open(pair_a, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
os.link(pair_a, pair_b)

def pair():
    fa = os.open(pair_a, os.O_WRONLY)
    fb = os.open(pair_b, os.O_WRONLY)
    for i in range(rounds):
        a = bytes([ord("a") + i % 26]) * step
        b = bytes([ord("A") + i % 26]) * step
        if os.pwrite(fa, a, i * step) != step or os.pwrite(fb, b, i * step + step // 2) != step:
            return 3
    os.close(fa)
    os.close(fb)
    return 0

def work(w):
    if w == writers:
        return pair()
    return append_lines(os.path.join(root, "writer-%d.log" % w), w, records, width, "record")

run_gated(writers + 1, work)
"#;

fn expected_line(writer: usize, i: usize) -> String {
    numbered_line("line", writer, i, LINE_BYTES)
}

/// Returns line `i` of `writer` as `append_lines` in [`GATED_RUN`] writes it.
fn numbered_line(word: &str, writer: usize, i: usize, width: usize) -> String {
    let head = format!("writer {writer} {word} {i:06} ");
    format!("{head}{}\n", ".".repeat(width - 1 - head.len()))
}

#[test]
fn concurrent_append_sync() {
    concurrent_append(Mode::Sync);
}

#[test]
fn concurrent_append_async() {
    concurrent_append(Mode::Async);
}

fn concurrent_append(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    let path = dirs.mnt.join("shared.log");

    common::python_ok(
        &format!("{GATED_RUN}{WRITERS_SCRIPT}"),
        &[
            path_str(&path),
            &WRITERS.to_string(),
            &LINES_PER_WRITER.to_string(),
            &LINE_BYTES.to_string(),
        ],
    );

    let content = std::fs::read(&path).expect("read shared.log through the mount");
    assert_eq!(content.len(), WRITERS * LINES_PER_WRITER * LINE_BYTES);
    let mut next = [0usize; WRITERS];
    let mut bad_lines = Vec::new();
    let mut out_of_order = Vec::new();
    for (n, line) in content.chunks(LINE_BYTES).enumerate() {
        let Some(writer) = parse_writer(line) else {
            bad_lines.push(n);
            continue;
        };
        let i = next[writer];
        if line != expected_line(writer, i).as_bytes() {
            out_of_order.push((n, writer, i));
        }
        next[writer] += 1;
    }
    bad_lines.truncate(20);
    assert!(
        bad_lines.is_empty(),
        "torn or foreign lines, first at {bad_lines:?}"
    );
    out_of_order.truncate(20);
    assert!(
        out_of_order.is_empty(),
        "lines out of per-writer order, first (line, writer, expected index): {out_of_order:?}"
    );
    assert_eq!(next, [LINES_PER_WRITER; WRITERS]);

    assert_mirrors_match(&mount);
}

#[test]
fn many_files_and_hard_link_sync() {
    many_files_and_hard_link(Mode::Sync);
}

#[test]
fn many_files_and_hard_link_async() {
    many_files_and_hard_link(Mode::Async);
}

fn many_files_and_hard_link(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);

    common::python_ok(
        &format!("{GATED_RUN}{MANY_FILES_SCRIPT}"),
        &[
            path_str(&dirs.mnt),
            &WRITERS.to_string(),
            &RECORDS_PER_FILE.to_string(),
            &RECORD_BYTES.to_string(),
            &PAIR_ROUNDS.to_string(),
            &PAIR_STEP.to_string(),
        ],
    );

    for writer in 0..WRITERS {
        let expected: String = (0..RECORDS_PER_FILE)
            .map(|i| numbered_line("record", writer, i, RECORD_BYTES))
            .collect();
        let path = dirs.mnt.join(format!("writer-{writer}.log"));
        let content = std::fs::read(&path).expect("read a writer's file through the mount");
        assert_eq!(content.len(), expected.len(), "size of {path:?}");
        assert!(content == expected.as_bytes(), "content of {path:?}");
    }
    let expected_pair = expected_pair();
    for name in ["pair-a", "pair-b"] {
        let content = std::fs::read(dirs.mnt.join(name)).expect("read the pair through the mount");
        assert_eq!(content.len(), expected_pair.len(), "size of {name}");
        assert!(content == expected_pair, "content of {name}");
    }

    let tree = assert_mirrors_match(&mount);
    assert_eq!(
        tree.entries.get("pair-a"),
        Some(&common::sha256_hex(&expected_pair))
    );
    let inode = |name: &str| {
        let path = dirs.mirrors[0].join(name);
        std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {path:?}: {e}"))
            .ino()
    };
    assert_eq!(inode("pair-a"), inode("pair-b"), "mirror pair is one inode");
}

/// Returns the pair's content after every round: each step contains the first half of its
/// `pair-a` write, then the first half of its `pair-b` write, which the next round's
/// `pair-a` write cut short; the last `pair-b` write leaves its second half at the end.
fn expected_pair() -> Vec<u8> {
    let mut content = vec![0u8; PAIR_ROUNDS * PAIR_STEP + PAIR_STEP / 2];
    for i in 0..PAIR_ROUNDS {
        let start = i * PAIR_STEP;
        content[start..start + PAIR_STEP].fill(b'a' + (i % 26) as u8);
        let start = start + PAIR_STEP / 2;
        content[start..start + PAIR_STEP].fill(b'A' + (i % 26) as u8);
    }
    content
}

/// Returns the writer number of a well-formed 64-byte line.
fn parse_writer(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("writer ")?;
    let writer: usize = rest.split(' ').next()?.parse().ok()?;
    let i: usize = rest.split(' ').nth(2)?.parse().ok()?;
    (writer < WRITERS && i < LINES_PER_WRITER && text == expected_line(writer, i)).then_some(writer)
}
