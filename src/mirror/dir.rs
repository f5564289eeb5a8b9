//! Directory mirror: replays journal ops into a directory on another disk or an NFS mount.
//!
//! A mirror worker hands over ops in sequence order. Each is applied with the `*at` system
//! calls on descriptors walked from the mirror root with `O_NOFOLLOW`, so a symbolic link
//! planted in the mirror cannot redirect a change outside it. `flush` makes the applied ops
//! durable. Which ops count as mirrored is decided by the worker, not here.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{info, warn};

use crate::journal::{Op, Record, RelPath, Timestamp};

use super::at::{self, FileId};
use super::manifest::{self, Manifest};
use super::{Error, Mirror, WritesError};

/// Name under which mirror workers keep their own state, directly below the mirror root.
/// Manifests of the mirror leave it out.
const STATE_DIR_NAME: &str = ".logmirror";

/// Open files kept for writes, so that a stream of appends opens its file once.
const MAX_CACHED_FILES: usize = 32;

/// Files and directories waiting for their fsync. More than this between two flushes makes
/// the mirror sync them early, which keeps the number of open descriptors bounded.
const MAX_DIRTY: usize = 256;

/// Bytes of merged writes per `pwritev`. A write that would take a chain past it starts a new
/// chain. Measured with 8 writers appending 4 KiB records (scripts/bench-writer.c, Linux
/// 6.18 on a 2-core VM, ext4): the mirror thread used about 20 CPU ticks per 256 MiB at
/// 64 KiB and 30 with one `pwrite` per record. Chains of up to 4 MiB took 47, most of them
/// in the kernel's page cache copy.
const MAX_CHAIN_BYTES: u64 = 64 << 10;

/// Threads that fsync dirty files at once during a flush.
const PARALLEL_SYNCS: usize = 8;

/// Identity of the mirror root. A remount, a replaced directory, or a bind mount placed over
/// the path changes it: the mount id differs even when a bind mount shows the same inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RootId {
    file: FileId,
    mount: Option<u64>,
}

impl RootId {
    fn of(fd: BorrowedFd) -> io::Result<RootId> {
        let st = at::fstat(fd)?;
        Ok(RootId {
            file: at::file_id(&st),
            mount: at::mount_id(fd),
        })
    }
}

