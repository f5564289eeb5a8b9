//! Path rules: named mirrors and `[[rule]]`s in the config file decide which mirrors hold
//! each path, in which mode, and with which ack. Three directory mirrors: `a` and `b` are
//! named, and the third is the `mirror=` one that gets the paths no rule matches.
//!
//! Each mirror's tree must equal the selection of the backing tree that its rules make,
//! computed here independently for the one rule set below; local-only paths must never
//! reach a mirror; renames across rules must move both the later writes and the past.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;

use common::{
    EXIT_RUNTIME, EXIT_USAGE, Mount, ReadOnlyBind, STATE_DIR, SYNC_TIMEOUT_SECS, TestDirs, Tree,
    assert_same_tree, path_str, tree_sha256,
};

/// Writes the config file with the test's rules, `extra` appended to the global keys, and
/// returns its path.
fn write_config(dirs: &TestDirs, extra: &str) -> PathBuf {
    let text = format!(
        "mirror = \"dir:{m2}\"\n\
         mode = \"async\"\n\
         {extra}\n\
         [mirrors.a]\n\
         url = \"dir:{m0}\"\n\
         [mirrors.b]\n\
         url = \"dir:{m1}\"\n\
         [[rule]]\n\
         path = \"audit/**\"\n\
         mirrors = [\"a\", \"b\"]\n\
         mode = \"sync\"\n\
         ack = 2\n\
         [[rule]]\n\
         path = \"app/*.log\"\n\
         mirrors = [\"a\"]\n\
         mode = \"async\"\n\
         [[rule]]\n\
         path = \"debug/**\"\n\
         mirrors = []\n",
        m0 = dirs.mirrors[0].display(),
        m1 = dirs.mirrors[1].display(),
        m2 = dirs.mirrors[2].display(),
    );
    let path = dirs.root.join("rules.toml");
    fs::write(&path, text).expect("write config file");
    path
}

/// Returns which of the mirrors a, b and the default the rules send a file at `path` to.
fn file_holders(path: &str) -> [bool; 3] {
    let below = |dir: &str| path == dir || path.starts_with(&format!("{dir}/"));
    if below("audit") {
        return [true, true, false];
    }
    if below("debug") {
        return [false, false, false];
    }
    let app_log = path
        .strip_prefix("app/")
        .is_some_and(|name| !name.contains('/') && name.ends_with(".log"));
    if app_log {
        return [true, false, false];
    }
    [false, false, true]
}

/// Returns the part of the backing tree that mirror `index` must hold: the files its rules
/// send it, the directories its rules name, and the directories above what it gets.
fn expected_tree(backing: &Tree, index: usize) -> Tree {
    let mut entries = common::TreeEntries::new();
    for (path, value) in &backing.entries {
        if !file_holders(path)[index] {
            continue;
        }
        entries.insert(path.clone(), value.clone());
        let parts: Vec<&str> = path.split('/').collect();
        for n in 1..parts.len() {
            entries.insert(parts[..n].join("/"), "dir".to_string());
        }
    }
    let digest = entry_count(&entries);
    Tree { entries, digest }
}

/// Stands in for the digest of a tree listing, so that two listings compare by entries.
fn entry_count(entries: &common::TreeEntries) -> String {
    format!("{} entries", entries.len())
}

/// Syncs, then asserts that each mirror has exactly the selection of the backing tree its
/// rules make, that no local-only path reached a mirror, and that verify exits 0.
fn assert_selections(mount: &Mount) {
    let out = mount.sync(SYNC_TIMEOUT_SECS);
    out.assert_success("logmirror sync");
    let backing = tree_sha256(&mount.dirs.backing, &[STATE_DIR]);
    for (index, mirror) in mount.dirs.mirrors.iter().enumerate() {
        let expected = expected_tree(&backing, index);
        let mut actual = tree_sha256(mirror, &[]);
        actual.digest = entry_count(&actual.entries);
        assert_same_tree(
            &format!("selection of mirror {index}"),
            &expected,
            &format!("mirror {index}"),
            &actual,
        );
        assert!(
            !mirror.join("debug").exists(),
            "local-only debug/ reached mirror {mirror:?}"
        );
    }
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
}

