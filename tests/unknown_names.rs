//! Writes through a file whose remaining name the daemon never looked up: the file was
//! opened under one hard link, that name was unlinked through the mount, and the other link
//! comes from an earlier mount. In sync mode the mirror must have each write by the time
//! write(2) returns.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use common::{Mode, Mount, STATE_DIR, TestDirs, assert_mirrors_match};

/// Creates `name` with `content` through a first mount and unmounts, so that the daemon of
/// the next mount has no name of it in its inode table.
fn create_then_unmount(dirs: &TestDirs, name: &str, content: &[u8]) {
    let mount = Mount::new(dirs, Mode::Sync);
    fs::write(dirs.mnt.join(name), content).expect("write through the mount");
    let out = mount.sync(common::SYNC_TIMEOUT_SECS);
    out.assert_success("logmirror sync");
    mount.unmount();
}

fn count_in_log(mount: &Mount, text: &str) -> usize {
    let log = fs::read_to_string(&mount.log_file).unwrap_or_default();
    log.matches(text).count()
}

fn read_mirror(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

#[test]
fn sync_write_through_unseen_link() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mirror = &dirs.mirrors[0];
    {
        let mount = Mount::new(&dirs, Mode::Sync);
        fs::write(dirs.mnt.join("a"), b"one\n").expect("write a");
        fs::hard_link(dirs.mnt.join("a"), dirs.mnt.join("b")).expect("link a to b");
        mount.unmount();
    }
    assert_eq!(read_mirror(&mirror.join("b")), b"one\n");

    let mount = Mount::new(&dirs, Mode::Sync);
    let mut file = OpenOptions::new()
        .append(true)
        .open(dirs.mnt.join("a"))
        .expect("open a");
    fs::remove_file(dirs.mnt.join("a")).expect("unlink a");
    assert!(!mirror.join("a").exists(), "a is still on the mirror");

    file.write_all(b"two\n")
        .expect("write through the open file");
    assert_eq!(read_mirror(&mirror.join("b")), b"one\ntwo\n");
    file.write_all(b"three\n").expect("second write");
    assert_eq!(read_mirror(&mirror.join("b")), b"one\ntwo\nthree\n");
    drop(file);

    assert_eq!(count_in_log(&mount, "could not be journaled"), 0);
    let tree = assert_mirrors_match(&mount);
    assert_eq!(tree.entries.len(), 1);
    assert_eq!(tree.entries["b"], common::sha256_hex(b"one\ntwo\nthree\n"));
}

#[test]
fn sync_write_without_name_waits_for_resync() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    create_then_unmount(&dirs, "a", b"one\n");
    // The only other name lies in the state directory, which no mirror contains.
    let hidden = dirs.backing.join(STATE_DIR).join("a-link");
    fs::hard_link(dirs.backing.join("a"), &hidden).expect("link a into the state directory");

    let mount = Mount::new(&dirs, Mode::Sync);
    let mut file = OpenOptions::new()
        .append(true)
        .open(dirs.mnt.join("a"))
        .expect("open a");
    fs::remove_file(dirs.mnt.join("a")).expect("unlink a");
    assert_eq!(count_in_log(&mount, "resync done"), 0);

    file.write_all(b"two\n")
        .expect("write through the open file");
    assert_eq!(count_in_log(&mount, "could not be journaled"), 1);
    assert_eq!(count_in_log(&mount, "resync done"), 1);
    drop(file);

    assert_eq!(read_mirror(&hidden), b"one\ntwo\n");
    let tree = assert_mirrors_match(&mount);
    assert!(tree.entries.is_empty(), "entries left: {:?}", tree.entries);
}
