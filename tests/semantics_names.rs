//! File names: every byte string the kernel accepts as a name, up to 255 bytes, must reach
//! the backing directory and the mirror unchanged and distinct. That includes spaces,
//! NFC and NFD spellings of one letter (two files), URL-like characters, a leading dash,
//! a newline and bytes that are not UTF-8.

mod common;

use std::fs;

use common::Mode;
use common::semantics::{names_of, os, with_case};

both_modes!(odd_names_kept, odd_names_renamed);

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