fn write(mount: &Mount, path: &str, content: &str) {
    let full = mount.mnt().join(path);
    fs::create_dir_all(full.parent().expect("path has a parent"))
        .expect("mkdir -p through the mount");
    fs::write(&full, content).unwrap_or_else(|e| panic!("write {path} through the mount: {e}"));
}

fn append(mount: &Mount, path: &str, content: &str) {
    let full = mount.mnt().join(path);
    let mut file = OpenOptions::new()
        .append(true)
        .open(&full)
        .unwrap_or_else(|e| panic!("open {path} for append: {e}"));
    file.write_all(content.as_bytes())
        .unwrap_or_else(|e| panic!("append to {path}: {e}"));
}

fn rename(mount: &Mount, from: &str, to: &str) {
    let target = mount.mnt().join(to);
    fs::create_dir_all(target.parent().expect("path has a parent"))
        .expect("mkdir -p through the mount");
    fs::rename(mount.mnt().join(from), &target)
        .unwrap_or_else(|e| panic!("rename {from} to {to} through the mount: {e}"));
}

/// Lines of a log file, long enough to span several records.
fn lines(name: &str, count: usize) -> String {
    (0..count)
        .map(|i| format!("{name} line {i:05}\n"))
        .collect()
}

/// Writes one file for each rule and for the default, some in subdirectories.
fn populate(mount: &Mount) {
    let files = [
        "audit/2026/login.log",
        "audit/access.log",
        "app/web.log",
        "app/keep.log",
        "app/keep2.log",
        "app/notes.txt",
        "app/sub/deep.log",
        "debug/trace.txt",
        "debug/sub/dump.bin",
        "other.log",
        "x/y.txt",
    ];
    for name in files {
        write(mount, name, &lines(name, 200));
        append(mount, name, &lines(name, 3));
    }
}

/// Mounts with the test's rules and `extra` global keys, writes [`populate`]'s files and
/// checks the selections.
fn mount_populated<'a>(dirs: &'a TestDirs, extra: &str) -> Mount<'a> {
    let config = write_config(dirs, extra);
    let mount = Mount::with_config(dirs, &config, &[], &[]);
    populate(&mount);
    assert_selections(&mount);
    mount
}

/// Asserts that the daemon log shows no rename that needed a whole resync.
fn assert_no_resync(mount: &Mount) {
    let log = fs::read_to_string(&mount.log_file).unwrap_or_default();
    assert!(
        !log.contains("cannot be followed record by record"),
        "a rename needed a resync: {}",
        mount.log_tail(4096)
    );
    // A rename the mirror cannot apply fails until the worker gives up and resyncs.
    assert!(
        !log.contains("is missing on the mirror after"),
        "a rename failed on a mirror: {}",
        mount.log_tail(4096)
    );
    assert!(
        !log.contains("-> down"),
        "a mirror went down: {}",
        mount.log_tail(4096)
    );
}

#[test]
fn rules_route_paths() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let _mount = mount_populated(&dirs, "");

    assert!(dirs.mirrors[0].join("audit/2026/login.log").is_file());
    assert!(dirs.mirrors[1].join("audit/2026/login.log").is_file());
    assert!(!dirs.mirrors[2].join("audit").exists());
    assert!(dirs.mirrors[0].join("app/web.log").is_file());
    assert!(!dirs.mirrors[0].join("app/notes.txt").exists());
    assert!(dirs.mirrors[2].join("app/notes.txt").is_file());
    assert!(dirs.mirrors[2].join("app/sub/deep.log").is_file());
    assert!(!dirs.mirrors[1].join("app").exists());
    assert!(dirs.mirrors[2].join("other.log").is_file());
    assert!(dirs.backing.join("debug/trace.txt").is_file());
}

