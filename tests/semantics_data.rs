//! Data paths besides write(2): shared writable mmap with msync, fallocate modes,
//! copy_file_range, and SEEK_DATA/SEEK_HOLE, through the mount and on a plain directory.

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use common::Mode;
use common::semantics::{errno_of, fallocate, lseek, lstat, with_case};

both_modes!(
    mmap_shared_msync,
    fallocate_modes,
    copy_file_range_copies,
    seek_data_hole
);

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn mmap_shared_msync(mode: Mode) {
    const LEN: usize = 256 * 1024;
    with_case(mode, |case| {
        let path = case.in_mount("mapped.bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        file.set_len(LEN as u64).expect("ftruncate");
        // SAFETY: a new shared mapping of LEN bytes of a file that is LEN bytes long.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            map,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let data = pattern(LEN, 7);
        // SAFETY: the mapping is LEN bytes long and writable, and nothing else aliases it.
        unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), LEN) }.copy_from_slice(&data);
        // SAFETY: `map` is the mapping created above.
        let ret = unsafe { libc::msync(map, LEN, libc::MS_SYNC) };
        assert_eq!(ret, 0, "msync: {}", std::io::Error::last_os_error());

        // msync returned, so the pages reached the daemon and the backing file.
        assert!(fs::read(case.in_backing("mapped.bin")).expect("read backing") == data);
        if case.mode == Mode::Sync {
            assert!(fs::read(case.in_mirror("mapped.bin")).expect("read mirror") == data);
        }

        // SAFETY: the mapping is LEN bytes long and writable.
        let mapped = unsafe { std::slice::from_raw_parts_mut(map.cast::<u8>(), LEN) };
        mapped[100..105].copy_from_slice(b"HELLO");
        // SAFETY: `map` is the mapping created above and is not used after this.
        unsafe {
            assert_eq!(libc::msync(map, LEN, libc::MS_SYNC), 0);
            assert_eq!(libc::munmap(map, LEN), 0);
        }
        drop(file);
        let mut expected = data;
        expected[100..105].copy_from_slice(b"HELLO");
        case.sync();
        assert!(fs::read(case.in_mirror("mapped.bin")).expect("read mirror") == expected);
        assert!(fs::read(&path).expect("read through the mount") == expected);
    });
}

/// Size, allocated blocks and content digest of a file after one fallocate step.
#[derive(Debug, PartialEq, Eq)]
struct Step {
    errno: i32,
    size: u64,
    blocks: u64,
    content: String,
}

fn fallocate_steps(root: &Path) -> Vec<Step> {
    let path = root.join("alloc.bin");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .expect("create");
    let mut steps = Vec::new();
    let mut step = |result: std::io::Result<()>| {
        file.sync_all().expect("fsync");
        let meta = file.metadata().expect("fstat");
        steps.push(Step {
            errno: errno_of(&result),
            size: meta.size(),
            blocks: meta.blocks(),
            content: common::semantics::content_digest(&path),
        });
    };
    let m = MIB as i64;
    step(fallocate(&file, 0, 0, m));
    step(fallocate(&file, libc::FALLOC_FL_KEEP_SIZE, m, m));
    step(file.write_all_at(&pattern(MIB as usize, 1), 0));
    step(fallocate(
        &file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        m / 4,
        m / 2,
    ));
    step(fallocate(&file, libc::FALLOC_FL_ZERO_RANGE, 0, 4096));
    step(fallocate(
        &file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        3 * m,
        m,
    ));
    step(fallocate(&file, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096));
    step(fallocate(&file, libc::FALLOC_FL_INSERT_RANGE, 0, 4096));
    steps
}

