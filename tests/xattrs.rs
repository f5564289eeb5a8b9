//! `user.` extended attributes in verify and resync: verify names each attribute that
//! differs on a mirror, and a resync (at the first mount, or scheduled by `verify --repair`)
//! copies the backing values and removes attributes the backing tree lacks.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{
    EXIT_RUNTIME, Mode, Mount, TestDirs, assert_mirrors_match, get_xattr, path_str, remove_xattr,
    set_xattr,
};

fn crc(value: &[u8]) -> String {
    format!("{:#010x}", crc32c::crc32c(value))
}

/// Returns the verify output lines that report a difference, without the mirror prefix.
fn differences(out: &common::CmdOutput, mirror: &str) -> Vec<String> {
    let prefix = format!("mirror dir:{mirror}: ");
    out.stdout
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter(|line| line.contains(" differs: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn verify_names_changed_xattrs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mirror = &dirs.mirrors[0];
    let mount = Mount::new(&dirs, Mode::Async);
    fs::create_dir(dirs.mnt.join("app")).expect("mkdir app");
    fs::write(dirs.mnt.join("app/a.log"), b"a\n").expect("write a.log");
    fs::write(dirs.mnt.join("b.log"), b"b\n").expect("write b.log");
    set_xattr(&dirs.mnt.join("app/a.log"), "user.tag", b"v1").expect("set user.tag");
    set_xattr(&dirs.mnt.join("app"), "user.dir", b"d1").expect("set user.dir");
    assert_mirrors_match(&mount);
    assert_eq!(
        get_xattr(&mirror.join("app/a.log"), "user.tag").unwrap(),
        b"v1"
    );
    assert_eq!(get_xattr(&mirror.join("app"), "user.dir").unwrap(), b"d1");

    set_xattr(&mirror.join("app/a.log"), "user.tag", b"v2").expect("change on the mirror");
    remove_xattr(&mirror.join("app"), "user.dir").expect("remove on the mirror");
    set_xattr(&mirror.join("b.log"), "user.extra", b"x").expect("add on the mirror");
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify: {out}");
    let expected = [
        format!(
            "xattr differs: app (user.dir: backing crc32c {}, mirror missing)",
            crc(b"d1")
        ),
        format!(
            "xattr differs: app/a.log (user.tag: backing crc32c {}, mirror crc32c {})",
            crc(b"v1"),
            crc(b"v2")
        ),
        format!(
            "xattr differs: b.log (user.extra: backing missing, mirror crc32c {})",
            crc(b"x")
        ),
    ];
    assert_eq!(
        differences(&out, path_str(mirror)),
        expected,
        "verify: {out}"
    );

    let out = common::logmirror(&["verify", path_str(&dirs.mnt), "--repair"]);
    assert_eq!(out.code(), EXIT_RUNTIME, "verify --repair: {out}");
    assert_mirrors_match(&mount);
    assert_eq!(
        get_xattr(&mirror.join("app/a.log"), "user.tag").unwrap(),
        b"v1"
    );
    assert_eq!(get_xattr(&mirror.join("app"), "user.dir").unwrap(), b"d1");
    let removed = get_xattr(&mirror.join("b.log"), "user.extra").expect_err("user.extra");
    assert_eq!(removed.raw_os_error(), Some(libc::ENODATA));
}

#[test]
fn resync_copies_xattrs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mirror = &dirs.mirrors[0];
    // Written before the first mount, so only the initial resync can bring them over.
    fs::create_dir(dirs.backing.join("d")).expect("mkdir d");
    fs::write(dirs.backing.join("d/y.log"), b"y\n").expect("write y.log");
    fs::write(dirs.backing.join("ro.log"), b"read-only\n").expect("write ro.log");
    let long_value = vec![b'v'; 200];
    set_xattr(&dirs.backing.join("d"), "user.dir", b"2").expect("set on d");
    set_xattr(&dirs.backing.join("d/y.log"), "user.long", &long_value).expect("set on y.log");
    set_xattr(&dirs.backing.join("ro.log"), "user.a", b"1").expect("set on ro.log");
    set_xattr(&dirs.backing.join("ro.log"), "user.b", b"").expect("set empty on ro.log");
    fs::set_permissions(
        dirs.backing.join("ro.log"),
        fs::Permissions::from_mode(0o444),
    )
    .expect("chmod ro.log");

    let mount = Mount::new(&dirs, Mode::Sync);
    assert_mirrors_match(&mount);
    assert_eq!(get_xattr(&mirror.join("d"), "user.dir").unwrap(), b"2");
    assert_eq!(
        get_xattr(&mirror.join("d/y.log"), "user.long").unwrap(),
        long_value
    );
    assert_eq!(get_xattr(&mirror.join("ro.log"), "user.a").unwrap(), b"1");
    assert_eq!(get_xattr(&mirror.join("ro.log"), "user.b").unwrap(), b"");
    let mode = fs::metadata(mirror.join("ro.log"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o444);
}