#[test]
fn rules_rename_files() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let mount = mount_populated(&dirs, "");

    let steps = [
        ("app/web.log", "app/web.log.1"),
        ("other.log", "app/other.log"),
        ("app/keep2.log", "audit/keep2.log"),
        ("audit/access.log", "debug/access.log"),
        ("debug/trace.txt", "x/trace.txt"),
    ];
    for (from, to) in steps {
        rename(&mount, from, to);
        if !to.starts_with("debug/") {
            append(&mount, to, &format!("after the rename to {to}\n"));
        }
        assert_selections(&mount);
    }
    assert_no_resync(&mount);
}

/// A hard link into another rule copies the file to the mirrors that lacked it. Later
/// writes are journaled under one name only, so such a copy misses them until a repair.
#[test]
fn rules_link_across_rules() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let mount = mount_populated(&dirs, "");
    fs::hard_link(
        mount.mnt().join("app/keep.log"),
        mount.mnt().join("audit/keep-link.log"),
    )
    .expect("link app/keep.log into audit/ through the mount");
    assert_selections(&mount);
    assert_no_resync(&mount);

    append(&mount, "app/keep.log", "after the link\n");
    mount
        .sync(SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify exit code: {out}");
    let differences: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("differs"))
        .collect();
    let expected = format!(
        "mirror dir:{}: size differs: audit/keep-link.log",
        dirs.mirrors[1].display()
    );
    assert_eq!(differences.len(), 1, "verify output: {out}");
    assert!(
        differences[0].starts_with(&expected),
        "verify output: {out}"
    );

    let out = common::logmirror(&["verify", "--repair", path_str(mount.mnt())]);
    assert_eq!(out.code(), EXIT_RUNTIME, "verify --repair exit code: {out}");
    assert_selections(&mount);
}

#[test]
fn rules_rename_dirs() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let mount = mount_populated(&dirs, "");

    let steps = [
        ("audit/2026", "archive/2026"),
        ("x", "audit/x"),
        ("app", "app2"),
        ("app2", "app"),
        ("debug/sub", "logs/sub"),
    ];
    for (from, to) in steps {
        rename(&mount, from, to);
        assert_selections(&mount);
    }
    append(&mount, "app/keep.log", "after the directory came back\n");
    append(&mount, "archive/2026/login.log", "after leaving audit\n");
    assert_selections(&mount);
    assert_no_resync(&mount);
}

/// Renames made faster than the mirror follows them, so that a rename's names change again
/// before the worker applies it, end in the same selections.
#[test]
fn rules_rename_chain() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let config = write_config(&dirs, "");
    let mount = Mount::with_config(&dirs, &config, &[], &[]);
    populate(&mount);
    for round in 0..5 {
        rename(&mount, "app/web.log", "app/web.log.1");
        write(&mount, "app/web.log", &lines(&format!("round {round}"), 50));
        rename(&mount, "app/web.log.1", "audit/web.log");
        rename(&mount, "audit/web.log", &format!("old/web.{round}"));
    }
    assert_selections(&mount);
}

#[test]
fn rules_sync_waits_async_does_not() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let mount = mount_populated(&dirs, "on_mirror_failure = \"fail\"\nsync_timeout = \"2s\"");

    let mut bind = ReadOnlyBind::new(&dirs.mirrors[1]);
    append(&mount, "app/web.log", "while mirror b is read-only\n");
    append(&mount, "other.log", "while mirror b is read-only\n");
    let result = OpenOptions::new()
        .append(true)
        .open(mount.mnt().join("audit/access.log"))
        .and_then(|mut file| file.write_all(b"needs both a and b\n"));
    let error = result.expect_err("a sync write to audit/ succeeded while mirror b is read-only");
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "errno: {error}");
    append(&mount, "app/keep.log", "after the failed audit write\n");

    bind.remove();
    assert_selections(&mount);
    let copy = fs::read_to_string(dirs.mirrors[1].join("audit/access.log"))
        .expect("read audit/access.log on mirror b");
    assert!(copy.ends_with("needs both a and b\n"), "{copy:?}");
}

