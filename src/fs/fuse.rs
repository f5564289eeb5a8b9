//! The fuser adapter: decodes each request, calls `ops.rs`, and sends the reply, either at
//! once or from whichever thread acknowledges the journal record (sync mode). A failure is
//! logged here, once, where it becomes an errno.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use fuser::{
    Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::error::Error;
use super::ops::{Caller, SetAttr};
use super::passthrough::Opened;
use super::sys;
use super::{LogFs, MAX_WRITE_BYTES, TTL};
use crate::journal::Seq;

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Logs a failure that is logmirror's own (not a refusal the program should expect), and
/// returns its errno.
fn errno(op: &str, err: Error) -> Errno {
    if err.is_internal() {
        log::error!("{op}: {}", crate::mirror::worker::error_chain(&err));
    } else {
        log::trace!("{op}: {err}");
    }
    Errno::from_i32(err.errno())
}

/// Open flags of a passthrough handle: with `direct_io`, reads and writes still come to the
/// daemon (the kernel lets FOPEN_DIRECT_IO override FOPEN_PASSTHROUGH for them).
fn fopen_flags(direct_io: bool) -> FopenFlags {
    if direct_io {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

impl LogFs {
    /// Replies through `send` once `seq` is acknowledged under the mode in force.
    fn reply_when_acked(
        &self,
        seq: Option<Seq>,
        send: impl FnOnce(Result<(), Errno>) + Send + 'static,
    ) {
        self.acks.complete(
            seq,
            Box::new(move |result| send(result.map_err(Errno::from_i32))),
        );
    }

    /// Asks the kernel for FUSE passthrough when `passthrough=auto` and the daemon may
    /// register backing files. Otherwise read passthrough stays off, and one info line gives
    /// the reason.
    fn init_passthrough(&self, config: &mut KernelConfig) {
        let reads = &self.options.reads;
        if !reads.requested() {
            return;
        }
        let offered = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        let why_not = if !offered {
            Some("the kernel does not offer FUSE passthrough")
        } else if !sys::has_cap_sys_admin() {
            Some("the daemon lacks CAP_SYS_ADMIN, which backing files need")
        } else {
            None
        };
        if let Some(why_not) = why_not {
            log::info!("read passthrough off: {why_not}; reads go through the daemon");
            reads.set_active(false);
            return;
        }
        // NOTE: depth 1 rejects backing files on a stacked filesystem (overlayfs); their
        // reads go through the daemon. Depth 2 would keep overlayfs from stacking on us.
        let active = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        reads.set_active(active);
    }

    /// Replies to a request that made an entry, once its record is acknowledged.
    fn reply_entry(
        &self,
        op: &str,
        result: Result<(FileAttr, Option<Seq>), Error>,
        reply: ReplyEntry,
    ) {
        match result {
            Ok((attr, seq)) => self.reply_when_acked(seq, move |r| match r {
                Ok(()) => reply.entry(&TTL, &attr, Generation(0)),
                Err(e) => reply.error(e),
            }),
            Err(e) => reply.error(errno(op, e)),
        }
    }

    /// Replies to a request without data, once its record is acknowledged.
    fn reply_empty(&self, op: &str, result: Result<Option<Seq>, Error>, reply: ReplyEmpty) {
        match result {
            Ok(seq) => self.reply_when_acked(seq, move |r| match r {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }),
            Err(e) => reply.error(errno(op, e)),
        }
    }

    /// Runs a prepared job on a background thread, which replies once the job's record is
    /// acknowledged.
    fn reply_in_background(
        &self,
        op: &'static str,
        job: Result<impl FnOnce() -> Result<Option<Seq>, Error> + Send + 'static, Error>,
        reply: ReplyEmpty,
    ) {
        let job = match job {
            Ok(job) => job,
            Err(e) => return reply.error(errno(op, e)),
        };
        let acks = self.acks.clone();
        self.background.run(Box::new(move || match job() {
            Ok(seq) => acks.complete(
                seq,
                Box::new(move |result| match result {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(Errno::from_i32(e)),
                }),
            ),
            Err(e) => reply.error(errno(op, e)),
        }));
    }

    /// Replies with a byte count, once the record of the write is acknowledged.
    pub(super) fn reply_written(
        &self,
        op: &str,
        result: Result<(u32, Option<Seq>), Error>,
        reply: ReplyWrite,
    ) {
        match result {
            Ok((written, seq)) => self.reply_when_acked(seq, move |r| match r {
                Ok(()) => reply.written(written),
                Err(e) => reply.error(e),
            }),
            Err(e) => reply.error(errno(op, e)),
        }
    }
}

impl Filesystem for LogFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE_BYTES) {
            config.set_max_write(max).ok();
        }
        // Parallel lookups and readdirs in one directory; the backing filesystem serializes
        // what it must.
        config
            .add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS)
            .ok();
        // Without this flag the kernel requests the security.capability xattr before every write,
        // a second round trip per write. With it, the kernel marks the writes that must clear
        // setuid and setgid, and `ops::write` clears them itself.
        config
            .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
            .ok();
        self.init_passthrough(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match LogFs::lookup(self, parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(errno("lookup", e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        LogFs::forget(self, ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match LogFs::getattr(self, ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(errno("getattr", e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh: fh.map(|f| f.0),
            caller_pid: req.pid(),
            caller_uid: req.uid(),
        };
        match LogFs::setattr(self, ino.0, change) {
            Ok((attr, seq)) => self.reply_when_acked(seq, move |r| match r {
                Ok(()) => reply.attr(&TTL, &attr),
                Err(e) => reply.error(e),
            }),
            Err(e) => reply.error(errno("setattr", e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match LogFs::readlink(self, ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            "mknod",
            LogFs::mknod(self, caller(req), parent.0, name, mode, umask, rdev),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            "mkdir",
            LogFs::mkdir(self, caller(req), parent.0, name, mode, umask),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty("unlink", LogFs::unlink(self, parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty("rmdir", LogFs::unlink(self, parent.0, name, true), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            "symlink",
            LogFs::symlink(self, caller(req), parent.0, link_name, target.as_os_str()),
            reply,
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "rename",
            LogFs::rename(self, parent.0, name, newparent.0, newname, flags.bits()),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.reply_entry(
            "link",
            LogFs::link(self, ino.0, newparent.0, newname),
            reply,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match LogFs::open(self, ino.0, flags.0, &|fd| reply.open_backing(fd)) {
            Ok((fh, Opened::Cached)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Ok((fh, Opened::Passthrough { id, direct_io })) => {
                reply.opened_passthrough(FileHandle(fh), fopen_flags(direct_io), &id)
            }
            Err(e) => reply.error(errno("open", e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match LogFs::read_request(self, fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno("read", e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_suidgid = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        if self.options.when_full_blocks {
            return self.write_or_defer((ino.0, fh.0, offset), data, kill_suidgid, reply);
        }
        self.reply_written(
            "write",
            LogFs::write(self, ino.0, fh.0, offset, data, kill_suidgid, false),
            reply,
        );
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

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        LogFs::release(self, fh.0);
        reply.ok();
    }

    // NOTE: sync_file_range and syncfs never reach this handler, so they commit nothing.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_in_background("fsync", LogFs::fsync(self, fh.0, datasync), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match LogFs::opendir(self, ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = LogFs::readdir(self, fh.0, offset as i64, |entry| {
            reply.add(
                INodeNo(entry.ino),
                entry.next_offset as u64,
                entry.kind,
                OsStr::from_bytes(&entry.name),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        LogFs::releasedir(self, fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.reply_in_background("fsyncdir", LogFs::fsyncdir(self, fh.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match LogFs::statfs(self) {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(errno("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "setxattr",
            LogFs::setxattr(self, ino.0, name, value, flags),
            reply,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if size == 0 {
            match LogFs::getxattr_size(self, ino.0, name) {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(errno("getxattr", e)),
            }
            return;
        }
        match LogFs::getxattr(self, ino.0, name, size) {
            Ok(value) => reply.data(&value),
            Err(e) => reply.error(errno("getxattr", e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            match LogFs::listxattr_size(self, ino.0) {
                Ok(n) => reply.size(n as u32),
                Err(e) => reply.error(errno("listxattr", e)),
            }
            return;
        }
        match LogFs::listxattr(self, ino.0, size) {
            Ok(names) => reply.data(&names),
            Err(e) => reply.error(errno("listxattr", e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.reply_empty("removexattr", LogFs::removexattr(self, ino.0, name), reply);
    }

    // NOTE: O_TMPFILE opens get EOPNOTSUPP, because fuser 0.18 replies ENOSYS to FUSE_TMPFILE.
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let open_backing = |fd: std::os::fd::BorrowedFd<'_>| reply.open_backing(fd);
        let result = LogFs::create(
            self,
            caller(req),
            parent.0,
            name,
            mode & !umask,
            flags,
            &open_backing,
        );
        match result {
            Ok((attr, fh, seq, opened)) => self.reply_when_acked(seq, move |r| match (r, opened) {
                (Ok(()), Opened::Cached) => reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                (Ok(()), Opened::Passthrough { id, direct_io }) => reply.created_passthrough(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    fopen_flags(direct_io),
                    &id,
                ),
                (Err(e), _) => reply.error(e),
            }),
            Err(e) => reply.error(errno("create", e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.reply_empty(
            "fallocate",
            LogFs::fallocate(self, ino.0, fh.0, offset, length, mode),
            reply,
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Programs probe files with ioctls such as TCGETS (isatty); ENOTTY is what a regular
        // file on a local filesystem returns for them.
        // NOTE: inode flags (lsattr, chattr +a) and FICLONE get ENOTTY here too.
        reply.error(Errno::ENOTTY);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match LogFs::lseek(self, fh.0, offset, whence) {
            Ok(offset) => reply.offset(offset),
            Err(e) => reply.error(errno("lseek", e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let source = (fh_in.0, offset_in);
        let target = (ino_out.0, fh_out.0, offset_out);
        let blocks = self.options.when_full_blocks;
        if !(blocks && self.deferred.has_waiting(ino_out.0)) {
            match LogFs::copy_file_range(self, source, target, len, false) {
                Err(Error::BacklogFull) if blocks => {}
                result => return self.reply_written("copy_file_range", result, reply),
            }
        }
        self.defer(ino_out.0, "copy_file_range", reply, move |fs| {
            LogFs::copy_file_range(fs, source, target, len, true)
        });
    }
}
