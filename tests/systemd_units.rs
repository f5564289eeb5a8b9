//! The unit files in systemd/ pass `systemd-analyze verify` without a warning. The units are
//! copied into a temporary directory with ExecStart pointing at the built binary, because
//! verify rejects a command that does not exist, and the template is verified as the
//! instance `logmirror@var-log-app.service`.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::{COMMAND_TIMEOUT, CmdOutput, bin, path_str, run};

const INSTALLED_BINARY: &str = "/usr/local/bin/logmirror";

/// Returns whether systemd-analyze can run here, printing why not when it cannot.
fn have_systemd_analyze() -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        eprintln!("SKIP: systemd-analyze is not installed; the unit files are not verified");
    }
    found
}

fn verify(unit: &Path) -> CmdOutput {
    run(
        Command::new("systemd-analyze").arg("verify").arg(unit),
        COMMAND_TIMEOUT,
    )
}

/// Asserts that verify exits 0 and prints nothing: unknown keys are only warnings.
fn assert_clean(unit: &Path) {
    let out = verify(unit);
    assert_eq!(out.code(), 0, "systemd-analyze verify {unit:?}: {out}");
    assert_eq!(out.stdout, "", "systemd-analyze verify {unit:?}: {out}");
    assert_eq!(out.stderr, "", "systemd-analyze verify {unit:?}: {out}");
}

/// Copies systemd/ into a temporary directory with ExecStart pointing at the built binary.
fn copy_units() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let dir = tempfile::tempdir().expect("create temporary directory");
    let template = fs::read_to_string(source.join("logmirror@.service")).expect("read template");
    assert!(template.contains(&format!("ExecStart={INSTALLED_BINARY} mount ")));
    let template = template.replace(INSTALLED_BINARY, path_str(bin()));
    fs::write(dir.path().join("logmirror@.service"), template).expect("write template");
    std::os::unix::fs::symlink(
        "logmirror@.service",
        dir.path().join("logmirror@var-log-app.service"),
    )
    .expect("link the instance");
    fs::copy(
        source.join("var-log-app.mount"),
        dir.path().join("var-log-app.mount"),
    )
    .expect("copy mount unit");
    let dropin = dir.path().join("example-app.service.d");
    fs::create_dir(&dropin).expect("create drop-in directory");
    fs::copy(
        source.join("example-app.service.d/requires-logmirror.conf"),
        dropin.join("requires-logmirror.conf"),
    )
    .expect("copy drop-in");
    // The application the drop-in extends.
    fs::write(
        dir.path().join("example-app.service"),
        "[Unit]\nDescription=application writing into /var/log/app\n\n\
         [Service]\nExecStart=/bin/true\n",
    )
    .expect("write example application unit");
    dir
}

#[test]
fn units_verify_clean() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = copy_units();
    for unit in [
        "logmirror@var-log-app.service",
        "var-log-app.mount",
        "example-app.service",
    ] {
        assert_clean(&dir.path().join(unit));
    }
}

/// The check above can fail: verify reports a bad key in the drop-in and a missing binary.
#[test]
fn verify_reports_broken_units() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = copy_units();
    let dropin = dir
        .path()
        .join("example-app.service.d/requires-logmirror.conf");
    let mut text = fs::read_to_string(&dropin).expect("read drop-in");
    text.push_str("RequiresMountFor=/var/log/app\n");
    fs::write(&dropin, text).expect("write drop-in");
    let out = verify(&dir.path().join("example-app.service"));
    assert!(
        out.stderr.contains("Unknown key 'RequiresMountFor'"),
        "{out}"
    );

    let template = dir.path().join("logmirror@.service");
    let text = fs::read_to_string(&template).expect("read template");
    fs::write(
        &template,
        text.replace(path_str(bin()), "/nonexistent/logmirror"),
    )
    .expect("write template");
    let out = verify(&dir.path().join("logmirror@var-log-app.service"));
    assert_ne!(out.code(), 0, "{out}");
    assert!(out.stderr.contains("/nonexistent/logmirror"), "{out}");
}