#[test]
fn rules_verify_file_outside_selection() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let mount = mount_populated(&dirs, "");

    fs::copy(
        dirs.backing.join("other.log"),
        dirs.mirrors[0].join("other.log"),
    )
    .expect("copy other.log onto mirror a by hand");
    let out = mount.verify();
    assert_eq!(out.code(), EXIT_RUNTIME, "verify exit code: {out}");
    let line = format!(
        "mirror dir:{}: outside the mirror's rules: other.log (file on mirror, which no rule \
         sends here)",
        dirs.mirrors[0].display()
    );
    let naming: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("other.log"))
        .collect();
    assert_eq!(naming, vec![line.as_str()], "verify output: {out}");

    fs::remove_file(dirs.mirrors[0].join("other.log")).expect("remove the stray copy");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after removing the stray copy: {out}");
}

#[test]
fn rules_status_shows_rules() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(3);
    let config = write_config(&dirs, "");
    let mount = Mount::with_config(&dirs, &config, &[], &[]);

    let out = common::logmirror(&["status", path_str(mount.mnt())]);
    out.assert_success("logmirror status");
    let expected = [
        (
            0,
            " (a): ",
            "  rules: audit/** (sync, ack 2 of 2), app/*.log (async)",
        ),
        (1, " (b): ", "  rules: audit/** (sync, ack 2 of 2)"),
        (2, ": ", "  rules: paths no rule matches (async)"),
    ];
    let text: Vec<&str> = out.stdout.lines().collect();
    for (index, label, rules) in expected {
        let heading = format!("mirror dir:{}{label}", dirs.mirrors[index].display());
        let at = text
            .iter()
            .position(|l| l.starts_with(&heading))
            .unwrap_or_else(|| panic!("no line starts with {heading:?}: {out}"));
        assert_eq!(text[at + 1], rules, "status: {out}");
    }

    let out = common::logmirror(&["status", path_str(mount.mnt()), "--json"]);
    out.assert_success("logmirror status --json");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("status JSON");
    let mirrors = json["mirrors"].as_array().expect("mirrors array");
    assert_eq!(mirrors.len(), 3);
    let mirror = |index: usize| {
        let name = format!("dir:{}", dirs.mirrors[index].display());
        mirrors
            .iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no mirror {name} in status: {out}"))
    };
    assert_eq!(mirror(0)["label"], "a");
    assert_eq!(mirror(1)["label"], "b");
    assert!(mirror(2)["label"].is_null());
    let rules = mirror(0)["rules"].as_array().expect("rules array");
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0]["path"], "audit/**");
    assert_eq!(rules[0]["mode"], "sync");
    assert_eq!(rules[0]["ack"], 2);
    assert_eq!(rules[0]["mirrors"], 2);
    assert_eq!(rules[1]["path"], "app/*.log");
    assert_eq!(rules[1]["mode"], "async");
    let rules = mirror(2)["rules"].as_array().expect("rules array");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["mode"], "async");
    assert!(rules[0]["path"].is_null());
}

/// Runs `logmirror mount` with a config file of `text` and asserts exit code 2, nothing
/// mounted, and `message` on stderr.
fn assert_config_error(dirs: &TestDirs, text: &str, message: &str) {
    let path = dirs.root.join("bad.toml");
    fs::write(&path, text).expect("write config file");
    let out = common::logmirror(&[
        "mount",
        path_str(&dirs.backing),
        path_str(&dirs.mnt),
        "--config",
        path_str(&path),
    ]);
    if common::is_mounted(&dirs.mnt) {
        common::fusermount(&["-u", "-z"], &dirs.mnt);
        panic!("a config error left {:?} mounted: {out}", dirs.mnt);
    }
    assert_eq!(out.code(), EXIT_USAGE, "exit code for {text:?}: {out}");
    assert!(
        out.stderr.contains(message),
        "stderr does not contain {message:?} for {text:?}: {out}"
    );
}