fn fallocate_modes(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(fallocate_steps);
        let errnos: Vec<i32> = plain.iter().map(|s| s.errno).collect();
        assert_eq!(errnos, [0; 8], "plain directory");
        let sizes: Vec<u64> = plain.iter().map(|s| s.size).collect();
        assert_eq!(sizes, [MIB, MIB, MIB, MIB, MIB, MIB, MIB - 4096, MIB]);
        let blocks: Vec<u64> = plain.iter().map(|s| s.blocks).collect();
        assert_eq!(blocks[..4], [2048, 4096, 4096, 3072], "plain st_blocks");

        // The kernel's FUSE client passes only KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE on to
        // the filesystem and fails the other modes with EOPNOTSUPP itself.
        assert_eq!(mounted[..6], plain[..6], "mount, first six steps");
        assert_eq!(mounted[6].errno, libc::EOPNOTSUPP, "COLLAPSE_RANGE");
        assert_eq!(mounted[7].errno, libc::EOPNOTSUPP, "INSERT_RANGE");
        assert_eq!(mounted[7].size, MIB);
        assert_eq!(mounted[7].content, mounted[5].content);

        let backing = lstat(&case.in_backing("alloc.bin"));
        assert_eq!(backing.blocks(), mounted[7].blocks);
        case.sync();
        let mirrored = lstat(&case.in_mirror("alloc.bin"));
        assert_eq!(mirrored.size(), MIB);
        assert_eq!(
            mirrored.blocks(),
            mounted[7].blocks,
            "st_blocks on the mirror"
        );
    });
}

fn copy_range(from: &fs::File, from_offset: i64, to: &fs::File, to_offset: i64, len: usize) -> i64 {
    let mut from_offset = from_offset;
    let mut to_offset = to_offset;
    let mut copied = 0i64;
    while copied < len as i64 {
        // SAFETY: both offsets point to live i64 values and the descriptors are open.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut from_offset,
                to.as_raw_fd(),
                &mut to_offset,
                len - copied as usize,
                0,
            )
        };
        assert!(
            n >= 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        if n == 0 {
            break;
        }
        copied += n as i64;
    }
    copied
}

/// Copies 20 MiB out of a 24 MiB source at unaligned offsets, then asks for bytes beyond
/// the source's end. Returns the byte counts and the destination's content.
fn copy_files(root: &Path) -> (i64, i64, Vec<u8>) {
    let source = pattern(24 * MIB as usize, 3);
    fs::write(root.join("source.bin"), &source).expect("write source");
    let from = fs::File::open(root.join("source.bin")).expect("open source");
    let to = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(root.join("copy.bin"))
        .expect("create copy");
    let copied = copy_range(&from, 1000, &to, 10, 20 * MIB as usize);
    let past_end = copy_range(&from, 25 * MIB as i64, &to, 0, 4096);
    (
        copied,
        past_end,
        fs::read(root.join("copy.bin")).expect("read copy"),
    )
}

fn copy_file_range_copies(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(copy_files);
        let source = pattern(24 * MIB as usize, 3);
        let mut expected = vec![0u8; 10];
        expected.extend_from_slice(&source[1000..1000 + 20 * MIB as usize]);
        assert_eq!(plain.0, 20 * MIB as i64);
        assert_eq!(plain.1, 0);
        assert!(plain.2 == expected, "plain copy differs");
        assert_eq!(mounted.0, 20 * MIB as i64);
        assert_eq!(mounted.1, 0);
        assert!(mounted.2 == expected, "copy through the mount differs");
    });
}

/// Builds data at 0..4096 and 1 MiB..1 MiB+4096 in a 2 MiB file, then returns SEEK_DATA
/// and SEEK_HOLE from a set of offsets, each as the offset or the negated errno.
fn seek_results(root: &Path) -> Vec<(i64, i64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(root.join("sparse.bin"))
        .expect("create");
    file.write_all_at(&[b'd'; 4096], 0).expect("write");
    file.write_all_at(&[b'e'; 4096], MIB).expect("write");
    file.set_len(2 * MIB).expect("extend");
    file.sync_all().expect("fsync");
    let probe = |offset: i64, whence: i32| match lseek(&file, offset, whence) {
        Ok(at) => at,
        Err(e) => -i64::from(e.raw_os_error().unwrap_or(-1)),
    };
    let m = MIB as i64;
    [0, 100, 4096, 500_000, m, m + 5000, 2 * m - 1, 2 * m, 3 * m]
        .into_iter()
        .map(|offset| {
            (
                probe(offset, libc::SEEK_DATA),
                probe(offset, libc::SEEK_HOLE),
            )
        })
        .collect()
}

fn seek_data_hole(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(seek_results);
        let m = MIB as i64;
        let nxio = -i64::from(libc::ENXIO);
        let expected = vec![
            (0, 4096),
            (100, 4096),
            (m, 4096),
            (m, 500_000),
            (m, m + 4096),
            (nxio, m + 5000),
            (nxio, 2 * m - 1),
            (nxio, nxio),
            (nxio, nxio),
        ];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}
