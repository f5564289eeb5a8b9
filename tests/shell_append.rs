//! A shell loop appending with `>>`: one open, write and close per line, the way scripts and
//! cron jobs write logs. Also checks that the state directory is hidden from the mount.

mod common;

use std::fs;
use std::io::ErrorKind;
use std::process::Command;

use common::{COMMAND_TIMEOUT, Mode, Mount, STATE_DIR, TestDirs, assert_mirrors_match};

const LINES: usize = 2000;

const APPEND_LOOP: &str = r#"
set -e
mkdir -p jobs/nightly
for i in $(seq 1 "$1"); do
    echo "line $i" >> shell.log
    echo "job $i done" >> jobs/nightly/run.log
done
"#;

#[test]
fn shell_append_sync() {
    shell_append(Mode::Sync);
}

#[test]
fn shell_append_async() {
    shell_append(Mode::Async);
}

fn shell_append(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);

    let out = common::run(
        Command::new("sh")
            .arg("-c")
            .arg(APPEND_LOOP)
            .arg("sh")
            .arg(LINES.to_string())
            .current_dir(&dirs.mnt),
        COMMAND_TIMEOUT,
    );
    out.assert_success("shell append loop");

    let expected: String = (1..=LINES).map(|i| format!("line {i}\n")).collect();
    let content = common::read_text(&dirs.mnt.join("shell.log"));
    assert_eq!(content.len(), expected.len(), "size of shell.log");
    assert!(content == expected, "shell.log is not lines 1..={LINES}");

    let expected: String = (1..=LINES).map(|i| format!("job {i} done\n")).collect();
    let content = common::read_text(&dirs.mnt.join("jobs/nightly/run.log"));
    assert_eq!(
        content.len(),
        expected.len(),
        "size of jobs/nightly/run.log"
    );
    assert!(content == expected, "run.log is not jobs 1..={LINES}");

    assert_eq!(common::list_dir(&dirs.mnt), ["jobs", "shell.log"]);
    let hidden = fs::symlink_metadata(dirs.mnt.join(STATE_DIR));
    assert_eq!(
        hidden.map_err(|e| e.kind()).err(),
        Some(ErrorKind::NotFound),
        "{STATE_DIR} must not be visible through the mount"
    );

    assert_mirrors_match(&mount);
}
