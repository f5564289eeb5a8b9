//! Path rules with an S3 mirror. A rule sends `audit/**` synchronously to a bucket prefix,
//! and everything else goes to a directory mirror. The bucket's journal (read back through
//! restore) and its readable copies must contain exactly the files the rule selects, also
//! after renames into and out of `audit/`.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::path::PathBuf;

use common::{
    Mount, STATE_DIR, SYNC_TIMEOUT_SECS, TestDirs, Tree, assert_same_tree, logmirror_env, path_str,
    tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";

/// Writes a config with the S3 mirror `offsite` for `audit/**` and the directory mirror for
/// the rest, and returns its path.
fn write_config(dirs: &TestDirs, garage: &Garage) -> PathBuf {
    let text = format!(
        "mirror = \"dir:{dir}\"\n\
         endpoint = \"{endpoint}\"\n\
         region = \"{region}\"\n\
         [mirrors.offsite]\n\
         url = \"s3://{bucket}/{PREFIX}\"\n\
         [[rule]]\n\
         path = \"audit/**\"\n\
         mirrors = [\"offsite\"]\n\
         mode = \"sync\"\n",
        dir = dirs.mirrors[0].display(),
        endpoint = garage.endpoint,
        region = garage.region,
        bucket = garage.bucket,
    );
    let path = dirs.root.join("rules.toml");
    fs::write(&path, text).expect("write config file");
    path
}

/// Returns the entries of `tree` at or below `audit`.
fn audit_part(tree: &Tree) -> common::TreeEntries {
    tree.entries
        .iter()
        .filter(|(path, _)| *path == "audit" || path.starts_with("audit/"))
        .map(|(path, value)| (path.clone(), value.clone()))
        .collect()
}

/// Syncs and verifies, then asserts that a restore of the bucket and its readable copies
/// hold exactly the `audit/` part of the backing tree, and the directory mirror the rest.
fn assert_split(mount: &Mount, garage: &Garage, round: usize) {
    mount
        .sync(SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");

    let backing = tree_sha256(&mount.dirs.backing, &[STATE_DIR]);
    let audit = audit_part(&backing);
    let restored = mount.dirs.root.join(format!("restored-{round}"));
    let spec = format!("s3://{}/{PREFIX}", garage.bucket);
    let out = logmirror_env(&["restore", &spec, path_str(&restored)], &garage.env());
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_eq!(
        tree_sha256(&restored, &[]).entries,
        audit,
        "restored bucket"
    );

    let mut copies: Vec<String> = garage
        .client()
        .list(&format!("{PREFIX}/"))
        .into_iter()
        .filter(|key| !key.starts_with(&format!("{PREFIX}/.logmirror/")))
        .collect();
    copies.sort();
    let expected: Vec<String> = audit
        .iter()
        .filter(|(_, value)| *value != "dir")
        .map(|(path, _)| format!("{PREFIX}/{path}"))
        .collect();
    assert_eq!(copies, expected, "readable copies in the bucket");

    let rest: common::TreeEntries = backing
        .entries
        .iter()
        .filter(|(path, _)| !audit.contains_key(*path))
        .map(|(path, value)| (path.clone(), value.clone()))
        .collect();
    let mirror = tree_sha256(&mount.dirs.mirrors[0], &[]);
    let rest = Tree {
        digest: mirror.digest.clone(),
        entries: rest,
    };
    assert_same_tree("backing without audit/", &rest, "directory mirror", &mirror);
}

#[test]
fn rules_s3_selection() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(1);
    let config = write_config(&dirs, &garage);
    let mount = Mount::with_config(&dirs, &config, &[], &garage.env());

    fs::create_dir_all(dirs.mnt.join("audit/2026")).expect("mkdir through the mount");
    fs::create_dir_all(dirs.mnt.join("app")).expect("mkdir through the mount");
    fs::write(dirs.mnt.join("audit/2026/login.log"), "login\n".repeat(500)).expect("write");
    fs::write(dirs.mnt.join("audit/access.log"), "access\n".repeat(300)).expect("write");
    fs::write(dirs.mnt.join("app/web.log"), "web\n".repeat(400)).expect("write");
    fs::write(dirs.mnt.join("other.log"), "other\n".repeat(100)).expect("write");
    assert_split(&mount, &garage, 0);

    fs::rename(dirs.mnt.join("app/web.log"), dirs.mnt.join("audit/web.log")).expect("rename in");
    fs::rename(
        dirs.mnt.join("audit/access.log"),
        dirs.mnt.join("access.log"),
    )
    .expect("rename out");
    assert_split(&mount, &garage, 1);

    fs::rename(dirs.mnt.join("audit/2026"), dirs.mnt.join("2026")).expect("rename dir out");
    fs::write(dirs.mnt.join("2026/login.log"), "after leaving audit\n").expect("write");
    assert_split(&mount, &garage, 2);
    mount.unmount();
}
