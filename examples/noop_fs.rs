//! No-op FUSE filesystem for `scripts/bench`: it measures the bare cost of a FUSE round trip.
//!
//! Usage: `cargo run --release --example noop_fs -- MOUNTPOINT [THREADS]`
//!
//! Every name in the root directory exists as a regular file, empty until written, so
//! `open(O_CREAT)` and `O_APPEND` writes succeed. It replies to a write with the write's length
//! and drops the data. Its only state is each file's size, kept so that the benchmark writer's
//! final `stat` matches what it appended. Reads return no data. THREADS (default 2, as logmirror
//! uses on two cores) is the number of FUSE request threads. Unmount with
//! `fusermount3 -u MOUNTPOINT`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(1);
/// Same maximum write size as logmirror, so both receive writes of the same size.
const MAX_WRITE_BYTES: u32 = 1 << 20;

/// File sizes by inode. Inode 1 is the root directory and inode N + 2 the Nth name looked up.
#[derive(Default)]
struct Files {
    inodes: HashMap<OsString, u64>,
    sizes: Vec<u64>,
}

#[derive(Default)]
struct NoopFs {
    files: Mutex<Files>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let (kind, perm, nlink) = if ino == 1 {
        (FileType::Directory, 0o755, 2)
    } else {
        (FileType::RegularFile, 0o644, 1)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

impl NoopFs {
    /// Returns the attributes of `name` in the root directory, adding the file when it is new.
    fn entry(&self, name: &OsStr) -> FileAttr {
        let mut files = self
            .files
            .lock()
            .expect("no thread panics while holding the lock");
        let next = files.sizes.len() as u64 + 2;
        let ino = *files.inodes.entry(name.to_owned()).or_insert(next);
        if ino == next {
            files.sizes.push(0);
        }
        attr(ino, files.sizes[(ino - 2) as usize])
    }

    /// Returns the attributes of inode `ino`, or `None` if no lookup returned it.
    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        if ino == 1 {
            return Some(attr(1, 0));
        }
        let files = self
            .files
            .lock()
            .expect("no thread panics while holding the lock");
        let size = *files.sizes.get(ino.checked_sub(2)? as usize)?;
        Some(attr(ino, size))
    }
}

impl Filesystem for NoopFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
            config.set_max_write(max).ok();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 {
            reply.error(Errno::ENOENT);
            return;
        }
        reply.entry(&TTL, &self.entry(name), Generation(0));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let (Some(size), Some(index)) = (size, ino.0.checked_sub(2)) {
            let mut files = self
                .files
                .lock()
                .expect("no thread panics while holding the lock");
            if let Some(slot) = files.sizes.get_mut(index as usize) {
                *slot = size;
            }
        }
        match self.attr_of(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != 1 {
            reply.error(Errno::ENOENT);
            return;
        }
        let attr = self.entry(name);
        reply.created(
            &TTL,
            &attr,
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(index) = ino.0.checked_sub(2) {
            let mut files = self
                .files
                .lock()
                .expect("no thread panics while holding the lock");
            if let Some(slot) = files.sizes.get_mut(index as usize) {
                *slot = (*slot).max(offset + data.len() as u64);
            }
        }
        reply.written(data.len() as u32);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        reply.data(&[]);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let files = self
            .files
            .lock()
            .expect("no thread panics while holding the lock");
        let mut entries = vec![
            (1, FileType::Directory, OsString::from(".")),
            (1, FileType::Directory, OsString::from("..")),
        ];
        for (name, ino) in &files.inodes {
            entries.push((*ino, FileType::RegularFile, name.clone()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), threads, None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: noop_fs MOUNTPOINT [THREADS]");
        std::process::exit(2);
    };
    let threads = match threads.map(|t| t.to_string_lossy().into_owned()) {
        None => 2,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                eprintln!("noop_fs: invalid THREADS {text:?}; give a whole number from 1 to 64");
                std::process::exit(2);
            }
        },
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    config.mount_options = vec![
        MountOption::FSName("noop".into()),
        MountOption::Subtype("noop_fs".into()),
        MountOption::DefaultPermissions,
    ];
    let mountpoint = PathBuf::from(mountpoint);
    if let Err(e) = fuser::mount(NoopFs::default(), &mountpoint, &config) {
        eprintln!("noop_fs: mount on {} failed: {e}", mountpoint.display());
        std::process::exit(1);
    }
}
