//! Eight processes append to one file with `O_APPEND` at the same time, one `write(2)` per
//! line, the way several workers share one log. No line may be lost, torn or reordered
//! within its writer, and the mirror must contain the same interleaving as the backing file.

mod common;

use common::{Mode, Mount, TestDirs, assert_mirrors_match, path_str};

const WRITERS: usize = 8;
const LINES_PER_WRITER: usize = 5000;
const LINE_BYTES: usize = 64;

/// Forks the writers, releases them together by closing a pipe they all block on, and
/// exits non-zero if any writer failed or wrote short.
const WRITERS_SCRIPT: &str = r#"
import os, sys
path, writers, lines, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gate_r, gate_w = os.pipe()
pids = []
for w in range(writers):
    pid = os.fork()
    if pid == 0:
        os.close(gate_w)
        os.read(gate_r, 1)
        code = 0
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            for i in range(lines):
                head = "writer %d line %06d " % (w, i)
                line = (head + "." * (width - 1 - len(head)) + "\n").encode()
                if os.write(fd, line) != len(line):
                    code = 3
                    break
            os.close(fd)
        except OSError as e:
            print("writer", w, "failed:", e, file=sys.stderr)
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

fn expected_line(writer: usize, i: usize) -> String {
    let head = format!("writer {writer} line {i:06} ");
    format!("{head}{}\n", ".".repeat(LINE_BYTES - 1 - head.len()))
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
        WRITERS_SCRIPT,
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

/// Returns the writer number of a well-formed 64-byte line.
fn parse_writer(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("writer ")?;
    let writer: usize = rest.split(' ').next()?.parse().ok()?;
    let i: usize = rest.split(' ').nth(2)?.parse().ok()?;
    (writer < WRITERS && i < LINES_PER_WRITER && text == expected_line(writer, i)).then_some(writer)
}
