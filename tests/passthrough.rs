//! Read passthrough (`passthrough=auto|off`): read-only opens of files that no handle writes reach
//! the backing file through the kernel, while every write still goes through the daemon and
//! its journal to the mirrors.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use common::semantics::errno_of;
use common::{
    Mode, Mount, REQUIRE_FUSE_VAR, Reads, SYNC_TIMEOUT_SECS, TestDirs, can_mount, sha256_hex,
};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn reads(mount: &Mount) -> Reads {
    mount.status().reads
}

/// Mounts with passthrough=auto. Returns `None` (the test skips) when the kernel or the
/// privileges here do not allow passthrough, unless the FUSE tests are required to run.
fn mount_with_passthrough(dirs: &TestDirs) -> Option<Mount<'_>> {
    let mut options = dirs.options(Mode::Async);
    options.push("passthrough=auto".to_string());
    let mount = Mount::with_options(dirs, &options);
    let state = reads(&mount).passthrough;
    if state == "active" {
        return Some(mount);
    }
    if std::env::var(REQUIRE_FUSE_VAR).is_ok_and(|value| value == "1") {
        panic!(
            "read passthrough is {state:?}, not active; {}",
            mount.log_tail(2000)
        );
    }
    eprintln!("SKIP: read passthrough is {state:?} here (kernel before 6.9, or no CAP_SYS_ADMIN)");
    None
}

/// Writes `data` to `name` through the mount and closes it.
fn write_closed(mount: &Mount, name: &str, data: &[u8]) {
    fs::write(mount.mnt().join(name), data).expect("write through the mount");
}

fn sync_mirrors(mount: &Mount) {
    mount
        .sync(SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
}

/// Maps `len` bytes of `file` with `prot` and `flags`; returns the mapping or the errno.
fn map(file: &File, len: usize, prot: i32, flags: i32) -> Result<*mut libc::c_void, i32> {
    // SAFETY: a new mapping of an open file; the kernel checks the arguments.
    let map = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
    if map == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    Ok(map)
}

#[test]
fn closed_file_bypasses_daemon() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let Some(mount) = mount_with_passthrough(&dirs) else {
        return;
    };
    let data = pattern(8 * MIB + 123, 1);
    write_closed(&mount, "rotated.log.1", &data);
    let before = reads(&mount);

    let mut read = Vec::new();
    File::open(mount.mnt().join("rotated.log.1"))
        .and_then(|mut f| f.read_to_end(&mut read))
        .expect("read through the mount");

    assert_eq!(sha256_hex(&read), sha256_hex(&data), "bytes read back");
    let after = reads(&mount);
    assert_eq!(after.passthrough_opens, before.passthrough_opens + 1);
    assert_eq!(
        after.served, before.served,
        "read requests the daemon served"
    );
    mount.unmount();
}

#[test]
fn writer_beside_passthrough_reader() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let Some(mount) = mount_with_passthrough(&dirs) else {
        return;
    };
    let path = mount.mnt().join("app.log");
    let first = pattern(300_000, 2);
    write_closed(&mount, "app.log", &first);
    let before = reads(&mount);
    let reader = File::open(&path).expect("open the reader");
    assert_eq!(
        reads(&mount).passthrough_opens,
        before.passthrough_opens + 1
    );

    // The kernel refuses any open without FOPEN_PASSTHROUGH while the reader is open, so
    // the writer gets FOPEN_PASSTHROUGH with FOPEN_DIRECT_IO: its writes reach the daemon.
    let mut writer = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open for appending while the reader is open");
    let appended = pattern(200_000, 3);
    writer.write_all(&appended).expect("append");
    // splice(2) into the file takes another kernel path than write(2).
    let spliced = pattern(70_000, 4);
    let at = (first.len() + appended.len()) as u64;
    let positioned = OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open for writing");
    splice_into(&positioned, at, &spliced);

    let mut expected = first.clone();
    expected.extend_from_slice(&appended);
    expected.extend_from_slice(&spliced);
    let mut seen = vec![0u8; expected.len() + 10];
    let n = reader.read_at(&mut seen, 0).expect("read by the reader");
    assert_eq!(
        sha256_hex(&seen[..n]),
        sha256_hex(&expected),
        "reader bytes"
    );

    // A read-write handle could map the file shared and writable onto the backing file.
    let read_write = OpenOptions::new().read(true).write(true).open(&path);
    assert_eq!(errno_of(&read_write), libc::ETXTBSY, "read-write open");
    assert_eq!(
        reads(&mount).read_write_refused,
        before.read_write_refused + 1
    );

    sync_mirrors(&mount);
    let mirrored = fs::read(dirs.mirrors[0].join("app.log")).expect("read the mirror");
    assert_eq!(sha256_hex(&mirrored), sha256_hex(&expected), "mirror bytes");

    drop((reader, writer, positioned));
    // With every handle closed the file may be opened read-write again.
    common::wait_until(
        std::time::Duration::from_secs(30),
        "a read-write open after the handles closed",
        || match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        },
    );
    mount.unmount();
}

