//! `logmirror verify` against a mirror changed by hand behind the daemon's back: a flipped
//! byte, a removed file and an extra file must each be reported by path with exit code 1,
//! and nothing else may be reported.

mod common;

use std::fs;
use std::path::Path;

use common::{EXIT_RUNTIME, Mode, Mount, TestDirs, assert_mirrors_match};

const FILES: [&str; 3] = ["app/a.log", "app/c.log", "b.log"];

/// Writes the files of [`FILES`] through the mount and waits until the mirror has them.
fn populate(mount: &Mount) {
    fs::create_dir(mount.mnt().join("app")).expect("mkdir app through the mount");
    for (n, name) in FILES.iter().enumerate() {
        let content: String = (0..1000)
            .map(|i| format!("{name} {n} line {i:04}\n"))
            .collect();
        fs::write(mount.mnt().join(name), content).expect("write through the mount");
    }
    assert_mirrors_match(mount);
}

/// Runs verify and asserts exit code 1 with `path` named on some output line and no other
/// file of [`FILES`] named.
fn assert_reported(mount: &Mount, path: &str) {
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify exit code: {out}");
    let naming = |name: &str| out.stdout.lines().filter(|l| l.contains(name)).count();
    assert!(
        naming(path) >= 1,
        "verify output does not name {path}: {out}"
    );
    for other in FILES.iter().filter(|f| **f != path) {
        assert_eq!(naming(other), 0, "verify names unchanged {other}: {out}");
    }
}

fn flip_byte(path: &Path, offset: usize) {
    let mut content = fs::read(path).expect("read mirror file");
    content[offset] ^= 0x01;
    fs::write(path, content).expect("write mirror file");
}

#[test]
fn verify_changed_byte_sync() {
    verify_changed_byte(Mode::Sync);
}

#[test]
fn verify_changed_byte_async() {
    verify_changed_byte(Mode::Async);
}

fn verify_changed_byte(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    populate(&mount);

    let copy = dirs.mirrors[0].join("app/a.log");
    flip_byte(&copy, 5000);
    assert_reported(&mount, "app/a.log");

    flip_byte(&copy, 5000);
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the byte was restored: {out}");
}

#[test]
fn verify_removed_file_sync() {
    verify_removed_file(Mode::Sync);
}

#[test]
fn verify_removed_file_async() {
    verify_removed_file(Mode::Async);
}

fn verify_removed_file(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    populate(&mount);

    fs::remove_file(dirs.mirrors[0].join("app/c.log")).expect("remove mirror file");
    assert_reported(&mount, "app/c.log");
}

#[test]
fn verify_extra_file() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    populate(&mount);

    fs::write(dirs.mirrors[0].join("app/stray.log"), "not in backing\n").expect("write stray");
    assert_reported(&mount, "app/stray.log");
}
