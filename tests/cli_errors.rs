//! Command-line errors: bad mount options and paths must fail before anything is mounted.
//! Each case checks the exit code (`EXIT_USAGE` for invalid options or paths,
//! `EXIT_NOT_SERVED` for a path that no daemon serves) and that stderr names the offending
//! key, value or path.
//!
//! None of these cases needs a working mount, so they run without root as well.

mod common;

use std::path::{Path, PathBuf};

use common::{CmdOutput, EXIT_NOT_SERVED, EXIT_USAGE, TestDirs, path_str};

/// Unmounts the mount point if a failing command mounted it after all, so that a product bug
/// does not leave a mount behind.
struct UnmountIfMounted(PathBuf);

impl Drop for UnmountIfMounted {
    fn drop(&mut self) {
        if common::is_mounted(&self.0) {
            let out = common::fusermount(&["-u"], &self.0);
            if !out.status.success() {
                common::fusermount(&["-u", "-z"], &self.0);
            }
        }
    }
}

/// Runs `logmirror mount BACKING MNT -o OPTION...` and asserts that nothing got mounted.
fn mount_with(backing: &Path, mnt: &Path, options: &[String]) -> CmdOutput {
    let _cleanup = UnmountIfMounted(mnt.to_path_buf());
    let mut args = vec!["mount", path_str(backing), path_str(mnt)];
    for option in options {
        args.push("-o");
        args.push(option);
    }
    let out = common::logmirror(&args);
    assert!(
        !common::is_mounted(mnt),
        "a failed mount left {mnt:?} mounted: {out}"
    );
    out
}

fn assert_fails(out: &CmdOutput, code: i32, needle: &str) {
    assert_eq!(out.code(), code, "exit code: {out}");
    assert!(
        out.stderr.contains(needle),
        "stderr does not name {needle:?}: {out}"
    );
}

#[test]
fn mount_unknown_key() {
    let dirs = TestDirs::new(1);
    let mut options = dirs.mirror_options();
    options[0].push_str(",retention_days=7");
    let out = mount_with(&dirs.backing, &dirs.mnt, &options);
    assert_fails(&out, EXIT_USAGE, "retention_days");
}

#[test]
fn mount_unknown_key_in_second_option() {
    let dirs = TestDirs::new(1);
    let mut options = dirs.mirror_options();
    options.push("compress_level=9".to_string());
    let out = mount_with(&dirs.backing, &dirs.mnt, &options);
    assert_fails(&out, EXIT_USAGE, "compress_level");
}

#[test]
fn mount_invalid_values() {
    let cases = [
        ("mode", "sometimes"),
        ("ack", "most"),
        ("max_backlog", "plenty"),
        ("when_full", "overflow"),
        ("on_mirror_failure", "ignore"),
        ("sync_timeout", "eventually"),
        ("drain_timeout", "never-ending"),
    ];
    for (key, value) in cases {
        let dirs = TestDirs::new(1);
        let mut options = dirs.mirror_options();
        options.push(format!("{key}={value}"));
        let out = mount_with(&dirs.backing, &dirs.mnt, &options);
        assert_eq!(out.code(), EXIT_USAGE, "{key}={value}: {out}");
        assert!(
            out.stderr.contains(value),
            "{key}={value}: stderr lacks the value: {out}"
        );
    }
}

#[test]
fn mount_ack_above_mirror_count() {
    let dirs = TestDirs::new(1);
    let mut options = dirs.mirror_options();
    options.push("mode=sync".to_string());
    options.push("ack=3".to_string());
    let out = mount_with(&dirs.backing, &dirs.mnt, &options);
    assert_fails(&out, EXIT_USAGE, "ack");
}

#[test]
fn mount_missing_backing() {
    let dirs = TestDirs::new(1);
    let missing = dirs.root.join("no-such-backing");
    let out = mount_with(&missing, &dirs.mnt, &dirs.mirror_options());
    assert_fails(&out, EXIT_USAGE, path_str(&missing));
}

#[test]
fn mount_missing_mount_point() {
    let dirs = TestDirs::new(1);
    let missing = dirs.root.join("no-such-mnt");
    let out = mount_with(&dirs.backing, &missing, &dirs.mirror_options());
    assert_fails(&out, EXIT_USAGE, path_str(&missing));
}

#[test]
fn mount_missing_mirror_dir() {
    let dirs = TestDirs::new(1);
    let missing = dirs.root.join("no-such-mirror");
    let option = format!("mirror=dir:{}", missing.display());
    let out = mount_with(&dirs.backing, &dirs.mnt, &[option]);
    assert_fails(&out, EXIT_USAGE, path_str(&missing));
    assert!(out.stderr.contains("create the directory"), "{out}");
}

#[test]
fn mount_missing_arguments() {
    let dirs = TestDirs::new(1);
    let out = common::logmirror(&["mount", path_str(&dirs.backing)]);
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(!out.stderr.is_empty(), "no usage message: {out}");
}

#[test]
fn status_not_a_mount() {
    let dirs = TestDirs::new(0);
    let mnt = path_str(&dirs.mnt);
    for args in [vec!["status", mnt], vec!["status", mnt, "--json"]] {
        let out = common::logmirror(&args);
        assert_fails(&out, EXIT_NOT_SERVED, mnt);
    }
}

#[test]
fn sync_not_a_mount() {
    let dirs = TestDirs::new(0);
    let out = common::logmirror(&["sync", path_str(&dirs.mnt), "--timeout", "5"]);
    assert_fails(&out, EXIT_NOT_SERVED, path_str(&dirs.mnt));
}

#[test]
fn verify_not_a_mount() {
    let dirs = TestDirs::new(0);
    let out = common::logmirror(&["verify", path_str(&dirs.mnt)]);
    assert_fails(&out, EXIT_NOT_SERVED, path_str(&dirs.mnt));
}

#[test]
fn mount_point_inside_mirror() {
    let dirs = TestDirs::new(1);
    let inner = dirs.mirrors[0].join("mnt");
    std::fs::create_dir(&inner).expect("create mount point inside the mirror");
    let out = mount_with(&dirs.backing, &inner, &dirs.mirror_options());
    assert_fails(&out, EXIT_USAGE, "overlaps");
}

#[test]
fn mirror_given_twice_spelled_differently() {
    let dirs = TestDirs::new(1);
    let mirror = path_str(&dirs.mirrors[0]);
    let options = vec![format!("mirror=dir:{mirror},mirror=dir:{mirror}/")];
    let out = mount_with(&dirs.backing, &dirs.mnt, &options);
    assert_fails(&out, EXIT_USAGE, "same directory");
}

#[test]
fn mount_unwritable_log_file() {
    let dirs = TestDirs::new(1);
    let mut options = dirs.mirror_options();
    options.push("log_file=/nonexistent-logmirror-dir/daemon.log".to_string());
    let out = mount_with(&dirs.backing, &dirs.mnt, &options);
    assert_fails(&out, EXIT_USAGE, "/nonexistent-logmirror-dir/daemon.log");
}
