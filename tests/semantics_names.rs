//! File names: every byte string the kernel accepts as a name, up to 255 bytes, must reach
//! the backing directory and the mirror unchanged and distinct. That includes spaces,
//! NFC and NFD spellings of one letter (two files), URL-like characters, a leading dash,
//! a newline and bytes that are not UTF-8. Paths longer than PATH_MAX, reached one
//! directory at a time, must work and reach the mirror too.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::Mode;
use common::semantics::{names_of, os, with_case};

both_modes!(odd_names_kept, odd_names_renamed, paths_beyond_path_max);

fn odd_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = [
        b"with space".as_slice(),
        b" leading and trailing space ",
        b"caf\xc3\xa9 nfc",
        b"cafe\xcc\x81 nfd",
        b"\xc3\xa9",
        b"e\xcc\x81",
        b"100%",
        b"%2F%00%25",
        b"a+b=c",
        b"what?",
        b"#hash",
        b"-leading-dash",
        b"--",
        b"new\nline",
        b"tab\tand\rreturn",
        b"\xff\xfe not utf-8 \x80",
        b"latin1 \xe9t\xe9",
        b"back\\slash",
        b"quote\"and'apostrophe",
        b"star*and[brackets]",
        b"\x01\x02\x1b control",
        b"...",
        b".hidden",
        b"emoji \xf0\x9f\x93\x9c",
        b"~tilde",
        b"$dollar{brace}",
        b"colon:semi;",
        b"<angle>|pipe&",
    ]
    .iter()
    .map(|name| name.to_vec())
    .collect();
    names.push(vec![b'x'; 255]);
    let mut multibyte = "\u{00e9}".repeat(127).into_bytes();
    multibyte.push(b'!');
    names.push(multibyte);
    names.sort();
    names
}

/// Content of the file with name `name`: the name itself and a newline.
fn content_of(name: &[u8]) -> Vec<u8> {
    let mut content = name.to_vec();
    content.push(b'\n');
    content
}

fn odd_names_kept(mode: Mode) {
    with_case(mode, |case| {
        let names = odd_names();
        fs::create_dir(case.in_mount("files")).expect("mkdir files");
        fs::create_dir(case.in_mount("dirs")).expect("mkdir dirs");
        for name in &names {
            fs::write(case.in_mount("files").join(os(name)), content_of(name))
                .unwrap_or_else(|e| panic!("create {}: {e}", common::semantics::escape(name)));
            let dir = case.in_mount("dirs").join(os(name));
            fs::create_dir(&dir).expect("mkdir odd name");
            fs::write(dir.join(os(name)), content_of(name)).expect("create inside");
        }
        assert_eq!(
            names_of(&case.in_mount("files")),
            names,
            "listed through the mount"
        );
        assert_eq!(
            names_of(&case.in_backing("files")),
            names,
            "backing directory"
        );
        for name in &names {
            let backing = case.in_backing("dirs").join(os(name)).join(os(name));
            assert_eq!(fs::read(backing).expect("read backing"), content_of(name));
        }
        case.sync();
        assert_eq!(names_of(&case.in_mirror("files")), names, "mirror");
        assert_eq!(
            names_of(&case.in_mirror("dirs")),
            names,
            "mirror directories"
        );
        for name in &names {
            let copy = case.in_mirror("files").join(os(name));
            assert_eq!(fs::read(copy).expect("read mirror"), content_of(name));
        }
    });
}

fn odd_names_renamed(mode: Mode) {
    with_case(mode, |case| {
        let names = odd_names();
        // `r-` in front, dropping two bytes from the start of a name that would pass 255.
        let renamed: Vec<Vec<u8>> = names
            .iter()
            .map(|name| {
                let keep = if name.len() > 253 {
                    &name[2..]
                } else {
                    &name[..]
                };
                [b"r-".as_slice(), keep].concat()
            })
            .collect();
        for name in &names {
            fs::write(case.in_mount(os(name)), content_of(name)).expect("create");
        }
        for (old, new) in names.iter().zip(&renamed) {
            fs::rename(case.in_mount(os(old)), case.in_mount(os(new))).expect("rename");
        }
        let mut expected = renamed.clone();
        expected.sort();
        assert_eq!(names_of(case.mnt()), expected, "through the mount");
        assert_eq!(
            names_of(case.backing()).len(),
            expected.len() + 1,
            "backing and state"
        );
        case.sync();
        assert_eq!(names_of(case.mirror()), expected, "mirror");
        for (old, new) in names.iter().zip(&renamed) {
            let copy = fs::read(case.in_mirror(os(new))).expect("read mirror");
            assert_eq!(copy, content_of(old));
        }
    });
}

