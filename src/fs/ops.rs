//! Operations on the backing directory. Each change is made on the backing directory first,
//! then journaled; the caller (`fuse.rs`) replies once the returned record is acknowledged.
//!
//! Nothing here replies to the kernel or waits for a mirror.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, TimeOrNow};

use super::error::{Error, backing};
use super::handles::{DirHandle, FileHandle};
use super::inodes::{Inode, Link, ROOT_INO};
use super::passthrough::{OpenBacking, Opened};
use super::sys::{self, DirStream};
use super::{LogFs, MAX_WRITE_BYTES};
use crate::journal::{FileIdentity, Journal, MIN_REFERENCED_BYTES, Op, RelPath, Seq, Timestamp};

/// The process a request comes from.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes of one setattr request.
#[derive(Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
    /// Process id and uid of the caller, to decide whether a truncation clears setuid and
    /// setgid (callers without CAP_FSETID).
    pub caller_pid: u32,
    pub caller_uid: u32,
}

impl SetAttr {
    /// Returns whether the request changes nothing. With FUSE_HANDLE_KILLPRIV_V2 the kernel
    /// sends such a request for `chown(path, -1, -1)` and for a `fallocate` by a caller
    /// without CAP_FSETID, and both must clear setuid and setgid
    /// on a regular file.
    fn changes_nothing(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }

    /// Returns whether a truncation in this request must clear setuid and setgid, as a local
    /// filesystem does for a caller without CAP_FSETID.
    fn truncation_kills_suidgid(&self) -> bool {
        self.size.is_some() && !sys::has_cap_fsetid(self.caller_pid, self.caller_uid)
    }
}

/// One entry of a directory listing.
pub struct ListedEntry {
    pub ino: u64,
    pub next_offset: i64,
    pub kind: FileType,
    pub name: Vec<u8>,
}