struct CachedFile {
    file: Arc<File>,
    id: FileId,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncKind {
    /// `fdatasync`: content and size.
    Data,
    /// `fsync`: also mode, owner, times and, for a directory, its entries.
    Full,
}

/// A file or directory changed since the last flush, kept open until it is synced.
struct Dirty {
    file: Arc<File>,
    /// Path at the time of the change, for error messages.
    path: RelPath,
    kind: SyncKind,
    is_dir: bool,
}

/// A mirror kept as a plain directory tree, such as a second disk or an NFS mount.
pub struct DirMirror {
    name: String,
    root_path: PathBuf,
    /// Descriptor of the root directory. It is `None` after a failure, so that nothing stays
    /// open on a mirror filesystem that the operator may need to unmount and repair.
    root: Option<OwnedFd>,
    root_id: RootId,
    /// Set by `flush` and by a failed op: the next op opens the root path again and
    /// switches to it if it is another directory or mount now.
    recheck_root: bool,
    /// The root was the root of a mount at open (a mirror disk mounted at the path), so a
    /// root that no longer is one means the disk was unmounted, not replaced.
    is_mount_root: bool,
    files: HashMap<RelPath, CachedFile>,
    dirty: HashMap<FileId, Dirty>,
    /// Effective user and group ids. Owners are set only when the user id is 0.
    ids: (u32, u32),
    warned_owner: bool,
    warned_xattr: bool,
    temp_counter: u64,
}

impl DirMirror {
    /// Opens the mirror at `root`, which must be an existing directory.
    pub fn open(root: &Path) -> Result<DirMirror, Error> {
        let name = format!("dir:{}", root.display());
        let unusable = |reason: String| Error::Unusable {
            mirror: name.clone(),
            dir: root.to_path_buf(),
            reason,
        };
        let metadata = match std::fs::metadata(root) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unusable(
                    "it does not exist; create it or correct the mirror path".to_owned(),
                ));
            }
            Err(e) => {
                return Err(unusable(format!(
                    "its status cannot be read ({e}); check the path and its permissions"
                )));
            }
        };
        if !metadata.is_dir() {
            return Err(unusable(
                "it is not a directory; point the mirror at a directory".to_owned(),
            ));
        }
        let open_error =
            |e: io::Error| unusable(format!("it cannot be opened ({e}); check its permissions"));
        let fd = at::open_root(root).map_err(open_error)?;
        let root_id = RootId::of(fd.as_fd()).map_err(open_error)?;
        let is_mount_root = is_mount_root(fd.as_fd(), root);

        Ok(DirMirror {
            name,
            root_path: root.to_path_buf(),
            root: Some(fd),
            root_id,
            recheck_root: false,
            is_mount_root,
            files: HashMap::new(),
            dirty: HashMap::new(),
            ids: at::effective_ids(),
            warned_owner: false,
            warned_xattr: false,
            temp_counter: 0,
        })
    }

    /// Opens the root path again if asked to, and switches to it if it changed.
    fn check_root(&mut self) -> io::Result<()> {
        if !self.recheck_root && self.root.is_some() {
            return Ok(());
        }
        let fd = at::open_root(&self.root_path)?;
        let id = RootId::of(fd.as_fd())?;
        // A file deleted on the mirror by hand must fail its next write instead of taking it
        // into an inode that no name leads to.
        self.files
            .retain(|_, cached| at::fstat(cached.file.as_fd()).is_ok_and(|st| st.st_nlink > 0));
        if id != self.root_id && self.is_mount_root && !is_mount_root(fd.as_fd(), &self.root_path) {
            return Err(io::Error::other(
                "the mirror directory is no longer a mount point; mount the mirror filesystem again",
            ));
        }
        if id != self.root_id {
            info!(
                "mirror {}: root directory changed (remounted or replaced); using the new one",
                self.name
            );
            self.root_id = id;
            self.files.clear();
        }
        self.root = Some(fd);
        self.recheck_root = false;
        Ok(())
    }

    /// Returns the root descriptor, which `check_root` opened before any op or listing.
    fn root(&self) -> BorrowedFd<'_> {
        self.root
            .as_ref()
            .expect("check_root opens the root before use")
            .as_fd()
    }

    /// Closes every descriptor open on the mirror after a failure, so that the operator can
    /// unmount or repair the mirror filesystem. The next op opens the root again.
    fn release_descriptors(&mut self) {
        // NOTE: changes applied before the failure are synced here on a best-effort basis. If
        // this sync fails too, they may not be durable on the mirror when confirmed.
        if let Err((path, e)) = self.sync_dirty() {
            warn!(
                "mirror {}: fsync of {path} after a failure also failed: {e}",
                self.name
            );
        }
        self.dirty.clear();
        self.files.clear();
        self.root = None;
    }

    fn apply_op(&mut self, op: &Op) -> io::Result<()> {
        match op {
            Op::Write { path, offset, data } => self.write(path, *offset, data),
            Op::Create {
                path,
                mode,
                uid,
                gid,
            } => self.create(path, *mode, *uid, *gid),
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => self.mknod(path, *mode, *rdev, (*uid, *gid)),
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => self.mkdir(path, *mode, *uid, *gid),
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => self.symlink(path, target, *uid, *gid),
            Op::Link { existing, path } => self.link(existing, path),
            Op::Unlink { path } => self.remove(path, 0),
            Op::Rmdir { path } => self.remove(path, libc::AT_REMOVEDIR),
            Op::Rename { from, to, flags } => self.rename(from, to, *flags),
            Op::Truncate { path, size } => self.truncate(path, *size),
            Op::SetMode { path, mode } => self.set_mode(path, *mode),
            Op::SetOwner { path, uid, gid } => self.set_owner(path, *uid, *gid),
            Op::SetTimes { path, atime, mtime } => self.set_times(path, *atime, *mtime),
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => self.fallocate(path, *mode, *offset, *length),
            Op::SetXattr {
                path, name, value, ..
            } => self.set_xattr(path, name, value),
            Op::RemoveXattr { path, name } => self.remove_xattr(path, name),
            Op::CloseWrite { .. } => Ok(()),
        }
    }

    /// Opens the directory holding `path`, as [`at::walk_parent`] does.
    fn locate(&self, path: &RelPath) -> io::Result<(OwnedFd, CString)> {
        at::walk_parent(self.root(), path)
    }

    /// Returns the open file for writes to `path`, opening and caching it if needed.
    fn writable(&mut self, path: &RelPath) -> io::Result<(Arc<File>, FileId)> {
        if let Some(cached) = self.files.get(path) {
            return Ok((cached.file.clone(), cached.id));
        }
        let (dir, name) = self.locate(path)?;
        // O_NONBLOCK keeps the open from waiting if the name is a FIFO.
        let fd = at::open_at(dir.as_fd(), &name, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
        let st = at::fstat(fd.as_fd())?;
        if at::file_type(&st) != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file on the mirror",
            ));
        }
        let file = Arc::new(File::from(fd));
        let id = at::file_id(&st);
        self.cache_file(path, file.clone(), id);
        Ok((file, id))
    }

    fn cache_file(&mut self, path: &RelPath, file: Arc<File>, id: FileId) {
        if self.files.len() >= MAX_CACHED_FILES {
            // Any entry will do: the cache only saves an open per write.
            if let Some(evicted) = self.files.keys().next().cloned() {
                self.files.remove(&evicted);
            }
        }
        self.files.insert(path.clone(), CachedFile { file, id });
    }

    /// Forgets cached files after an op that can change what a path names.
    fn namespace_changed(&mut self) {
        self.files.clear();
    }

    /// Records that `file` needs a sync at the next flush.
    fn mark(
        &mut self,
        id: FileId,
        file: Arc<File>,
        path: &RelPath,
        kind: SyncKind,
        is_dir: bool,
    ) -> io::Result<()> {
        match self.dirty.entry(id) {
            MapEntry::Occupied(mut entry) => {
                if kind == SyncKind::Full {
                    entry.get_mut().kind = SyncKind::Full;
                }
            }
            MapEntry::Vacant(entry) => {
                entry.insert(Dirty {
                    file,
                    path: path.clone(),
                    kind,
                    is_dir,
                });
            }
        }
        if self.dirty.len() <= MAX_DIRTY {
            return Ok(());
        }
        self.sync_dirty().map_err(|(path, e)| {
            io::Error::new(e.kind(), format!("syncing {path} early failed: {e}"))
        })
    }

    /// Records that the entries of directory `dir` (at `path`) changed.
    fn mark_dir(&mut self, dir: OwnedFd, path: &RelPath) -> io::Result<()> {
        let id = at::file_id(&at::fstat(dir.as_fd())?);
        self.mark(id, Arc::new(File::from(dir)), path, SyncKind::Full, true)
    }

    /// Records that the metadata of `name` inside `dir` (at `path`) changed.
    fn mark_entry(&mut self, dir: OwnedFd, name: &CStr, path: &RelPath) -> io::Result<()> {
        let st = at::stat_at(dir.as_fd(), name)?;
        let id = at::file_id(&st);
        if let Some(dirty) = self.dirty.get_mut(&id) {
            dirty.kind = SyncKind::Full;
            return Ok(());
        }
        let kind = at::file_type(&st);
        if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            let flags = libc::O_RDONLY | libc::O_NONBLOCK;
            if let Ok(fd) = at::open_at(dir.as_fd(), name, flags, 0)
                && at::file_id(&at::fstat(fd.as_fd())?) == id
            {
                let file = Arc::new(File::from(fd));
                return self.mark(id, file, path, SyncKind::Full, kind == libc::S_IFDIR);
            }
        }
        // NOTE: a metadata change of a symlink, a special file or an unreadable file is made
        // durable only by the fsync of its directory, which not every file system covers.
        self.mark_dir(dir, &parent_of(path))
    }

    /// Syncs every file and directory changed since the last sync. On failure, returns the
    /// path that failed, and entries not yet synced stay recorded.
    fn sync_dirty(&mut self) -> Result<(), (RelPath, io::Error)> {
        // Files before directories, so that by the time a new name is synced, the data under
        // it is too.
        for dirs in [false, true] {
            let ids: Vec<FileId> = self
                .dirty
                .iter()
                .filter(|(_, dirty)| dirty.is_dir == dirs)
                .map(|(id, _)| *id)
                .collect();
            let results = self.sync_all_of(&ids);
            let mut first_error = None;
            for (id, result) in ids.iter().zip(results) {
                match result {
                    Ok(()) => {
                        self.dirty.remove(id);
                    }
                    Err(e) if first_error.is_none() => {
                        first_error = Some((self.dirty[id].path.clone(), e));
                    }
                    Err(_) => {}
                }
            }
            if let Some(error) = first_error {
                return Err(error);
            }
        }
        Ok(())
    }

    /// Syncs the dirty entries `ids`, several at a time, because the filesystem's journal
    /// then commits them together: one commit instead of one per file.
    fn sync_all_of(&self, ids: &[FileId]) -> Vec<io::Result<()>> {
        let sync = |id: &FileId| {
            let dirty = &self.dirty[id];
            match dirty.kind {
                SyncKind::Data => dirty.file.sync_data(),
                SyncKind::Full => dirty.file.sync_all(),
            }
        };
        if ids.len() <= 1 {
            return ids.iter().map(sync).collect();
        }
        let chunk = ids.len().div_ceil(PARALLEL_SYNCS);
        std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .chunks(chunk)
                .map(|part| scope.spawn(move || part.iter().map(sync).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("fsync thread does not panic"))
                .collect()
        })
    }

    /// Changes owner and group when running as root. Returns true if it changed them.
    fn set_owner_at(
        &mut self,
        dir: BorrowedFd,
        name: &CStr,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<bool> {
        if uid.is_none() && gid.is_none() {
            return Ok(false);
        }
        if self.ids.0 != 0 {
            // Files this process creates belong to it already, so only other ids are lost.
            let is_lost = uid.is_some_and(|uid| uid != self.ids.0)
                || gid.is_some_and(|gid| gid != self.ids.1);
            if is_lost && !self.warned_owner {
                warn!(
                    "mirror {}: not running as root, so file owners are not copied to the mirror",
                    self.name
                );
                self.warned_owner = true;
            }
            return Ok(false);
        }
        match at::chown_at(dir, name, uid, gid) {
            Ok(()) => Ok(true),
            // NFS with root_squash maps root to the nobody user, which may not give files
            // away (EPERM). An id the file system cannot store gives EINVAL.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL)) => {
                if !self.warned_owner {
                    warn!(
                        "mirror {}: the mirror file system rejects owner changes ({e}), so file owners are not copied",
                        self.name
                    );
                    self.warned_owner = true;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn warn_xattr_unsupported(&mut self, e: &io::Error) {
        if !self.warned_xattr {
            warn!(
                "mirror {}: the mirror file system does not support extended attributes ({e}), so they are not copied",
                self.name
            );
            self.warned_xattr = true;
        }
    }

    fn write(&mut self, path: &RelPath, offset: u64, data: &[u8]) -> io::Result<()> {
        let (file, id) = self.writable(path)?;
        file.write_all_at(data, offset)?;
        self.mark(id, file, path, SyncKind::Data, false)
    }

    /// Applies a run of write records with one `pwritev` per chain of [`plan_writes`]. On
    /// failure, returns the position in the run of the record that failed.
    fn write_run(&mut self, records: &[&Record]) -> Result<(), (usize, io::Error)> {
        let mut by_path: HashMap<&RelPath, FileId> = HashMap::new();
        // The open file of each inode, with the first path and record that wrote to it.
        let mut files: HashMap<FileId, (Arc<File>, &RelPath, usize)> = HashMap::new();
        let mut writes = Vec::with_capacity(records.len());
        let mut buffers = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            let Op::Write { path, offset, data } = &record.op else {
                let message = format!(
                    "invalid run of writes: it contains a {} op",
                    record.op.kind()
                );
                return Err((index, io::Error::new(io::ErrorKind::InvalidInput, message)));
            };
            let id = match by_path.get(path) {
                Some(&id) => id,
                None => {
                    let (file, id) = self.writable(path).map_err(|e| (index, e))?;
                    by_path.insert(path, id);
                    files.entry(id).or_insert((file, path, index));
                    id
                }
            };
            writes.push(PlannedWrite {
                file: id,
                offset: *offset,
                len: data.len() as u64,
            });
            buffers.push(data.as_slice());
        }

        for chain in plan_writes(&writes) {
            let file = &files[&chain.file].0;
            let mut slices: Vec<io::IoSlice> = chain
                .writes
                .iter()
                .map(|&index| io::IoSlice::new(buffers[index]))
                .collect();
            write_all_vectored_at(file, &mut slices, chain.offset)
                .map_err(|(done, e)| (chain.writes[done], e))?;
        }

        for (id, (file, path, index)) in files {
            self.mark(id, file, path, SyncKind::Data, false)
                .map_err(|e| (index, e))?;
        }
        Ok(())
    }

    fn create(&mut self, path: &RelPath, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        self.namespace_changed();
        let (dir, name) = self.locate(path)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let file = match at::open_at(dir.as_fd(), &name, flags, 0o600) {
            Ok(fd) => File::from(fd),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                reopen_for_create(dir.as_fd(), &name, e)?
            }
            Err(e) => return Err(e),
        };
        let id = at::file_id(&at::fstat(file.as_fd())?);

        // Owner first: chown clears setuid and setgid, and the chmod puts them back.
        self.set_owner_at(dir.as_fd(), &name, Some(uid), Some(gid))?;
        at::fchmod(file.as_fd(), mode & 0o7777)?;

        // The descriptor from the create serves the writes that follow even if the mode
        // gives no write access, as it does for the program that created the file.
        let file = Arc::new(file);
        self.cache_file(path, file.clone(), id);
        self.mark(id, file, path, SyncKind::Full, false)?;
        self.mark_dir(dir, &parent_of(path))
    }

    fn mkdir(&mut self, path: &RelPath, mode: u32, uid: u32, gid: u32) -> io::Result<()> {
        self.namespace_changed();
        let (dir, name) = self.locate(path)?;
        match at::mkdir_at(dir.as_fd(), &name, 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st = at::stat_at(dir.as_fd(), &name)?;
                if at::file_type(&st) != libc::S_IFDIR {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        let created = at::open_dir_at(dir.as_fd(), &name)?;
        self.set_owner_at(dir.as_fd(), &name, Some(uid), Some(gid))?;
        at::fchmod(created.as_fd(), mode & 0o7777)?;
        self.mark_dir(dir, &parent_of(path))
    }

    fn mknod(&mut self, path: &RelPath, mode: u32, rdev: u64, owner: (u32, u32)) -> io::Result<()> {
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG {
            return self.create(path, mode, owner.0, owner.1);
        }
        let is_device = kind == libc::S_IFCHR || kind == libc::S_IFBLK;
        if !is_device && kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file type {kind:#o} cannot be created with mknod"),
            ));
        }
        self.namespace_changed();
        let (dir, name) = self.locate(path)?;
        match at::mknod_at(dir.as_fd(), &name, kind | 0o600, rdev) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st = at::stat_at(dir.as_fd(), &name)?;
                if at::file_type(&st) != kind || (is_device && st.st_rdev != rdev) {
                    return Err(e);
                }
            }
            Err(e) if is_device && e.raw_os_error() == Some(libc::EPERM) => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "creating a device node needs CAP_MKNOD; run logmirror as root, \
                     or keep device nodes out of the mount",
                ));
            }
            Err(e) => return Err(e),
        }
        self.set_owner_at(dir.as_fd(), &name, Some(owner.0), Some(owner.1))?;
        at::chmod_at(dir.as_fd(), &name, mode & 0o7777)?;
        self.mark_dir(dir, &parent_of(path))
    }

    fn symlink(&mut self, path: &RelPath, target: &[u8], uid: u32, gid: u32) -> io::Result<()> {
        self.namespace_changed();
        let (dir, name) = self.locate(path)?;
        match at::symlink_at(target, dir.as_fd(), &name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let st = at::stat_at(dir.as_fd(), &name)?;
                let is_same = at::file_type(&st) == libc::S_IFLNK
                    && at::read_link_at(dir.as_fd(), &name)? == target;
                if !is_same {
                    self.replace_with_symlink(dir.as_fd(), &name, target)?;
                }
            }
            Err(e) => return Err(e),
        }
        self.set_owner_at(dir.as_fd(), &name, Some(uid), Some(gid))?;
        self.mark_dir(dir, &parent_of(path))
    }

    /// Puts a symbolic link in place of an existing name in one step: created under a
    /// temporary name, then renamed over it.
    fn replace_with_symlink(
        &mut self,
        dir: BorrowedFd,
        name: &CStr,
        target: &[u8],
    ) -> io::Result<()> {
        let mut attempts = 0;
        let temp = loop {
            self.temp_counter += 1;
            let temp = format!(
                ".logmirror-symlink.{}.{}",
                std::process::id(),
                self.temp_counter
            );
            let temp = CString::new(temp).expect("a formatted number has no NUL byte");
            match at::symlink_at(target, dir, &temp) {
                Ok(()) => break temp,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempts < 100 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        if let Err(e) = at::rename_at(dir, &temp, dir, name, 0) {
            // Best effort: a leftover temporary link shows up in verify and goes on resync.
            let _ = at::unlink_at(dir, &temp, 0);
            return Err(e);
        }
        Ok(())
    }

    fn link(&mut self, existing: &RelPath, path: &RelPath) -> io::Result<()> {
        self.namespace_changed();
        let (old_dir, old_name) = self.locate(existing)?;
        let (new_dir, new_name) = self.locate(path)?;
        match at::link_at(old_dir.as_fd(), &old_name, new_dir.as_fd(), &new_name) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                let old = at::stat_at(old_dir.as_fd(), &old_name)?;
                let new = at::stat_at(new_dir.as_fd(), &new_name)?;
                if at::file_id(&old) != at::file_id(&new) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
        self.mark_dir(new_dir, &parent_of(path))
    }

    /// Removes a name, with `flags` 0 for unlink or `AT_REMOVEDIR` for rmdir. A name that is
    /// already gone, or whose directory is, counts as removed.
    fn remove(&mut self, path: &RelPath, flags: libc::c_int) -> io::Result<()> {
        self.namespace_changed();
        let (dir, name) = match self.locate(path) {
            Ok(found) => found,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        match at::unlink_at(dir.as_fd(), &name, flags) {
            Ok(()) => self.mark_dir(dir, &parent_of(path)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn rename(&mut self, from: &RelPath, to: &RelPath, flags: u32) -> io::Result<()> {
        self.namespace_changed();
        let (from_dir, from_name) = self.locate(from)?;
        let (to_dir, to_name) = self.locate(to)?;
        let result = at::rename_at(
            from_dir.as_fd(),
            &from_name,
            to_dir.as_fd(),
            &to_name,
            flags,
        );
        if let Err(e) = result {
            // A repeat of a rename that went through finds the source gone and the
            // destination present. An exchange cannot be distinguished from its repeat.
            let may_be_repeat = flags & libc::RENAME_EXCHANGE == 0
                && match e.raw_os_error() {
                    Some(libc::ENOENT) => true,
                    Some(libc::EEXIST) => flags & libc::RENAME_NOREPLACE != 0,
                    _ => false,
                };
            if !may_be_repeat {
                return Err(e);
            }
            let from_gone = at::stat_at_if_exists(from_dir.as_fd(), &from_name)?.is_none();
            let to_present = at::stat_at_if_exists(to_dir.as_fd(), &to_name)?.is_some();
            return if from_gone && to_present {
                Ok(())
            } else {
                Err(e)
            };
        }
        self.mark_dir(from_dir, &parent_of(from))?;
        self.mark_dir(to_dir, &parent_of(to))
    }

    fn truncate(&mut self, path: &RelPath, size: u64) -> io::Result<()> {
        let (file, id) = self.writable(path)?;
        file.set_len(size)?;
        self.mark(id, file, path, SyncKind::Data, false)
    }

    fn set_mode(&mut self, path: &RelPath, mode: u32) -> io::Result<()> {
        let (dir, name) = self.locate(path)?;
        let st = at::stat_at(dir.as_fd(), &name)?;
        // A symbolic link has no mode of its own on Linux.
        if at::file_type(&st) == libc::S_IFLNK {
            return Ok(());
        }
        at::chmod_at(dir.as_fd(), &name, mode & 0o7777)?;
        self.mark_entry(dir, &name, path)
    }

    fn set_owner(&mut self, path: &RelPath, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (dir, name) = self.locate(path)?;
        if self.set_owner_at(dir.as_fd(), &name, uid, gid)? {
            self.mark_entry(dir, &name, path)?;
        }
        Ok(())
    }

    fn set_times(
        &mut self,
        path: &RelPath,
        atime: Option<Timestamp>,
        mtime: Option<Timestamp>,
    ) -> io::Result<()> {
        let (dir, name) = self.locate(path)?;
        at::utimens_at(dir.as_fd(), &name, atime, mtime)?;
        self.mark_entry(dir, &name, path)
    }

    fn fallocate(&mut self, path: &RelPath, mode: i32, offset: u64, length: u64) -> io::Result<()> {
        let (file, id) = self.writable(path)?;
        match at::fallocate(file.as_fd(), mode, offset, length) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                emulate_fallocate(&file, mode, offset, length)?;
            }
            Err(e) => return Err(e),
        }
        self.mark(id, file, path, SyncKind::Data, false)
    }

    fn set_xattr(&mut self, path: &RelPath, name: &[u8], value: &[u8]) -> io::Result<()> {
        let (dir, entry) = self.locate(path)?;
        let target = at::open_xattr_target(dir.as_fd(), &entry)?;
        let name = at::c_name(OsStr::from_bytes(name))?;
        // The backing accepted the op, so its XATTR_CREATE or XATTR_REPLACE condition held
        // there. On the mirror a repeat or a stale value can break it, and setting the value
        // unconditionally gives the backing's result.
        match at::set_xattr(&target, &name, value, 0) {
            Ok(()) => self.mark_entry(dir, &entry, path),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.warn_xattr_unsupported(&e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn remove_xattr(&mut self, path: &RelPath, name: &[u8]) -> io::Result<()> {
        let (dir, entry) = self.locate(path)?;
        let target = at::open_xattr_target(dir.as_fd(), &entry)?;
        let name = at::c_name(OsStr::from_bytes(name))?;
        match at::remove_xattr(&target, &name) {
            Ok(()) => self.mark_entry(dir, &entry, path),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.warn_xattr_unsupported(&e);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

impl Mirror for DirMirror {
    fn name(&self) -> &str {
        &self.name
    }

    fn apply(&mut self, op: &Op) -> Result<(), Error> {
        if let Err(source) = self.check_root() {
            return Err(Error::Io {
                mirror: self.name.clone(),
                action: "open root",
                path: RelPath::root(),
                source,
            });
        }
        self.apply_op(op).map_err(|source| {
            // A remount can be the cause, so the next op looks at the root path again.
            self.release_descriptors();
            Error::Io {
                mirror: self.name.clone(),
                action: op.kind(),
                path: op.path().clone(),
                source,
            }
        })
    }

    /// Merges the writes of the run by inode: writes to one file at contiguous offsets go
    /// out as one `pwritev`, and each file's writes keep their record order.
    fn apply_writes(&mut self, records: &[&Record]) -> Result<(), WritesError> {
        if let Err(source) = self.check_root() {
            return Err(WritesError {
                applied: 0,
                failed: 0,
                source: Error::Io {
                    mirror: self.name.clone(),
                    action: "open root",
                    path: RelPath::root(),
                    source,
                },
            });
        }
        self.write_run(records).map_err(|(failed, source)| {
            self.release_descriptors();
            // Part of the run may have landed, in an order other than the journal's, so
            // the retry writes all of it again.
            WritesError {
                applied: 0,
                failed,
                source: Error::Io {
                    mirror: self.name.clone(),
                    action: records[failed].op.kind(),
                    path: records[failed].op.path().clone(),
                    source,
                },
            }
        })
    }

    /// Looks at the root and the cached files again at the next op, so that a file deleted
    /// on the mirror by hand fails its next write instead of taking it into an inode that no
    /// name leads to.
    fn end_batch(&mut self) {
        self.recheck_root = true;
    }

    // NOTE: after a failed fsync, data changed in the backing file since makes the retry resync.
    fn stores_applied_data(&self) -> bool {
        true
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.recheck_root = true;
        self.sync_dirty().map_err(|(path, source)| {
            self.release_descriptors();
            Error::Io {
                mirror: self.name.clone(),
                action: "fsync",
                path,
                source,
            }
        })
    }

    fn manifest(&mut self) -> Result<Manifest, Error> {
        if let Err(source) = self.check_root() {
            return Err(Error::Io {
                mirror: self.name.clone(),
                action: "open root",
                path: RelPath::root(),
                source,
            });
        }
        // The mirror may be remounted before the next op, so that op looks at the root again.
        self.recheck_root = true;
        let skip = [OsStr::new(STATE_DIR_NAME)];
        manifest::scan_fd(self.root(), &skip).map_err(|e| Error::Io {
            mirror: self.name.clone(),
            action: "list",
            path: e.path,
            source: e.source,
        })
    }
}

/// Target file and byte range of one write of a run, the input of [`plan_writes`].
#[derive(Clone, Copy, Debug)]
struct PlannedWrite {
    file: FileId,
    offset: u64,
    len: u64,
}

/// Writes of a run to one file at contiguous offsets, issued as one `pwritev`.
#[derive(Debug, PartialEq, Eq)]
struct Chain {
    file: FileId,
    offset: u64,
    /// Offset after the last write, or `None` past `u64::MAX`, which ends the chain.
    end: Option<u64>,
    /// Positions of the writes in the run, in record order.
    writes: Vec<usize>,
}

/// Groups the writes of a run into chains: each file's writes in record order, a write
/// joining the file's previous chain when it starts where that chain ends, up to
/// [`at::MAX_IOVECS`] writes and [`MAX_CHAIN_BYTES`]. Files come in the order of their first write. Two writes to one
/// file that overlap stay in record order, because a chain only grows at its end and the
/// chains of a file keep the order they were started in.
fn plan_writes(writes: &[PlannedWrite]) -> Vec<Chain> {
    let mut files: Vec<FileId> = Vec::new();
    let mut chains: HashMap<FileId, Vec<Chain>> = HashMap::new();
    for (index, write) in writes.iter().enumerate() {
        let file_chains = chains.entry(write.file).or_insert_with(|| {
            files.push(write.file);
            Vec::new()
        });
        let end = write.offset.checked_add(write.len);
        match file_chains.last_mut() {
            Some(chain)
                if chain.end == Some(write.offset)
                    && chain.writes.len() < at::MAX_IOVECS
                    && end.is_some_and(|end| end - chain.offset <= MAX_CHAIN_BYTES) =>
            {
                chain.end = end;
                chain.writes.push(index);
            }
            _ => file_chains.push(Chain {
                file: write.file,
                offset: write.offset,
                end,
                writes: vec![index],
            }),
        }
    }
    files
        .iter()
        .flat_map(|file| chains.remove(file).unwrap_or_default())
        .collect()
}

/// Writes every byte of `slices` from `offset`, calling `pwritev` again after a short write.
/// On failure, returns the position in `slices` of the first slice not fully written.
fn write_all_vectored_at(
    file: &File,
    mut slices: &mut [io::IoSlice],
    mut offset: u64,
) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    let mut remaining: usize = slices.iter().map(|slice| slice.len()).sum();
    while remaining > 0 {
        let written = match at::pwritev(file.as_fd(), slices, offset) {
            Ok(0) => return Err((done, io::Error::from(io::ErrorKind::WriteZero))),
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((done, e)),
        };
        let before = slices.len();
        io::IoSlice::advance_slices(&mut slices, written);
        done += before - slices.len();
        remaining -= written;
        offset += written as u64;
    }
    Ok(())
}

/// Returns whether `fd`, the directory at `path`, is the root of a mount: its mount id
/// differs from its parent's. Returns false when a mount id cannot be read.
fn is_mount_root(fd: BorrowedFd, path: &Path) -> bool {
    let Some(parent) = path.parent() else {
        return true;
    };
    let Ok(parent_fd) = at::open_root(parent) else {
        return false;
    };
    match (at::mount_id(fd), at::mount_id(parent_fd.as_fd())) {
        (Some(mount), Some(parent_mount)) => mount != parent_mount,
        _ => false,
    }
}

/// Opens an existing name for a repeated create, which empties it. Only a regular file
/// qualifies, and anything else keeps the `EEXIST` of the first attempt.
fn reopen_for_create(dir: BorrowedFd, name: &CStr, exists: io::Error) -> io::Result<File> {
    let st = at::stat_at(dir, name)?;
    if at::file_type(&st) != libc::S_IFREG {
        return Err(exists);
    }
    let fd = at::open_at(dir, name, libc::O_WRONLY | libc::O_NONBLOCK, 0)?;
    if at::file_type(&at::fstat(fd.as_fd())?) != libc::S_IFREG {
        return Err(exists);
    }
    let file = File::from(fd);
    file.set_len(0)?;
    Ok(file)
}

/// Gives `file` the size and content that `fallocate(2)` with `mode` gives on a file system
/// that supports it. Only the visible effect is copied, and no blocks are reserved.
fn emulate_fallocate(file: &File, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    let end = offset
        .checked_add(length)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EFBIG))?;
    if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
        // NOTE: collapsing or inserting a range fails on a mirror file system without
        // fallocate support, because moving the rest of the file is not emulated.
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the mirror file system does not support fallocate mode {mode:#x}, \
                 and collapsing or inserting a range is not emulated"
            ),
        ));
    }
    let size = file.metadata()?.len();
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
        let zero_end = if keep_size { end.min(size) } else { end };
        return write_zeros(file, offset, zero_end);
    }
    if !keep_size && end > size {
        file.set_len(end)?;
    }
    Ok(())
}

fn write_zeros(file: &File, start: u64, end: u64) -> io::Result<()> {
    let zeros = vec![0u8; 64 << 10];
    let mut position = start;
    while position < end {
        let len = (end - position).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..len], position)?;
        position += len as u64;
    }
    Ok(())
}

