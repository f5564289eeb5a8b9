//! The daemon's own verify every `verify_interval`. A byte changed by hand in a directory
//! mirror must show up in `status` (text and JSON) and in the daemon log at error level with
//! mirror and path. With `repair=true` the mirror must become equal to the backing tree
//! again without any command.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Mode, Mount, STATE_DIR, TestDirs, assert_mirrors_match, logmirror, path_str};

const CHANGED: &str = "app/a.log";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// Mounts with one directory mirror and `extra` options, writes two files and waits until
/// the mirror has them.
fn mount_with_files<'a>(dirs: &'a TestDirs, extra: &[&str]) -> Mount<'a> {
    let mut options = dirs.options(Mode::Async);
    options.extend(extra.iter().map(|o| o.to_string()));
    let mount = Mount::with_options(dirs, &options);
    fs::create_dir(mount.mnt().join("app")).expect("mkdir app");
    for name in [CHANGED, "b.log"] {
        let content: String = (0..500).map(|i| format!("{name} line {i:04}\n")).collect();
        fs::write(mount.mnt().join(name), content).expect("write through the mount");
    }
    assert_mirrors_match(&mount);
    mount
}

fn flip_byte(path: &Path, offset: usize) {
    let mut content = fs::read(path).expect("read mirror file");
    content[offset] ^= 0x01;
    fs::write(path, content).expect("write mirror file");
}

/// Returns the first mirror of `status --json` as JSON.
fn mirror_status(mount: &Mount) -> Result<serde_json::Value, String> {
    let out = logmirror(&["status", path_str(mount.mnt()), "--json"]);
    if !out.status.success() {
        return Err(format!("logmirror status: {out}"));
    }
    let status: serde_json::Value =
        serde_json::from_str(&out.stdout).map_err(|e| format!("{e}: {out}"))?;
    Ok(status["mirrors"][0].clone())
}

/// Waits until a periodic verify that started after `after_ns` reported, and returns its
/// `last_verify` object.
fn wait_periodic_verify(mount: &Mount, after_ns: u64) -> serde_json::Value {
    common::wait_until(
        Duration::from_secs(60),
        "a periodic verify after the change",
        || {
            let verify = mirror_status(mount)?["last_verify"].clone();
            let is_new = verify["at_ns"].as_u64().is_some_and(|at| at > after_ns);
            let is_periodic = verify["trigger"] == "periodic";
            let has_difference = verify["differences"].as_u64().is_some_and(|n| n > 0);
            match is_new && is_periodic && has_difference {
                true => Ok(verify),
                false => Err(format!("last_verify {verify}")),
            }
        },
    )
}

#[test]
fn periodic_verify_reports_difference() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = mount_with_files(&dirs, &["verify_interval=1s"]);
    let changed_at = now_ns();
    let copy = dirs.mirrors[0].join(CHANGED);
    flip_byte(&copy, 1000);

    let verify = wait_periodic_verify(&mount, changed_at);
    assert_eq!(verify["differences"], 1, "{verify}");
    assert_eq!(verify["error"], serde_json::Value::Null, "{verify}");
    assert_eq!(verify["resync_scheduled"], false, "{verify}");

    let status = mount.status();
    assert_eq!(status.mirrors[0].last_verify_differences(), Some(1));
    let out = logmirror(&["status", path_str(mount.mnt())]);
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("verify:  every 1s, repair off"),
        "{out}"
    );
    assert!(out.stdout.contains("last verify (periodic) "), "{out}");
    assert!(out.stdout.contains("differences: 1"), "{out}");

    let name = format!("dir:{}", dirs.mirrors[0].display());
    let expected = format!(
        "ERROR logmirror::verify] periodic verify mirror {name}: content differs: {CHANGED}"
    );
    let log = mount.log_tail(usize::MAX);
    assert!(
        log.contains(&expected),
        "daemon log lacks {expected:?}:\n{log}"
    );

    // Without repair the mirror keeps the change.
    let backing = fs::read(dirs.backing.join(CHANGED)).expect("read backing file");
    assert_ne!(fs::read(&copy).expect("read mirror file"), backing);
    mount.unmount();
}

#[test]
fn periodic_verify_repairs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = mount_with_files(&dirs, &["verify_interval=1s", "repair=true"]);
    let backing = common::tree_sha256(&dirs.backing, &[STATE_DIR]);
    let copy = dirs.mirrors[0].join(CHANGED);
    flip_byte(&copy, 1000);
    fs::remove_file(dirs.mirrors[0].join("b.log")).expect("remove mirror file");
    assert_ne!(common::tree_sha256(&dirs.mirrors[0], &[]), backing);

    common::wait_until(
        Duration::from_secs(60),
        "the mirror to equal the backing tree",
        || {
            let mirror = common::tree_sha256(&dirs.mirrors[0], &[]);
            match mirror == backing {
                true => Ok(()),
                false => Err(format!("mirror listing {:?}", mirror.entries.keys())),
            }
        },
    );
    let log = mount.log_tail(usize::MAX);
    let name = format!("dir:{}", dirs.mirrors[0].display());
    let scheduled =
        format!("periodic verify mirror {name}: resync from the backing tree scheduled");
    assert!(
        log.contains(&scheduled),
        "daemon log lacks {scheduled:?}:\n{log}"
    );
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the repair: {out}");
    mount.unmount();
}
