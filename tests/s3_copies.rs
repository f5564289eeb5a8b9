//! Readable copies of an S3 mirror against a real Garage on loopback. Files written through
//! the mount appear as plain objects at `host1/<key>`, equal byte for byte. Renames, unlinks
//! and truncations reach the store. A 256 MiB log appended in 4 KiB writes costs less than
//! three times its size in uploads. Verify names every copy changed behind the mirror's
//! back, and a repair or a restart after `kill -9` brings the copies back.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Mode, Mount, TestDirs, path_str, wait_until};
use garage::{Garage, TestClient};

const PREFIX: &str = "host1";
/// How long a copy may take to appear: one materialize interval of the test plus uploads.
const COPY_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn mount_options(garage: &Garage, extra: &[&str]) -> Vec<String> {
    let mut options = vec![
        format!("mirror=s3://{}/{PREFIX}", garage.bucket),
        garage.options(),
        format!("mode={}", Mode::Async.as_str()),
    ];
    options.extend(extra.iter().map(|s| s.to_string()));
    options
}

/// Returns the path in the mount of a file name given as raw bytes.
fn mnt_path(dirs: &TestDirs, name: &[u8]) -> PathBuf {
    dirs.mnt.join(OsStr::from_bytes(name))
}

/// Describes an object's content briefly for failure messages.
fn describe(content: &Option<Vec<u8>>) -> String {
    match content {
        None => "no object".to_string(),
        Some(bytes) => format!(
            "{} bytes starting {:?}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        ),
    }
}

/// Waits until the object at `key` contains exactly `expected`.
fn wait_for_copy(client: &TestClient, key: &str, expected: &[u8]) {
    wait_until(COPY_TIMEOUT, &format!("copy {key:?}"), || {
        let found = client.try_get(key);
        match &found {
            Some(bytes) if bytes == expected => Ok(()),
            _ => Err(format!(
                "{}, expected {}",
                describe(&found),
                describe(&Some(expected.to_vec()))
            )),
        }
    });
}

/// Waits until there is no object at `key`.
fn wait_for_no_copy(client: &TestClient, key: &str) {
    wait_until(
        COPY_TIMEOUT,
        &format!("no copy at {key:?}"),
        || match client.try_get(key) {
            None => Ok(()),
            found => Err(describe(&found)),
        },
    );
}

/// Returns the keys under the test prefix outside the mirror's own folder.
fn copy_keys(client: &TestClient) -> Vec<String> {
    let reserved = format!("{PREFIX}/.logmirror/");
    client
        .list(&format!("{PREFIX}/"))
        .into_iter()
        .filter(|key| !key.starts_with(&reserved))
        .collect()
}

#[test]
fn copies_awkward_names() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    // An interval of an hour: only closing a file can write its copy in time.
    let options = mount_options(&garage, &["materialize_interval=1h"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let client = garage.client();

    let cases: &[(&[u8], &str)] = &[
        (b"app log.txt", "host1/app log.txt"),
        (
            "\u{fc}n\u{ef}c\u{f8}d\u{e9}-\u{65e5}\u{672c}.log".as_bytes(),
            "host1/\u{fc}n\u{ef}c\u{f8}d\u{e9}-\u{65e5}\u{672c}.log",
        ),
        (b"100%.log", "host1/100%25.log"),
        (b"%41.log", "host1/%2541.log"),
        (b"a+b#c?d&e=f.log", "host1/a+b#c?d&e=f.log"),
        (b"new\nline.log", "host1/new%0Aline.log"),
        (b"tab\there", "host1/tab%09here"),
        (b"latin1-\xe9t\xe9.log", "host1/latin1-%E9t%E9.log"),
        (b"bad-\xff\xfe", "host1/bad-%FF%FE"),
        (b".hidden", "host1/.hidden"),
        (b".logmirrorx", "host1/.logmirrorx"),
        (
            b"sub dir/nested/.logmirror",
            "host1/sub dir/nested/.logmirror",
        ),
        (b"empty", "host1/empty"),
    ];
    fs::create_dir_all(dirs.mnt.join("sub dir/nested")).expect("mkdir through the mount");
    for (index, (name, _)) in cases.iter().enumerate() {
        let content = if *name == b"empty" {
            Vec::new()
        } else {
            format!("file {index}: {}\n", String::from_utf8_lossy(name)).into_bytes()
        };
        fs::write(mnt_path(&dirs, name), &content)
            .unwrap_or_else(|e| panic!("write {:?}: {e}", String::from_utf8_lossy(name)));
    }
    std::os::unix::fs::symlink("app log.txt", dirs.mnt.join("link")).expect("symlink");

    for (name, key) in cases {
        let content = fs::read(dirs.backing.join(OsStr::from_bytes(name))).expect("read backing");
        wait_for_copy(&client, key, &content);
    }
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    assert!(out.stdout.contains("differences: 0"), "{out}");

    // Directories and the symlink get no object; every file exactly one.
    let mut expected: Vec<String> = cases.iter().map(|(_, key)| key.to_string()).collect();
    expected.sort();
    assert_eq!(copy_keys(&client), expected);
    mount.unmount();
}

/// Renames `from` to `to` atomically swapping them (`RENAME_EXCHANGE`).
fn exchange(from: &Path, to: &Path) {
    let from = std::ffi::CString::new(from.as_os_str().as_bytes()).expect("path");
    let to = std::ffi::CString::new(to.as_os_str().as_bytes()).expect("path");
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(rc, 0, "renameat2: {}", std::io::Error::last_os_error());
}

#[test]
fn copies_follow_names_and_sizes() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, &["materialize_interval=1s"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let client = garage.client();
    let mnt = |name: &str| dirs.mnt.join(name);

    fs::write(mnt("a.log"), b"first file\n").expect("write a.log");
    wait_for_copy(&client, "host1/a.log", b"first file\n");

    // rename = new key + delete old, for a file and for a directory.
    fs::create_dir(mnt("b dir")).expect("mkdir");
    fs::rename(mnt("a.log"), mnt("b dir/b.log")).expect("rename file");
    wait_for_copy(&client, "host1/b dir/b.log", b"first file\n");
    wait_for_no_copy(&client, "host1/a.log");
    fs::rename(mnt("b dir"), mnt("c dir")).expect("rename directory");
    wait_for_copy(&client, "host1/c dir/b.log", b"first file\n");
    wait_for_no_copy(&client, "host1/b dir/b.log");

    // unlink = delete.
    fs::remove_file(mnt("c dir/b.log")).expect("unlink");
    wait_for_no_copy(&client, "host1/c dir/b.log");

    // truncate = rewrite, shorter and then longer again.
    let long: Vec<u8> = (0..100u8).collect();
    fs::write(mnt("t.log"), &long).expect("write t.log");
    wait_for_copy(&client, "host1/t.log", &long);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(mnt("t.log"))
        .expect("open t.log");
    file.set_len(10).expect("truncate to 10");
    drop(file);
    wait_for_copy(&client, "host1/t.log", &long[..10]);
    let file = fs::OpenOptions::new()
        .write(true)
        .open(mnt("t.log"))
        .expect("open t.log");
    file.set_len(20).expect("extend to 20");
    drop(file);
    let mut extended = long[..10].to_vec();
    extended.resize(20, 0);
    wait_for_copy(&client, "host1/t.log", &extended);

    // A file that stays open is copied at least every materialize_interval.
    let mut open = fs::File::create(mnt("open.log")).expect("create open.log");
    open.write_all(b"part one\n").expect("write");
    wait_for_copy(&client, "host1/open.log", b"part one\n");
    open.write_all(b"part two\n").expect("write");
    wait_for_copy(&client, "host1/open.log", b"part one\npart two\n");
    drop(open);

    // Rotation while the writer keeps its handle: the old file keeps growing under its new
    // name and a new file takes the old name.
    let mut writer = fs::File::create(mnt("r.log")).expect("create r.log");
    writer.write_all(b"one\n").expect("write");
    fs::rename(mnt("r.log"), mnt("r.log.1")).expect("rotate");
    fs::write(mnt("r.log"), b"fresh\n").expect("write new r.log");
    writer.write_all(b"two\n").expect("write after rotation");
    drop(writer);
    wait_for_copy(&client, "host1/r.log.1", b"one\ntwo\n");
    wait_for_copy(&client, "host1/r.log", b"fresh\n");

    // RENAME_EXCHANGE swaps the copies of two files.
    fs::write(mnt("x.log"), b"x content\n").expect("write x.log");
    fs::write(mnt("y.log"), b"y\n").expect("write y.log");
    wait_for_copy(&client, "host1/x.log", b"x content\n");
    wait_for_copy(&client, "host1/y.log", b"y\n");
    exchange(&mnt("x.log"), &mnt("y.log"));
    wait_for_copy(&client, "host1/x.log", b"y\n");
    wait_for_copy(&client, "host1/y.log", b"x content\n");

    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    let mut expected = [
        "host1/open.log",
        "host1/r.log",
        "host1/r.log.1",
        "host1/t.log",
        "host1/x.log",
        "host1/y.log",
    ];
    expected.sort();
    assert_eq!(copy_keys(&client), expected);
    mount.unmount();
}

/// Appends `blocks` blocks of 4096 bytes to a file with one `write(2)` each; every block
/// holds its own number, so a misplaced block shows.
const APPENDER: &str = r#"
import os, sys
path, blocks = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
for i in range(blocks):
    block = (b"block %010d " % i).ljust(4095, b".") + b"\n"
    assert os.write(fd, block) == 4096
os.close(fd)
"#;

#[test]
fn copies_large_append_bound() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    // The default materialize_interval of 10 s applies. Uncompressed journal objects carry
    // each written byte once, which the bounds below count on.
    let options = mount_options(&garage, &["compression=none"]);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let client = garage.client();
    let size = 256 * MIB;
    let path = dirs.mnt.join("big.log");
    common::python_ok(APPENDER, &[path_str(&path), &(size / 4096).to_string()]);
    assert_eq!(fs::metadata(&path).expect("stat big.log").len(), size);

    wait_until(
        COPY_TIMEOUT,
        "copy of big.log at full size",
        || match client.size("host1/big.log") {
            Some(found) if found == size => Ok(()),
            found => Err(format!("size {found:?}")),
        },
    );
    let copy = client.get("host1/big.log");
    let file = fs::read(dirs.backing.join("big.log")).expect("read backing big.log");
    assert_eq!(copy.len(), file.len());
    assert!(
        copy == file,
        "the copy differs from the file, first at byte {:?}",
        copy.iter().zip(&file).position(|(a, b)| a != b)
    );
    drop((copy, file));

    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let status = mount.status();
    let uploaded = status.mirrors[0]
        .bytes_uploaded
        .expect("an S3 mirror reports bytes_uploaded");
    // The journal objects alone carry every written byte once, and the copy once more.
    assert!(
        uploaded >= 2 * size,
        "bytes_uploaded {uploaded} is less than the journal and one copy"
    );
    assert!(
        uploaded <= 3 * size,
        "bytes_uploaded {uploaded} exceeds three times the {size} bytes written"
    );
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    mount.unmount();
}

#[test]
fn copies_verify_and_repair() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    // An interval of an hour: only closes, repairs and restarts write copies in time.
    let options = mount_options(&garage, &["materialize_interval=1h"]);
    let mut mount = Mount::with_env(&dirs, &options, &garage.env());
    let client = garage.client();
    let files: [(&str, Vec<u8>); 3] = [
        ("f1.log", vec![b'1'; 100]),
        ("f2.log", vec![b'2'; 50]),
        ("f3.log", b"three\n".to_vec()),
    ];
    for (name, content) in &files {
        fs::write(dirs.mnt.join(name), content).expect("write through the mount");
        wait_for_copy(&client, &format!("host1/{name}"), content);
    }
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify before the changes: {out}");

    // Change copies behind the mirror's back.
    client.put("host1/f1.log", vec![b'x'; 100]);
    client.put("host1/f2.log", vec![b'2'; 49]);
    client.put_with_metadata(
        "host1/f3.log",
        b"THREE\n".to_vec(),
        &[("crc32c", "00000000")],
    );
    client.put("host1/stray.txt", b"not a file of the tree\n".to_vec());
    let out = mount.verify();
    assert_eq!(out.code(), common::EXIT_RUNTIME, "verify: {out}");
    let name = format!("s3://{}/{PREFIX}", garage.bucket);
    let f3_crc = crc32c::crc32c(b"three\n");
    let expected = [
        format!("mirror {name}: copy host1/f1.log: no valid crc32c metadata"),
        format!("mirror {name}: copy host1/f2.log: 49 bytes, the file has 50"),
        format!("mirror {name}: copy host1/f3.log: CRC32C 00000000, the file has {f3_crc:08x}"),
        format!(
            "mirror {name}: copy host1/stray.txt: no regular file at this path in the backing tree"
        ),
        format!("mirror {name}: entries compared: 3, differences: 4"),
    ];
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines, expected, "verify output: {out}");

    // A repair resyncs the mirror, which compares and rewrites the copies.
    let out = common::logmirror(&["verify", path_str(&dirs.mnt), "--repair"]);
    assert_eq!(out.code(), common::EXIT_RUNTIME, "verify --repair: {out}");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the repair");
    for (name, content) in &files {
        wait_for_copy(&client, &format!("host1/{name}"), content);
    }
    wait_for_no_copy(&client, "host1/stray.txt");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the repair: {out}");

    // A file written but never closed has no copy within the hour; after kill -9 the next
    // mount compares the copies with the tree and writes it.
    let mut open = fs::File::create(dirs.mnt.join("k.log")).expect("create k.log");
    open.write_all(b"written before the crash\n")
        .expect("write k.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the kill");
    assert_eq!(client.try_get("host1/k.log"), None);
    mount.kill_daemon();
    drop(open);
    mount.clear_dead();
    drop(mount);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    wait_for_copy(&client, "host1/k.log", b"written before the crash\n");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the restart: {out}");

    // After a clean unmount the next mount trusts the copies and compares nothing.
    mount.unmount();
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after a clean restart: {out}");
    let log = fs::read_to_string(&mount.log_file).expect("read daemon log");
    assert!(
        !log.contains("compared with the backing tree"),
        "the copies were compared after a clean stop: {log}"
    );
    mount.unmount();
}