pub fn file_attr(st: &libc::stat, ino: u64) -> FileAttr {
    let time = |secs: i64, nanos: i64| {
        if secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(secs as u64, nanos as u32)
        } else {
            UNIX_EPOCH - std::time::Duration::new(secs.unsigned_abs(), 0)
                + std::time::Duration::new(0, nanos as u32)
        }
    };
    FileAttr {
        ino: fuser::INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dirent_type(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// Returns true when open flags allow writing.
fn is_writable(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Counts one more writer on `inode` and returns it, for a handle's `writes_to`.
fn count_writer(inode: Arc<Inode>) -> Arc<Inode> {
    inode.writers.fetch_add(1, Ordering::SeqCst);
    inode
}

fn timestamp(time: TimeOrNow) -> Timestamp {
    let time = match time {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        // fuser 0.18 turns the kernel's (tv_sec < 0, tv_nsec) into UNIX_EPOCH minus
        // (-tv_sec seconds + tv_nsec), which is early by 2 * tv_nsec. Inverting that exact
        // conversion recovers the kernel's pair.
        Err(e) => {
            let before = e.duration();
            Timestamp {
                secs: -(before.as_secs() as i64),
                nanos: before.subsec_nanos(),
            }
        }
    }
}

/// Reads the identity of `inode`'s backing file through `handle` once, so that its writes can
/// be journaled by reference. Without it they are copied into the journal.
fn read_identity(inode: &Inode, handle: &FileHandle) {
    if inode.identity.get().is_some() {
        return;
    }
    match sys::fstat(handle.fd()) {
        Ok(st) => {
            let _ = inode.identity.set(FileIdentity::of(handle.fd(), st.st_ino));
        }
        Err(e) => log::warn!(
            "fstat of the backing file failed, so its writes are copied into the journal: \
             ino={} error={e}",
            inode.ino
        ),
    }
}

fn timespec(time: Option<Timestamp>) -> libc::timespec {
    match time {
        Some(t) => libc::timespec {
            tv_sec: t.secs,
            tv_nsec: t.nanos as i64,
        },
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

impl LogFs {
    fn inode(&self, ino: u64) -> Result<Arc<Inode>, Error> {
        self.inodes.get(ino).ok_or(Error::UnknownInode(ino))
    }

    fn file_handle(&self, fh: u64) -> Result<Arc<FileHandle>, Error> {
        self.handles.file(fh).ok_or(Error::UnknownHandle(fh))
    }

    fn reject_reserved(&self, parent: u64, name: &OsStr) -> Result<(), Error> {
        if self.is_reserved(parent, name) {
            return Err(Error::Reserved(name.to_string_lossy().into_owned()));
        }
        Ok(())
    }

    /// Returns the path of `name` inside directory `parent`, if the directory's path is
    /// known.
    fn child_path(&self, parent: &Inode, name: &OsStr) -> Option<RelPath> {
        self.path_of(parent).map(|p| p.join(name))
    }

    /// Appends `op` to the journal. A change whose path is unknown cannot be journaled; the
    /// mirrors then get it from a resync of the backing tree.
    fn journal(&self, op_name: &'static str, op: Option<Op>) -> Result<Option<Seq>, Error> {
        self.journal_for(op_name, op, None)
    }

    /// Journals as [`Self::journal`] does; `inode` is the file a data change applies to, whose
    /// cached path rule saves a glob match per record. A write to an inode whose identity is
    /// known may be journaled by reference.
    fn journal_for(
        &self,
        op_name: &'static str,
        op: Option<Op>,
        inode: Option<&Inode>,
    ) -> Result<Option<Seq>, Error> {
        let Some(mut op) = op else {
            self.request_resync(op_name, "its path is not known");
            return Ok(None);
        };
        let written_to = inode.and_then(|inode| inode.identity.get().copied());
        match self.journal.append_owned(&mut op, written_to) {
            Ok((seq, _)) => {
                self.note_rule(seq, &op, inode);
                Ok(Some(seq))
            }
            Err(source) => {
                self.acks.request_resync();
                Err(Error::Journal {
                    op: op_name,
                    source,
                })
            }
        }
    }

    /// Tells the acks the rule of a record whose path a rule matches, so that its reply
    /// waits for that rule's mirrors only. A rename or link counts under its new name.
    fn note_rule(&self, seq: Seq, op: &Op, inode: Option<&Inode>) {
        let Some(rules) = &self.acks.policy().rules else {
            return;
        };
        if !rules.acks_depend_on_path() {
            return;
        }
        let path = match op {
            Op::Rename { to, .. } => to,
            Op::Link { path, .. } => path,
            other => other.path(),
        };
        let rule = match inode {
            Some(inode) => self.cached_rule(rules, inode, path),
            None => rules.rule_for(path),
        };
        if rules.acks_differ(rule) {
            self.acks.note_rule(seq, rule);
        }
    }

    /// Returns the rule of `path`, the current path of `inode`, from the inode's cache while
    /// no name changed since it was filled.
    fn cached_rule(&self, rules: &crate::rules::Rules, inode: &Inode, path: &RelPath) -> usize {
        let generation = self.inodes.names_generation();
        let mut cached = inode.rule.lock().expect("rule lock");
        if let Some((at, rule)) = *cached
            && at == generation
        {
            return rule;
        }
        let rule = rules.rule_for(path);
        *cached = Some((generation, rule));
        rule
    }

    /// Takes a resync ticket for a change that has no journal record. In sync mode the
    /// reply then waits for the resync (see `mirror::acks`).
    fn request_resync(&self, op_name: &str, why: &str) {
        if self.acks.request_resync() {
            log::warn!(
                "{op_name} could not be journaled because {why}; mirrors will resync from the backing tree"
            );
        }
    }

    /// Looks up `name` in `parent` and takes one kernel reference on the result.
    fn remember_child(
        &self,
        parent: u64,
        parent_inode: &Inode,
        name: &OsStr,
    ) -> Result<FileAttr, Error> {
        let fd = sys::openat(parent_inode.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(backing("lookup"))?;
        let st = sys::fstat(fd.as_fd()).map_err(backing("lookup"))?;
        let ino = self.inodes.fuse_ino(st.st_ino);
        self.inodes.remember(
            ino,
            fd,
            Link {
                parent,
                name: name.to_os_string(),
            },
        );
        Ok(file_attr(&st, ino))
    }

    /// Gives a new entry to the calling user, as a local filesystem would.
    fn chown_new(
        &self,
        parent: &Inode,
        fd: std::os::fd::BorrowedFd<'_>,
        caller: Caller,
    ) -> Result<(), Error> {
        if !self.is_root {
            return Ok(());
        }
        let parent_st = sys::fstat(parent.fd()).map_err(backing("create"))?;
        let gid = if parent_st.st_mode & libc::S_ISGID != 0 {
            parent_st.st_gid
        } else {
            caller.gid
        };
        sys::fchown_fd(fd, caller.uid, gid).map_err(backing("chown"))
    }

    /// Gives an entry just made by the caller to that caller, and takes one kernel reference
    /// on it. Returns its stat (as the journal record needs it) and its attributes.
    fn adopt_new_entry(
        &self,
        caller: Caller,
        parent: u64,
        parent_inode: &Inode,
        name: &OsStr,
        op: &'static str,
    ) -> Result<(libc::stat, FileAttr), Error> {
        let fd = sys::openat(parent_inode.fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(backing(op))?;
        self.chown_new(parent_inode, fd.as_fd(), caller)?;
        let st = sys::fstat(fd.as_fd()).map_err(backing(op))?;
        let ino = self.inodes.fuse_ino(st.st_ino);
        self.inodes.remember(
            ino,
            fd,
            Link {
                parent,
                name: name.to_os_string(),
            },
        );
        Ok((st, file_attr(&st, ino)))
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Error> {
        if self.is_reserved(parent, name) {
            return Err(Error::Backing {
                op: "lookup",
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let parent_inode = self.inode(parent)?;
        self.remember_child(parent, &parent_inode, name)
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    pub fn getattr(&self, ino: u64) -> Result<FileAttr, Error> {
        let inode = self.inode(ino)?;
        let st = sys::fstat(inode.fd()).map_err(backing("getattr"))?;
        Ok(file_attr(&st, ino))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, Error> {
        let inode = self.inode(ino)?;
        sys::readlink_fd(inode.fd()).map_err(backing("readlink"))
    }

    /// Creates or opens `name` in `parent`; `mode` has the caller's umask applied.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        open_backing: OpenBacking<'_>,
    ) -> Result<(FileAttr, u64, Option<Seq>, Opened), Error> {
        self.reject_reserved(parent, name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let parent_inode = self.inode(parent)?;

        let mode = mode & 0o7777;
        let access = flags & libc::O_ACCMODE;
        let base = access | libc::O_NOFOLLOW;
        let (fd, created) = match sys::openat(
            parent_inode.fd(),
            name,
            base | libc::O_CREAT | libc::O_EXCL,
            mode,
        ) {
            Ok(fd) => (fd, true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) && flags & libc::O_EXCL == 0 => (
                sys::openat(parent_inode.fd(), name, base, 0).map_err(backing("open"))?,
                false,
            ),
            Err(e) => return Err(backing("create")(e)),
        };
        if created {
            self.chown_new(&parent_inode, fd.as_fd(), caller)?;
        }
        let attr = self.remember_child(parent, &parent_inode, name)?;
        let inode = self.inode(attr.ino.0)?;
        let opened = self.open_mode(&inode, flags, fd.as_fd(), open_backing)?;
        let passthrough = matches!(opened, Opened::Passthrough { .. });
        let uncount = |e: Error| {
            let mut modes = inode.open_modes.lock().expect("open modes lock");
            modes.release(passthrough);
            e
        };

        let path = self.child_path(&parent_inode, name);
        let mut seq = None;
        if created {
            let st = sys::fstat(fd.as_fd())
                .map_err(backing("create"))
                .map_err(uncount)?;
            let op = path.map(|path| Op::Create {
                path,
                mode: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
            });
            seq = self.journal("create", op).map_err(uncount)?;
        } else if flags & libc::O_TRUNC != 0 {
            sys::ftruncate(fd.as_fd(), 0)
                .map_err(backing("truncate"))
                .map_err(uncount)?;
            let op = path.map(|path| Op::Truncate { path, size: 0 });
            seq = self.journal("truncate", op).map_err(uncount)?;
        }
        if created || flags & libc::O_TRUNC != 0 {
            inode.changed.store(true, Ordering::SeqCst);
        }
        let fh = self.insert_handle(fd, flags, inode, &opened);
        Ok((attr, fh, seq, opened))
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<(FileAttr, Option<Seq>), Error> {
        self.reject_reserved(parent, name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let parent_inode = self.inode(parent)?;
        let kind = mode & libc::S_IFMT;
        let mode = kind | (mode & !umask & 0o7777);

        sys::mknodat(parent_inode.fd(), name, mode, rdev as u64).map_err(backing("mknod"))?;
        let (st, attr) = self.adopt_new_entry(caller, parent, &parent_inode, name, "mknod")?;

        let op = self.child_path(&parent_inode, name).map(|path| {
            if kind == libc::S_IFREG || kind == 0 {
                Op::Create {
                    path,
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            } else {
                Op::Mknod {
                    path,
                    mode: st.st_mode,
                    rdev: st.st_rdev,
                    uid: st.st_uid,
                    gid: st.st_gid,
                }
            }
        });
        let seq = self.journal("mknod", op)?;
        Ok((attr, seq))
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<(FileAttr, Option<Seq>), Error> {
        self.reject_reserved(parent, name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let parent_inode = self.inode(parent)?;
        sys::mkdirat(parent_inode.fd(), name, mode & !umask & 0o7777).map_err(backing("mkdir"))?;
        let (st, attr) = self.adopt_new_entry(caller, parent, &parent_inode, name, "mkdir")?;
        let op = self.child_path(&parent_inode, name).map(|path| Op::Mkdir {
            path,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        });
        let seq = self.journal("mkdir", op)?;
        Ok((attr, seq))
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> Result<(FileAttr, Option<Seq>), Error> {
        self.reject_reserved(parent, name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let parent_inode = self.inode(parent)?;
        sys::symlinkat(target, parent_inode.fd(), name).map_err(backing("symlink"))?;
        let (st, attr) = self.adopt_new_entry(caller, parent, &parent_inode, name, "symlink")?;
        let op = self
            .child_path(&parent_inode, name)
            .map(|path| Op::Symlink {
                path,
                target: target.as_bytes().to_vec(),
                uid: st.st_uid,
                gid: st.st_gid,
            });
        let seq = self.journal("symlink", op)?;
        Ok((attr, seq))
    }

    pub fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> Result<(FileAttr, Option<Seq>), Error> {
        self.reject_reserved(new_parent, new_name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let inode = self.inode(ino)?;
        let parent_inode = self.inode(new_parent)?;
        let existing = self.path_of(&inode);
        sys::link_fd(inode.fd(), parent_inode.fd(), new_name).map_err(backing("link"))?;
        self.inodes.names_changed();
        let attr = self.remember_child(new_parent, &parent_inode, new_name)?;
        let path = self.child_path(&parent_inode, new_name);
        let op = existing
            .zip(path)
            .map(|(existing, path)| Op::Link { existing, path });
        let seq = self.journal("link", op)?;
        Ok((attr, seq))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr, is_dir: bool) -> Result<Option<Seq>, Error> {
        let op_name = if is_dir { "rmdir" } else { "unlink" };
        self.reject_reserved(parent, name)?;
        let _names = self.namespace.write().expect("namespace lock");
        let parent_inode = self.inode(parent)?;
        let st = sys::fstatat(parent_inode.fd(), name).map_err(backing(op_name))?;
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(parent_inode.fd(), name, flags).map_err(backing(op_name))?;
        self.inodes.names_changed();
        if let Some(child) = self.inodes.get(self.inodes.fuse_ino(st.st_ino)) {
            child.remove_link(parent, name);
        }
        let op = self.child_path(&parent_inode, name).map(|path| {
            if is_dir {
                Op::Rmdir { path }
            } else {
                Op::Unlink { path }
            }
        });
        self.journal(op_name, op)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<Option<Seq>, Error> {
        self.reject_reserved(parent, name)?;
        self.reject_reserved(new_parent, new_name)?;
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(Error::Unsupported("rename with RENAME_WHITEOUT"));
        }
        let _names = self.namespace.write().expect("namespace lock");
        let from_dir = self.inode(parent)?;
        let to_dir = self.inode(new_parent)?;
        let from_st = sys::fstatat(from_dir.fd(), name).map_err(backing("rename"))?;
        let to_st = sys::fstatat(to_dir.fd(), new_name).ok();
        sys::renameat2(from_dir.fd(), name, to_dir.fd(), new_name, flags)
            .map_err(backing("rename"))?;
        self.inodes.names_changed();

        let from_ino = self.inodes.fuse_ino(from_st.st_ino);
        let to_ino = to_st.map(|st| self.inodes.fuse_ino(st.st_ino));
        if to_ino != Some(from_ino) {
            if let Some(moved) = self.inodes.get(from_ino) {
                moved.remove_link(parent, name);
                moved.add_link(new_parent, new_name);
            }
            if let Some(replaced) = to_ino.and_then(|ino| self.inodes.get(ino)) {
                replaced.remove_link(new_parent, new_name);
                if flags & libc::RENAME_EXCHANGE != 0 {
                    replaced.add_link(parent, name);
                }
            }
        }
        let from = self.child_path(&from_dir, name);
        let to = self.child_path(&to_dir, new_name);
        let op = from
            .zip(to)
            .map(|(from, to)| Op::Rename { from, to, flags });
        self.journal("rename", op)
    }

    pub fn setattr(&self, ino: u64, change: SetAttr) -> Result<(FileAttr, Option<Seq>), Error> {
        let _names = self.namespace.read().expect("namespace lock");
        let inode = self.inode(ino)?;
        let _data = inode.data_lock.lock().expect("data lock");
        let path = self.path_of(&inode);
        let before = sys::fstat(inode.fd()).map_err(backing("setattr"))?;
        let is_symlink = before.st_mode & libc::S_IFMT == libc::S_IFLNK;
        let mut seq = None;

        let is_regular = before.st_mode & libc::S_IFMT == libc::S_IFREG;
        if is_regular && (change.changes_nothing() || change.truncation_kills_suidgid()) {
            seq = self.kill_suidgid(&inode)?.or(seq);
        }
        if let Some(mode) = change.mode.filter(|_| !is_symlink) {
            sys::chmod_fd(inode.fd(), mode & 0o7777).map_err(backing("chmod"))?;
            let op = path.clone().map(|path| Op::SetMode {
                path,
                mode: mode & 0o7777,
            });
            seq = self.journal_data_change("chmod", &inode, op)?.or(seq);
        }
        if change.uid.is_some() || change.gid.is_some() {
            let uid = change.uid.unwrap_or(u32::MAX);
            let gid = change.gid.unwrap_or(u32::MAX);
            sys::fchown_fd(inode.fd(), uid, gid).map_err(backing("chown"))?;
            let op = path.clone().map(|path| Op::SetOwner {
                path,
                uid: change.uid,
                gid: change.gid,
            });
            seq = self.journal_data_change("chown", &inode, op)?.or(seq);
            // chown clears setuid and setgid on files; the mirror must end with the same bits.
            let after = sys::fstat(inode.fd()).map_err(backing("chown"))?;
            if after.st_mode != before.st_mode && !is_symlink {
                let mode = after.st_mode & 0o7777;
                let op = path.clone().map(|path| Op::SetMode { path, mode });
                seq = self.journal_data_change("chmod", &inode, op)?.or(seq);
            }
        }
        if let Some(size) = change.size {
            self.truncate(&inode, change.fh, size)?;
            let op = path.clone().map(|path| Op::Truncate { path, size });
            seq = self.journal_data_change("truncate", &inode, op)?.or(seq);
            inode.changed.store(true, Ordering::SeqCst);
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let atime = change.atime.map(timestamp);
            let mtime = change.mtime.map(timestamp);
            sys::utimens_fd(inode.fd(), &[timespec(atime), timespec(mtime)])
                .map_err(backing("utimens"))?;
            let op = path.map(|path| Op::SetTimes { path, atime, mtime });
            seq = self.journal_data_change("utimens", &inode, op)?.or(seq);
        }
        let st = sys::fstat(inode.fd()).map_err(backing("setattr"))?;
        Ok((file_attr(&st, ino), seq))
    }

    fn truncate(&self, inode: &Inode, fh: Option<u64>, size: u64) -> Result<(), Error> {
        if let Some(handle) = fh.and_then(|fh| self.handles.file(fh)) {
            match sys::ftruncate(handle.fd(), size) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL)) => {}
                Err(e) => return Err(backing("truncate")(e)),
            }
        }
        let fd = sys::reopen(inode.fd(), libc::O_WRONLY).map_err(backing("truncate"))?;
        sys::ftruncate(fd.as_fd(), size).map_err(backing("truncate"))
    }

    pub fn open(
        &self,
        ino: u64,
        flags: i32,
        open_backing: OpenBacking<'_>,
    ) -> Result<(u64, Opened), Error> {
        let inode = self.inode(ino)?;
        let keep = libc::O_ACCMODE | libc::O_NOATIME;
        let fd = sys::reopen(inode.fd(), flags & keep).map_err(backing("open"))?;
        let opened = self.open_mode(&inode, flags, fd.as_fd(), open_backing)?;
        let fh = self.insert_handle(fd, flags, inode, &opened);
        Ok((fh, opened))
    }

    /// Chooses the I/O mode of a new handle of `inode` and counts the handle in it.
    fn open_mode(
        &self,
        inode: &Inode,
        flags: i32,
        fd: BorrowedFd<'_>,
        open_backing: OpenBacking<'_>,
    ) -> Result<Opened, Error> {
        let mut modes = inode.open_modes.lock().expect("open modes lock");
        let access = flags & libc::O_ACCMODE;
        let opened = self
            .options
            .reads
            .choose(&mut modes, access, fd, open_backing);
        opened.ok_or_else(|| {
            let path = self
                .path_of(inode)
                .map(|p| p.to_string())
                .unwrap_or_default();
            log::warn!(
                "read-write open of {path:?} (ino={}) refused with ETXTBSY while read-only \
                 handles pass through; mount with passthrough=off to allow it",
                inode.ino
            );
            Error::PassthroughReaders(inode.ino)
        })
    }

    fn insert_handle(&self, fd: OwnedFd, flags: i32, inode: Arc<Inode>, opened: &Opened) -> u64 {
        self.handles.insert_file(FileHandle {
            fd,
            sync_writes: flags & (libc::O_SYNC | libc::O_DSYNC) != 0,
            writes_to: is_writable(flags).then(|| count_writer(inode.clone())),
            inode,
            passthrough: matches!(opened, Opened::Passthrough { .. }),
        })
    }

    /// Reads for a FUSE read request, which only handles without passthrough get.
    pub fn read_request(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Error> {
        self.options.reads.count_served();
        self.read(fh, offset, size)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Error> {
        let handle = self.file_handle(fh)?;
        let mut buf = vec![0u8; size.min(MAX_WRITE_BYTES * 4) as usize];
        let n = sys::pread(handle.fd(), &mut buf, offset).map_err(backing("read"))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Writes to an open file. `kill_suidgid` is set by the kernel for writers without
    /// CAP_FSETID: the write must clear setuid, setgid and file capabilities first, as a
    /// local filesystem would. With `waits_for_room` false, a full async backlog fails the
    /// write with `BacklogFull` before anything is written.
    pub fn write(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        waits_for_room: bool,
    ) -> Result<(u32, Option<Seq>), Error> {
        let journal = &self.journal;
        if !self.acks.wait_for_room(waits_for_room, || journal.head().1) {
            return Err(Error::BacklogFull);
        }
        let handle = self.file_handle(fh)?;
        let seq = {
            let _names = self.namespace.read().expect("namespace lock");
            let inode = self.inode(ino)?;
            let _data = inode.data_lock.lock().expect("data lock");
            if kill_suidgid {
                self.kill_suidgid(&inode)?;
            }
            let written = sys::pwrite_all(handle.fd(), data, offset).map_err(backing("write"))?;
            if written >= MIN_REFERENCED_BYTES {
                read_identity(&inode, &handle);
            }
            let op = self.path_of(&inode).map(|path| Op::Write {
                path,
                offset,
                data: data[..written].to_vec(),
            });
            let seq = self.journal_data_change("write", &inode, op)?;
            inode.changed.store(true, Ordering::SeqCst);
            if written < data.len() {
                log::warn!(
                    "short write on the backing file: {written} of {} bytes, ino={ino}",
                    data.len()
                );
            }
            (written, seq)
        };
        if handle.sync_writes {
            self.make_durable(&handle, true, seq.1)?;
        }
        Ok((seq.0 as u32, seq.1))
    }

    /// Clears setuid, setgid (when group-executable) and the security.capability xattr of a
    /// file about to be written or truncated by an unprivileged process, or chowned. Returns
    /// the seq of the last record it journaled.
    fn kill_suidgid(&self, inode: &Inode) -> Result<Option<Seq>, Error> {
        let mut seq = None;
        let st = sys::fstat(inode.fd()).map_err(backing("write"))?;
        let mut mode = st.st_mode & 0o7777;
        let group_exec = mode & libc::S_IXGRP != 0;
        if mode & libc::S_ISUID != 0 || (mode & libc::S_ISGID != 0 && group_exec) {
            mode &= !libc::S_ISUID;
            if group_exec {
                mode &= !libc::S_ISGID;
            }
            sys::chmod_fd(inode.fd(), mode).map_err(backing("chmod"))?;
            let op = self
                .inodes
                .path_of(inode)
                .map(|path| Op::SetMode { path, mode });
            seq = self.journal_data_change("chmod", inode, op)?;
        }
        let capability = OsStr::new("security.capability");
        match sys::removexattr(inode.fd(), capability) {
            Ok(()) => {
                let op = self.path_of(inode).map(|path| Op::RemoveXattr {
                    path,
                    name: capability.as_bytes().to_vec(),
                });
                seq = self.journal_data_change("removexattr", inode, op)?.or(seq);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {}
            Err(e) => return Err(backing("removexattr")(e)),
        }
        Ok(seq)
    }

    /// Journals a change to an inode's data or attributes. An unlinked file needs no record:
    /// no mirror has a name for it any more.
    fn journal_data_change(
        &self,
        op_name: &'static str,
        inode: &Inode,
        op: Option<Op>,
    ) -> Result<Option<Seq>, Error> {
        if op.is_none() {
            let nlink = sys::fstat(inode.fd()).map(|st| st.st_nlink).unwrap_or(0);
            if nlink == 0 {
                return Ok(None);
            }
        }
        self.journal_for(op_name, op, Some(inode))
    }

    fn make_durable(
        &self,
        handle: &FileHandle,
        data_only: bool,
        seq: Option<Seq>,
    ) -> Result<(), Error> {
        sync_file_and_journal(&self.journal, handle.fd(), data_only, seq, "fsync")
    }

    /// Prepares an fsync: returns a job that makes the file's data durable locally and
    /// returns the journal head, which sync mode also waits for on the mirrors. The job may
    /// run on another thread.
    pub fn fsync(
        &self,
        fh: u64,
        data_only: bool,
    ) -> Result<impl FnOnce() -> Result<Option<Seq>, Error> + Send + 'static, Error> {
        let handle = self.file_handle(fh)?;
        let journal = self.journal.clone();
        let head = Some(journal.head().0).filter(|s| s.0 > 0);
        Ok(move || {
            sync_file_and_journal(&journal, handle.fd(), data_only, head, "fsync")?;
            Ok(head)
        })
    }

    /// Prepares an fsync of a directory, as [`LogFs::fsync`] does for a file.
    pub fn fsyncdir(
        &self,
        fh: u64,
    ) -> Result<impl FnOnce() -> Result<Option<Seq>, Error> + Send + 'static, Error> {
        let dir = self.handles.dir(fh).ok_or(Error::UnknownHandle(fh))?;
        let inode = self.inode(dir.ino)?;
        let fd = sys::reopen(inode.fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(backing("fsyncdir"))?;
        let journal = self.journal.clone();
        let head = Some(journal.head().0).filter(|s| s.0 > 0);
        Ok(move || {
            sync_file_and_journal(&journal, fd.as_fd(), false, head, "fsyncdir")?;
            Ok(head)
        })
    }

    /// Drops a file handle. When it was the last one open for writing on a file whose
    /// content changed, and an S3 mirror keeps readable copies, journals a `CloseWrite`
    /// record so that the mirror updates the file's copy.
    pub fn release(&self, fh: u64) {
        let Some(handle) = self.handles.remove_file(fh) else {
            return;
        };
        let mut modes = handle.inode.open_modes.lock().expect("open modes lock");
        modes.release(handle.passthrough);
        drop(modes);
        let Some(inode) = &handle.writes_to else {
            return;
        };
        if inode.writers.fetch_sub(1, Ordering::SeqCst) != 1
            || !inode.changed.swap(false, Ordering::SeqCst)
            || !self.options.journal_closes
        {
            return;
        }
        let _names = self.namespace.read().expect("namespace lock");
        let _data = inode.data_lock.lock().expect("data lock");
        // An unlinked file has no path and needs no record. A failed append is only logged,
        // because the S3 mirror's periodic update then writes the copy instead.
        let Some(path) = self.inodes.path_of(inode) else {
            return;
        };
        if let Err(e) = self.journal.append(&Op::CloseWrite { path }) {
            log::warn!("failed to journal the close of ino={}: {e}", inode.ino);
        }
    }

    pub fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<Option<Seq>, Error> {
        let handle = self.file_handle(fh)?;
        let _names = self.namespace.read().expect("namespace lock");
        let inode = self.inode(ino)?;
        let _data = inode.data_lock.lock().expect("data lock");
        sys::fallocate(handle.fd(), mode, offset, length).map_err(backing("fallocate"))?;
        let op = self.path_of(&inode).map(|path| Op::Fallocate {
            path,
            mode,
            offset,
            length,
        });
        let seq = self.journal_data_change("fallocate", &inode, op)?;
        inode.changed.store(true, Ordering::SeqCst);
        Ok(seq)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64, Error> {
        let handle = self.file_handle(fh)?;
        sys::lseek(handle.fd(), offset, whence).map_err(backing("lseek"))
    }

    /// Copies a range between two open files through this process, so the copy is journaled
    /// like a write (`waits_for_room` as there).
    pub fn copy_file_range(
        &self,
        (fh_in, offset_in): (u64, u64),
        (ino_out, fh_out, offset_out): (u64, u64, u64),
        length: u64,
        waits_for_room: bool,
    ) -> Result<(u32, Option<Seq>), Error> {
        let length = length.min(MAX_WRITE_BYTES as u64 * 16) as u32;
        let data = self.read(fh_in, offset_in, length)?;
        if data.is_empty() {
            return Ok((0, None));
        }
        self.write(ino_out, fh_out, offset_out, &data, false, waits_for_room)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, Error> {
        let inode = self.inode(ino)?;
        let fd = sys::reopen(inode.fd(), libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(backing("opendir"))?;
        let stream = DirStream::new(fd).map_err(backing("opendir"))?;
        Ok(self.handles.insert_dir(DirHandle {
            ino,
            stream: std::sync::Mutex::new(stream),
        }))
    }

    /// Lists entries from `offset`, calling `add` for each until it returns true (full).
    pub fn readdir(
        &self,
        fh: u64,
        offset: i64,
        mut add: impl FnMut(ListedEntry) -> bool,
    ) -> Result<(), Error> {
        let dir = self.handles.dir(fh).ok_or(Error::UnknownHandle(fh))?;
        let mut stream = dir.stream.lock().expect("dir stream lock");
        stream.seek(offset);
        while let Some(entry) = stream.next_entry().map_err(backing("readdir"))? {
            if dir.ino == ROOT_INO && self.is_reserved(ROOT_INO, OsStr::from_bytes(&entry.name)) {
                continue;
            }
            let listed = ListedEntry {
                ino: self.inodes.fuse_ino(entry.ino),
                next_offset: entry.next_offset,
                kind: dirent_type(entry.d_type),
                name: entry.name,
            };
            if add(listed) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    pub fn statfs(&self) -> Result<libc::statvfs, Error> {
        let root = self.inode(ROOT_INO)?;
        sys::fstatvfs(root.fd()).map_err(backing("statfs"))
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> Result<Vec<u8>, Error> {
        let inode = self.inode(ino)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::getxattr(inode.fd(), name, &mut buf).map_err(backing("getxattr"))?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Returns the size of an xattr value, for a size probe.
    pub fn getxattr_size(&self, ino: u64, name: &OsStr) -> Result<usize, Error> {
        let inode = self.inode(ino)?;
        sys::getxattr(inode.fd(), name, &mut []).map_err(backing("getxattr"))
    }

    /// Returns the size of the xattr name list, for a size probe.
    pub fn listxattr_size(&self, ino: u64) -> Result<usize, Error> {
        let inode = self.inode(ino)?;
        sys::listxattr(inode.fd(), &mut []).map_err(backing("listxattr"))
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> Result<Vec<u8>, Error> {
        let inode = self.inode(ino)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::listxattr(inode.fd(), &mut buf).map_err(backing("listxattr"))?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<Option<Seq>, Error> {
        let _names = self.namespace.read().expect("namespace lock");
        let inode = self.inode(ino)?;
        let _data = inode.data_lock.lock().expect("data lock");
        sys::setxattr(inode.fd(), name, value, flags).map_err(backing("setxattr"))?;
        let op = self.path_of(&inode).map(|path| Op::SetXattr {
            path,
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags,
        });
        self.journal_data_change("setxattr", &inode, op)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<Option<Seq>, Error> {
        let _names = self.namespace.read().expect("namespace lock");
        let inode = self.inode(ino)?;
        let _data = inode.data_lock.lock().expect("data lock");
        sys::removexattr(inode.fd(), name).map_err(backing("removexattr"))?;
        let op = self.path_of(&inode).map(|path| Op::RemoveXattr {
            path,
            name: name.as_bytes().to_vec(),
        });
        self.journal_data_change("removexattr", &inode, op)
    }
}

/// Makes a backing file (or directory) and the journal up to `seq` durable.
fn sync_file_and_journal(
    journal: &Journal,
    fd: BorrowedFd<'_>,
    data_only: bool,
    seq: Option<Seq>,
    op: &'static str,
) -> Result<(), Error> {
    sys::fsync(fd, data_only).map_err(backing(op))?;
    if let Some(seq) = seq {
        journal
            .sync_to(seq)
            .map_err(|source| Error::Journal { op, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// Builds a time before 1970 the way fuser 0.18 decodes a setattr request.
    fn as_fuser_decodes(secs: i64, nanos: u32) -> TimeOrNow {
        TimeOrNow::SpecificTime(UNIX_EPOCH - Duration::new(secs.unsigned_abs(), nanos))
    }

    #[test]
    fn timestamp_before_1970_keeps_kernel_pair() {
        for (secs, nanos) in [
            (-1, 500_000_000),
            (-2, 1),
            (-1, 0),
            (-31_536_001, 999_999_999),
        ] {
            let got = timestamp(as_fuser_decodes(secs, nanos));
            assert_eq!((got.secs, got.nanos), (secs, nanos));
        }
    }
}