fn parent_of(path: &RelPath) -> RelPath {
    path.split_last()
        .map(|(parent, _)| parent)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the bytes of a file made of "abcdefgh" after `fallocate` or its emulation.
    fn after(mode: i32, offset: u64, length: u64, emulate: bool) -> io::Result<Vec<u8>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, b"abcdefgh")?;
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        if emulate {
            emulate_fallocate(&file, mode, offset, length)?;
        } else {
            at::fallocate(file.as_fd(), mode, offset, length)?;
        }
        std::fs::read(&path)
    }

    #[test]
    fn emulated_fallocate_matches_kernel() {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let cases = [
            (0, 2, 3),
            (0, 6, 10),
            (keep, 6, 10),
            (libc::FALLOC_FL_PUNCH_HOLE | keep, 2, 3),
            (libc::FALLOC_FL_PUNCH_HOLE | keep, 6, 10),
            (libc::FALLOC_FL_ZERO_RANGE, 1, 2),
            (libc::FALLOC_FL_ZERO_RANGE, 6, 10),
            (libc::FALLOC_FL_ZERO_RANGE | keep, 6, 10),
        ];
        for (mode, offset, length) in cases {
            let kernel = match after(mode, offset, length, false) {
                Ok(bytes) => bytes,
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    eprintln!("skipping mode {mode:#x}: the temporary file system lacks it");
                    continue;
                }
                Err(e) => panic!("fallocate mode {mode:#x}: {e}"),
            };
            let emulated = after(mode, offset, length, true).expect("emulation");
            assert_eq!(
                emulated, kernel,
                "mode {mode:#x} offset {offset} length {length}"
            );
        }
    }

    fn planned(file: u64, offset: u64, len: u64) -> PlannedWrite {
        PlannedWrite {
            file: (1, file),
            offset,
            len,
        }
    }

    /// Returns the writes of each chain of `plan_writes`, in the order they are issued.
    fn plan_order(writes: &[PlannedWrite]) -> Vec<Vec<usize>> {
        plan_writes(writes).into_iter().map(|c| c.writes).collect()
    }

    #[test]
    fn plan_merges_contiguous_writes() {
        let writes = [
            planned(1, 0, 4096),
            planned(2, 0, 4096),
            planned(1, 4096, 4096),
            planned(2, 4096, 100),
            planned(1, 8192, 4096),
            planned(2, 4196, 4096),
        ];
        let chains = plan_writes(&writes);
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].file, (1, 1));
        assert_eq!(chains[0].offset, 0);
        assert_eq!(chains[0].end, Some(12288));
        assert_eq!(chains[0].writes, vec![0, 2, 4]);
        assert_eq!(chains[1].file, (1, 2));
        assert_eq!(chains[1].writes, vec![1, 3, 5]);
    }

    #[test]
    fn plan_keeps_overlapping_writes_in_order() {
        // The third write starts where the first chain ends, but after the second one, which
        // overlaps the first, so it may not join the first chain.
        let writes = [
            planned(1, 0, 10),
            planned(1, 5, 10),
            planned(1, 10, 10),
            planned(1, 15, 5),
            planned(1, 0, 3),
        ];
        assert_eq!(
            plan_order(&writes),
            vec![vec![0], vec![1], vec![2], vec![3], vec![4]]
        );
        let writes = [planned(1, 0, 10), planned(1, 10, 10), planned(1, 5, 10)];
        assert_eq!(plan_order(&writes), vec![vec![0, 1], vec![2]]);
    }

    #[test]
    fn plan_splits_past_iov_max() {
        let count = 2 * at::MAX_IOVECS + 5;
        let writes: Vec<PlannedWrite> = (0..count as u64).map(|i| planned(1, i, 1)).collect();
        let chains = plan_writes(&writes);
        let sizes: Vec<usize> = chains.iter().map(|c| c.writes.len()).collect();
        assert_eq!(sizes, vec![at::MAX_IOVECS, at::MAX_IOVECS, 5]);
        assert_eq!(chains[1].offset, at::MAX_IOVECS as u64);
        assert_eq!(chains[2].offset, 2 * at::MAX_IOVECS as u64);
    }

    #[test]
    fn plan_splits_past_max_chain_bytes() {
        let record = 4096;
        let per_chain = (MAX_CHAIN_BYTES / record) as usize;
        let count = 2 * per_chain + 3;
        let writes: Vec<PlannedWrite> = (0..count as u64)
            .map(|i| planned(1, i * record, record))
            .collect();
        let chains = plan_writes(&writes);
        let sizes: Vec<usize> = chains.iter().map(|c| c.writes.len()).collect();
        assert_eq!(sizes, vec![per_chain, per_chain, 3]);
        assert_eq!(chains[1].offset, MAX_CHAIN_BYTES);
        assert_eq!(chains[0].end, Some(MAX_CHAIN_BYTES));

        let large = [
            planned(2, 0, 2 * MAX_CHAIN_BYTES),
            planned(2, 2 * MAX_CHAIN_BYTES, 1),
        ];
        assert_eq!(plan_order(&large), vec![vec![0], vec![1]]);
    }

    #[test]
    fn plan_ends_chain_at_offset_overflow() {
        let writes = [planned(1, u64::MAX - 1, 2), planned(1, 0, 1)];
        let chains = plan_writes(&writes);
        assert_eq!(chains[0].end, None);
        assert_eq!(chains.len(), 2);
    }

    fn write_record(seq: u64, path: &str, offset: u64, data: &[u8]) -> Record {
        Record {
            seq: crate::journal::Seq(seq),
            committed_at_ns: 0,
            op: Op::Write {
                path: RelPath::from_bytes(path.as_bytes()).expect("valid path"),
                offset,
                data: data.to_vec(),
            },
        }
    }

    /// Applies `records` as one run to a mirror at `root`.
    fn apply_run(root: &Path, records: &[Record]) -> Result<(), WritesError> {
        let mut mirror = DirMirror::open(root).expect("open mirror");
        let run: Vec<&Record> = records.iter().collect();
        mirror.apply_writes(&run)?;
        mirror.flush().expect("flush");
        Ok(())
    }

    #[test]
    fn run_groups_hard_links_by_inode() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), b"").expect("create a");
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).expect("link b");
        let records = [
            write_record(1, "a", 0, b"AAAAAAAA"),
            write_record(2, "b", 4, b"BBBBBBBB"),
            write_record(3, "a", 2, b"CCCC"),
            write_record(4, "b", 12, b"DD"),
        ];
        apply_run(dir.path(), &records).expect("apply run");
        let bytes = std::fs::read(dir.path().join("a")).expect("read a");
        assert_eq!(bytes, b"AACCCCBBBBBBDD");

        let mut mirror = DirMirror::open(dir.path()).expect("open mirror");
        mirror.check_root().expect("root");
        let path_a = RelPath::from_bytes(b"a").expect("valid path");
        let path_b = RelPath::from_bytes(b"b").expect("valid path");
        let id_a = mirror.writable(&path_a).expect("open a").1;
        let id_b = mirror.writable(&path_b).expect("open b").1;
        assert_eq!(id_a, id_b);
    }

    #[test]
    fn run_writes_past_iov_max() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("x"), b"").expect("create x");
        std::fs::write(dir.path().join("y"), b"").expect("create y");
        let count = at::MAX_IOVECS * 2 + 7;
        let mut records = Vec::new();
        let mut expected_x = Vec::new();
        let mut expected_y = Vec::new();
        for i in 0..count {
            let piece = format!("{i:05},");
            let seq = 2 * i as u64;
            records.push(write_record(
                seq + 1,
                "x",
                expected_x.len() as u64,
                piece.as_bytes(),
            ));
            expected_x.extend_from_slice(piece.as_bytes());
            records.push(write_record(seq + 2, "y", expected_y.len() as u64, b"y"));
            expected_y.push(b'y');
        }
        apply_run(dir.path(), &records).expect("apply run");
        assert_eq!(
            std::fs::read(dir.path().join("x")).expect("read x"),
            expected_x
        );
        assert_eq!(
            std::fs::read(dir.path().join("y")).expect("read y"),
            expected_y
        );
    }

    #[test]
    fn run_names_missing_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a"), b"").expect("create a");
        let records = [
            write_record(1, "a", 0, b"one"),
            write_record(2, "gone", 0, b"two"),
            write_record(3, "a", 3, b"three"),
        ];
        let err = apply_run(dir.path(), &records).expect_err("missing file");
        assert_eq!(err.applied, 0);
        assert_eq!(err.failed, 1);
        let Error::Io { path, source, .. } = &err.source else {
            panic!("unexpected error: {:?}", err.source);
        };
        assert_eq!(path.to_string(), "gone");
        assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn emulated_fallocate_rejects_collapse() {
        let err = after(libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096, true).expect_err("collapse");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        let err = after(libc::FALLOC_FL_INSERT_RANGE, 0, 4096, true).expect_err("insert");
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }
}
