//! `scripts/install` into a staging tree (`DESTDIR`) with another prefix: every file lands
//! where the script documents, with its mode, and the helper and the template service name
//! the binary under the prefix.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{COMMAND_TIMEOUT, CmdOutput, bin, file_sha256, read_text, run};

fn install(destdir: &Path, args: &[&str]) -> CmdOutput {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install");
    run(
        Command::new(script)
            .args(args)
            .env("DESTDIR", destdir)
            .env_remove("CARGO_TARGET_DIR"),
        COMMAND_TIMEOUT,
    )
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path:?}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_into_destdir_with_prefix() {
    let staging = tempfile::tempdir().expect("create staging directory");
    let root = staging.path();
    let binary = bin().to_str().expect("UTF-8 path");
    let out = install(root, &["--prefix", "/opt/logmirror", "--binary", binary]);
    out.assert_success("scripts/install");

    let installed = root.join("opt/logmirror/bin/logmirror");
    assert_eq!(file_sha256(&installed), file_sha256(bin()));
    assert_eq!(mode(&installed), 0o755);

    let helper = root.join("sbin/mount.logmirror");
    assert_eq!(mode(&helper), 0o755);
    let text = read_text(&helper);
    assert!(
        text.contains("\nbin=${LOGMIRROR_BIN:-/opt/logmirror/bin/logmirror}\n"),
        "{text}"
    );

    let units = root.join("etc/systemd/system");
    let template = read_text(&units.join("logmirror@.service"));
    assert!(
        template.contains("\nExecStart=/opt/logmirror/bin/logmirror mount ${BACKING} %f -f"),
        "{template}"
    );
    assert!(!template.contains("/usr/local/bin"), "{template}");
    assert_eq!(mode(&units.join("logmirror@.service")), 0o644);
    assert_eq!(
        read_text(&units.join("var-log-app.mount.example")),
        read_text(&Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/var-log-app.mount"))
    );
    assert!(
        units
            .join("example-app.service.d/requires-logmirror.conf.example")
            .is_file()
    );

    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let share = root.join("opt/logmirror/share");
    let installed_docs = [
        ("docs/man/logmirror.1", "man/man1/logmirror.1"),
        ("docs/man/logmirror-mount.1", "man/man1/logmirror-mount.1"),
        (
            "completions/logmirror.bash",
            "bash-completion/completions/logmirror",
        ),
        ("completions/_logmirror", "zsh/site-functions/_logmirror"),
        (
            "completions/logmirror.fish",
            "fish/vendor_completions.d/logmirror.fish",
        ),
    ];
    for (source, target) in installed_docs {
        let target = share.join(target);
        assert_eq!(file_sha256(&target), file_sha256(&repo.join(source)));
        assert_eq!(mode(&target), 0o644, "{target:?}");
    }
}

#[test]
fn install_rejects_unknown_argument() {
    let staging = tempfile::tempdir().expect("create staging directory");
    let out = install(staging.path(), &["--prefx", "/opt"]);
    assert_eq!(out.code(), 2, "{out}");
    assert_eq!(
        out.stderr,
        "install: unknown argument --prefx; see scripts/install --help\n"
    );
    assert_eq!(fs::read_dir(staging.path()).expect("list").count(), 0);
}