/// Moves `data` into `file` at `offset` through a pipe with splice(2).
fn splice_into(file: &File, offset: u64, data: &[u8]) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let mut done = 0;
    let mut off = offset as i64;
    while done < data.len() {
        let chunk = &data[done..data.len().min(done + 32 * 1024)];
        // SAFETY: writes `chunk` to the pipe's write end, which this function owns.
        let put = unsafe { libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) };
        assert_eq!(put, chunk.len() as isize, "write to the pipe");
        let mut left = chunk.len();
        while left > 0 {
            // SAFETY: moves bytes from the pipe's read end to the open file at `off`.
            let moved = unsafe {
                libc::splice(
                    fds[0],
                    std::ptr::null_mut(),
                    file.as_raw_fd(),
                    &mut off,
                    left,
                    0,
                )
            };
            assert!(moved > 0, "splice: {}", std::io::Error::last_os_error());
            left -= moved as usize;
        }
        done += chunk.len();
    }
    // SAFETY: closes the two pipe descriptors made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn reader_of_live_file_follows_appends() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let Some(mount) = mount_with_passthrough(&dirs) else {
        return;
    };
    let path = mount.mnt().join("live.log");
    let mut writer = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the writer");
    writer.write_all(b"line 0\n").expect("first line");
    let before = reads(&mount);
    let mut reader = File::open(&path).expect("open the reader while the writer is open");
    assert_eq!(
        reads(&mount).passthrough_opens,
        before.passthrough_opens,
        "a reader of a file open for writing must not pass through"
    );

    let mut expected = b"line 0\n".to_vec();
    let mut seen = Vec::new();
    for i in 1..=200 {
        let line = format!("line {i} {}\n", "x".repeat(i * 37 % 500));
        writer.write_all(line.as_bytes()).expect("append");
        expected.extend_from_slice(line.as_bytes());
        // As tail -F does: read from the reader's position until end of file.
        reader.read_to_end(&mut seen).expect("read the new lines");
        assert_eq!(seen.len(), expected.len(), "bytes seen after line {i}");
    }
    assert_eq!(sha256_hex(&seen), sha256_hex(&expected));
    assert!(
        reads(&mount).served > before.served,
        "the daemon served the reader"
    );
    drop((reader, writer));
    sync_mirrors(&mount);
    let mirrored = fs::read(dirs.mirrors[0].join("live.log")).expect("read the mirror");
    assert_eq!(sha256_hex(&mirrored), sha256_hex(&expected), "mirror bytes");
    mount.unmount();
}

