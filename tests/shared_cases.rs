//! Runs the reproduction cases of `../shared/cases` (public bug reports about logs on FUSE and
//! network filesystems, each with its expected output) on a logmirror mount in both modes,
//! then checks that the mirror equals the backing tree. The cases live outside this
//! repository, so the test prints why and passes without checking when they are absent.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{Mode, Mount, TestDirs, assert_mirrors_match};

/// Time allowed for the whole set of cases; about 15 s async and 90 s sync on 2 cores.
const RUN_TIMEOUT: Duration = Duration::from_secs(1200);

fn run_all_script() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/cases/run-all.sh");
    script.exists().then_some(script)
}

#[test]
fn shared_cases_async() {
    shared_cases(Mode::Async);
}

#[test]
fn shared_cases_sync() {
    shared_cases(Mode::Sync);
}

fn shared_cases(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let Some(script) = run_all_script() else {
        eprintln!("SKIP: ../shared/cases/run-all.sh is not present next to this repository");
        return;
    };
    let dirs = TestDirs::new(1);
    // Some cases drop to uid 65534, which must be able to reach the mount point.
    std::fs::set_permissions(&dirs.root, std::fs::Permissions::from_mode(0o755))
        .expect("chmod test root");
    let mount = Mount::new(&dirs, mode);

    let out = common::run(
        Command::new("bash").arg(&script).arg(&dirs.mnt),
        RUN_TIMEOUT,
    );
    let last_line = out.stdout.lines().last().unwrap_or("").to_string();
    assert!(
        out.code() == 0,
        "run-all.sh failed in {mode:?} mode (exit {}):\n{}\n{}",
        out.code(),
        out.stdout,
        out.stderr
    );
    assert!(
        last_line.ends_with(" 0 failed"),
        "unexpected summary: {last_line}"
    );

    assert_mirrors_match(&mount);
}