/// Builds (argv[2] `build`), lists (`list`) or removes (`remove`) a tree under argv[1]
/// whose full paths exceed PATH_MAX (4096 bytes). It has 24 levels of 250-byte directory
/// names, walked with chdir and dir_fd. At the bottom a log is renamed, hard-linked,
/// symlinked, truncated and given an xattr. `list` prints each entry below the top directory (names
/// shortened to their first 2 bytes) with its type, size, link count and content digest.
const DEEP_TREE: &str = r#"
import hashlib, os, shutil, stat, sys
root, action = sys.argv[1], sys.argv[2]
os.chdir(root)
if action == "build":
    for level in range(24):
        name = "%02d" % level + "d" * 248
        os.mkdir(name)
        os.chdir(name)
    fd = os.open("deep.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for i in range(100):
        os.write(fd, b"deep line %03d\n" % i)
    os.close(fd)
    os.rename("deep.log", "deep.log.1")
    fd = os.open("deep.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, b"after rotation\n")
    os.close(fd)
    os.link("deep.log.1", "hard.log")
    os.symlink("deep.log.1", "sym.log")
    os.setxattr("deep.log.1", "user.deep", b"yes")
    os.truncate("deep.log.1", 1000)
    print(len(os.getcwd()) > 6000)
elif action == "list":
    for top, dirs, files, dir_fd in os.fwalk("00" + "d" * 248):
        dirs.sort()
        short = "/".join(part[:2] for part in top.split("/"))
        for name in sorted(dirs + files):
            st = os.lstat(name, dir_fd=dir_fd)
            line = "%s/%s %s size=%d nlink=%d" % (
                short, name[:2] if name in dirs else name, stat.filemode(st.st_mode),
                st.st_size if not stat.S_ISDIR(st.st_mode) else 0, st.st_nlink)
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
                line += " sha=" + hashlib.sha256(os.read(fd, 1 << 20)).hexdigest()[:16]
                os.close(fd)
                line += " xattr=%r" % os.getxattr("/proc/self/fd/%d" % dir_fd + "/" + name, "user.deep") if name == "deep.log.1" else ""
            elif stat.S_ISLNK(st.st_mode):
                line += " target=" + os.readlink(name, dir_fd=dir_fd)
            print(line)
elif action == "remove":
    shutil.rmtree("00" + "d" * 248)
"#;

fn deep_tree(root: &Path, action: &str) -> String {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-c", DEEP_TREE, common::path_str(root), action]);
    let out = common::run(&mut cmd, common::COMMAND_TIMEOUT);
    out.assert_success(action);
    out.stdout
}

/// A log 6000 bytes deep, past PATH_MAX, is written, rotated and linked through the mount
/// as in a plain directory, and the mirror holds the same tree.
fn paths_beyond_path_max(mode: Mode) {
    with_case(mode, |case| {
        let (built, built_plain) = case.on_both(|root| deep_tree(root, "build"));
        assert_eq!(built_plain, "True\n", "plain directory");
        assert_eq!(built, "True\n", "mount");
        let expected = deep_tree(&case.plain, "list");
        assert_eq!(
            expected.lines().count(),
            27,
            "23 directories and 4 entries: {expected}"
        );
        assert_eq!(deep_tree(case.mnt(), "list"), expected, "mount");
        assert_eq!(deep_tree(case.backing(), "list"), expected, "backing");
        case.sync();
        assert_eq!(deep_tree(case.mirror(), "list"), expected, "mirror");

        // The whole-tree comparison at the end walks by full path, so remove the deep tree.
        case.on_both(|root| deep_tree(root, "remove"));
    });
}