#[test]
fn mmap_of_passthrough_handle() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let Some(mount) = mount_with_passthrough(&dirs) else {
        return;
    };
    let data = pattern(3 * MIB + 17, 5);
    write_closed(&mount, "mapped.log", &data);
    let path = mount.mnt().join("mapped.log");
    let before = reads(&mount);
    let file = File::open(&path).expect("open read-only");

    let shared = map(&file, data.len(), libc::PROT_READ, libc::MAP_SHARED).expect("mmap shared");
    // SAFETY: the mapping is data.len() bytes long and readable.
    let mapped = unsafe { std::slice::from_raw_parts(shared.cast::<u8>(), data.len()) };
    assert_eq!(sha256_hex(mapped), sha256_hex(&data), "mapped bytes");
    // SAFETY: unmaps the mapping made above; `mapped` is not used after this.
    unsafe { libc::munmap(shared, data.len()) };

    // A read-only handle cannot be mapped shared and writable.
    let writable = map(
        &file,
        data.len(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    );
    assert_eq!(writable.err(), Some(libc::EACCES), "shared writable mmap");

    // A private writable mapping changes only this process's copy.
    let private = map(
        &file,
        data.len(),
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )
    .expect("mmap private");
    // SAFETY: the private mapping is data.len() bytes long and writable.
    unsafe { std::slice::from_raw_parts_mut(private.cast::<u8>(), 4) }.copy_from_slice(b"XXXX");
    // SAFETY: unmaps the private mapping made above.
    unsafe { libc::munmap(private, data.len()) };
    drop(file);

    let after = reads(&mount);
    assert_eq!(
        after.served, before.served,
        "read requests the daemon served"
    );
    assert_eq!(after.passthrough_opens, before.passthrough_opens + 1);
    let backing = fs::read(dirs.backing.join("mapped.log")).expect("read the backing file");
    assert_eq!(sha256_hex(&backing), sha256_hex(&data), "backing bytes");
    mount.unmount();
}

#[test]
fn passthrough_off_serves_every_read() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mut options = dirs.options(Mode::Async);
    options.push("passthrough=off".to_string());
    let mount = Mount::with_options(&dirs, &options);
    assert_eq!(reads(&mount).passthrough, "off");
    let data = pattern(2 * MIB + 5, 6);
    write_closed(&mount, "old.log", &data);
    let path = mount.mnt().join("old.log");

    let reader = File::open(&path).expect("open read-only");
    let mut read = vec![0u8; data.len() + 1];
    let n = reader.read_at(&mut read, 0).expect("read");
    assert_eq!(sha256_hex(&read[..n]), sha256_hex(&data), "bytes read back");
    // Without passthrough a read-write open beside a reader is as before.
    let read_write = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOATIME)
        .open(&path);
    assert_eq!(errno_of(&read_write), 0, "read-write open beside a reader");
    drop(read_write);

    let after = reads(&mount);
    assert_eq!(after.passthrough_opens, 0);
    assert!(after.served > 0, "the daemon served the reads");
    drop(reader);
    mount.unmount();
}

/// Reads of a rotated file while its successor is written: the rotated file passes
/// through, the live one does not, and both read back exact bytes.
#[test]
fn rotated_file_passes_through() {
    if !can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let Some(mount) = mount_with_passthrough(&dirs) else {
        return;
    };
    let old = pattern(MIB, 7);
    write_closed(&mount, "app.log", &old);
    fs::rename(mount.mnt().join("app.log"), mount.mnt().join("app.log.1")).expect("rotate");
    let mut live = OpenOptions::new()
        .create(true)
        .append(true)
        .open(mount.mnt().join("app.log"))
        .expect("open the new live file");
    live.write_all(b"after rotation\n").expect("append");

    let before = reads(&mount);
    let rotated = fs::read(mount.mnt().join("app.log.1")).expect("read the rotated file");
    let current = fs::read(mount.mnt().join("app.log")).expect("read the live file");
    assert_eq!(sha256_hex(&rotated), sha256_hex(&old));
    assert_eq!(current, b"after rotation\n");
    let after = reads(&mount);
    assert_eq!(after.passthrough_opens, before.passthrough_opens + 1);
    drop(live);
    sync_mirrors(&mount);
    let mirrored = fs::read(dirs.mirrors[0].join("app.log.1")).expect("read the mirror");
    assert_eq!(sha256_hex(&mirrored), sha256_hex(&old));
    mount.unmount();
}