#[test]
fn rules_config_errors() {
    let dirs = TestDirs::new(2);
    let m0 = dirs.mirrors[0].display();
    let m1 = dirs.mirrors[1].display();
    let named = format!("[mirrors.a]\nurl = \"dir:{m0}\"\n[mirrors.b]\nurl = \"dir:{m1}\"\n");
    let rule = |body: &str| format!("{named}[[rule]]\n{body}\n");
    let cases = [
        (
            rule("path = \"audit/**\"\nmirrors = [\"a\", \"offsite\"]"),
            "rule 1 (path \"audit/**\"): unknown mirror \"offsite\"; the named mirrors are: a, \
             b. Define it as [mirrors.offsite] with a url"
                .to_string(),
        ),
        (
            rule("path = \"audit/**\"\nmirrors = [\"a\", \"b\"]\nack = 3"),
            "rule 1 (path \"audit/**\"): ack = 3 is larger than the number of its mirrors (2); \
             use ack = \"all\" or at most 2"
                .to_string(),
        ),
        (
            rule("path = \"audit/[x\"\nmirrors = [\"a\", \"b\"]"),
            "rule 1 (path \"audit/[x\"): invalid path glob \"audit/[x\": ".to_string(),
        ),
        (
            rule("path = \"/audit/**\"\nmirrors = [\"a\", \"b\"]"),
            "rule 1 (path \"/audit/**\"): the path glob \"/audit/**\" starts with '/'; globs \
             are relative to the mount root, as in \"audit/**\""
                .to_string(),
        ),
        (
            rule(
                "path = \"debug/**\"\nmirrors = []\nmode = \"sync\"\n[[rule]]\npath = \"a\"\nmirrors = [\"a\", \"b\"]",
            ),
            "rule 1 (path \"debug/**\"): mode = \"sync\" and ack need mirrors, and this rule \
             lists none (local only); remove them or list mirrors"
                .to_string(),
        ),
        (
            rule("path = \"audit/**\"\nmirrors = [\"a\", \"a\", \"b\"]"),
            "rule 1 (path \"audit/**\"): mirror \"a\" is listed twice".to_string(),
        ),
        (
            rule("path = \"audit/**\"\nmirrors = [\"a\"]"),
            "mirror \"b\" is not used by any [[rule]], so it would receive nothing; add it to \
             a rule's mirrors or remove [mirrors.b]"
                .to_string(),
        ),
        (
            format!("[mirrors.a]\nurl = \"dir:{m0}\"\n[mirrors.a]\nurl = \"dir:{m1}\"\n"),
            "duplicate key".to_string(),
        ),
        (
            format!(
                "mirror = \"dir:{m0}\"\n[mirrors.a]\nurl = \"dir:{m0}\"\n[[rule]]\npath = \
                 \"x/**\"\nmirrors = [\"a\"]\n"
            ),
            format!("mirror dir:{m0} is given twice"),
        ),
        (
            rule("path = \"audit/**\"\nmirrors = [\"a\", \"b\"]\nmode = \"fast\""),
            "rule 1 (path \"audit/**\"): invalid mode \"fast\"; expected sync or async".to_string(),
        ),
        (
            format!("[mirrors.\"off site\"]\nurl = \"dir:{m0}\"\n"),
            "invalid value \"off site\" for mirrors: expected a mirror name of 1 to 64 letters, \
             digits, '-' or '_', as in [mirrors.offsite]"
                .to_string(),
        ),
        (
            format!("{named}[[rule]]\npath = \"a/**\"\nmirrors = [\"a\", \"b\"]\nacks = 1\n"),
            "unknown field `acks`".to_string(),
        ),
    ];
    for (text, message) in &cases {
        assert_config_error(&dirs, text, message);
    }
}
