//! Comparing the copies in the store with the backing tree by size and CRC32C: to repair
//! them when they may be stale (a start after a crash, a resync), and for `logmirror
//! verify`, which only reports.
//!
//! A repair deletes the copies that no file has and marks every file whose copy differs, so
//! the copier writes it. A copy that contains the start of its file is kept and extended.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Instant;

use crate::config::STATE_DIR_NAME;
use crate::journal::{RelPath, Seq};
use crate::mirror::at;
use crate::mirror::manifest::{EntryKind, Manifest};
use crate::mirror::s3::key;
use crate::mirror::s3::store::{Condition, ObjectInfo};

use super::plan::{Checkpoints, CrcBuilder};
use super::tracker::{Dirty, FileCopy, SizeTrack, Stored, StoredObject, Tracker};
use super::{Context, CopyError, Opened};

/// A regular file found in the backing tree.
struct Walked {
    size: u64,
    id: at::FileId,
}

/// The backing tree's regular files while no name could change, and the paths whose names
/// records after the copier's position changed.
struct WalkedTree {
    files: BTreeMap<RelPath, Walked>,
    changed: Vec<RelPath>,
}

/// Compares the copies with the backing tree as of journal seq `position`, deletes copies
/// of files that do not exist, and returns a tracker in which every file whose copy differs
/// waits for an update. Returns `None` when the journal cannot tell yet which names changed
/// after `position`.
pub fn reconcile(ctx: &Context, position: Seq) -> Result<Option<Tracker>, CopyError> {
    let started = Instant::now();
    let Some(WalkedTree { files, changed }) = walk_at_position(ctx, position)? else {
        return Ok(None);
    };
    let is_affected = |path: &RelPath| changed.iter().any(|c| path.starts_with(c));
    let mut objects = list_copies(ctx)?;
    let mut tracked = BTreeMap::new();
    let mut counts = (0usize, 0usize);
    for (path, walked) in &files {
        let Ok(key) = ctx.key(path) else {
            continue;
        };
        let object = objects.remove(&key);
        let state = if is_affected(path) {
            // The path may name another file than at `position`; its records follow.
            Some(rewrite(Stored::Unknown))
        } else {
            match object {
                None => Some(rewrite(Stored::Absent)),
                Some(object) => compare_file(ctx, path, &key, &object, walked)?,
            }
        };
        if let Some(state) = state {
            counts.0 += 1;
            tracked.insert(path.clone(), state);
        }
    }
    let kept: HashSet<&String> = objects
        .keys()
        .filter(|k| key::key_to_path(&ctx.prefix, k).is_some_and(|p| is_affected(&p)))
        .collect();
    for key in objects.keys().filter(|k| !kept.contains(k)) {
        ctx.store
            .delete(key, Condition::Always)
            .map_err(Context::store_error("delete of", key))?;
        counts.1 += 1;
    }
    log::info!(
        "mirror {}: readable copies compared with the backing tree in {:.1?}: files={} \
         to_update={} deleted={}",
        ctx.name,
        started.elapsed(),
        files.len(),
        counts.0,
        counts.1
    );
    Ok(Some(Tracker::from_files(tracked)))
}

/// Returns the state of a file whose copy is written whole at the next pass.
fn rewrite(stored: Stored) -> FileCopy {
    FileCopy {
        stored,
        dirty: Some(Dirty {
            from: 0,
            since: Instant::now(),
        }),
        size: SizeTrack::Unknown,
        urgent: true,
    }
}

/// Compares one file with its copy. Returns `None` when the copy is current, and the
/// file's state otherwise. A copy that contains the start of the file is kept and extended.
fn compare_file(
    ctx: &Context,
    path: &RelPath,
    key: &str,
    object: &ObjectInfo,
    walked: &Walked,
) -> Result<Option<FileCopy>, CopyError> {
    if object.size > walked.size {
        return Ok(Some(rewrite(Stored::Absent)));
    }
    let head = ctx
        .store
        .head(key)
        .map_err(Context::store_error("HEAD of", key))?;
    let Some((etag, copy_crc)) = head.and_then(|h| h.crc32c.map(|crc| (h.etag, crc))) else {
        return Ok(Some(rewrite(Stored::Absent)));
    };
    let read_error = |source| CopyError::Read {
        path: path.clone(),
        source,
    };
    let file = match ctx.open_regular(path).map_err(read_error)? {
        Opened::File { file, id, .. } if id == walked.id => file,
        _ => return Ok(Some(rewrite(Stored::Unknown))),
    };
    let crcs = file_crcs(file, object.size).map_err(read_error)?;
    if crcs.whole.size() == object.size && crcs.whole.crc() == copy_crc {
        return Ok(None);
    }
    if crcs.prefix.size() == object.size && crcs.prefix.crc() == copy_crc {
        let mut state = rewrite(Stored::Present(StoredObject {
            etag,
            checkpoints: crcs.prefix,
        }));
        if let Some(dirty) = &mut state.dirty {
            dirty.from = object.size;
        }
        return Ok(Some(state));
    }
    Ok(Some(rewrite(Stored::Absent)))
}

/// CRC32C checkpoints of a file's first bytes and of all of it.
struct FileCrcs {
    prefix: Checkpoints,
    whole: Checkpoints,
}

/// Reads `file` to its end; `prefix` covers its first `prefix_len` bytes, or all of it
/// when it is shorter.
fn file_crcs(mut file: File, prefix_len: u64) -> io::Result<FileCrcs> {
    let mut builder = CrcBuilder::new(Checkpoints::whole(0, 0));
    let mut buf = vec![0u8; 1 << 20];
    let mut prefix = None;
    loop {
        if prefix.is_none() && builder.offset() == prefix_len {
            prefix = Some(builder.clone().finish());
        }
        let room = if prefix.is_none() {
            ((prefix_len - builder.offset()) as usize).min(buf.len())
        } else {
            buf.len()
        };
        let n = match file.read(&mut buf[..room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        builder.update(&buf[..n]);
    }
    let whole = builder.finish();
    Ok(FileCrcs {
        prefix: prefix.unwrap_or_else(|| whole.clone()),
        whole,
    })
}

/// Compares the copies with the regular files listed in `backing` and returns one line per
/// copy that differs, naming its key.
pub fn compare(ctx: &Context, backing: &Manifest) -> Result<Vec<String>, CopyError> {
    let mut objects = list_copies(ctx)?;
    let mut lines = Vec::new();
    for (path, entry) in &backing.entries {
        if entry.kind != EntryKind::File {
            continue;
        }
        // NOTE: a file whose key would exceed 1024 bytes has no copy, and verify skips it.
        let Ok(key) = ctx.key(path) else { continue };
        let Some(object) = objects.remove(&key) else {
            lines.push(format!(
                "copy {key}: missing; the file has {} bytes",
                entry.size
            ));
            continue;
        };
        if object.size != entry.size {
            lines.push(format!(
                "copy {key}: {} bytes, the file has {}",
                object.size, entry.size
            ));
            continue;
        }
        // NOTE: the metadata is compared, not the bytes, so a copy replaced by hand with the
        // file's size and CRC32C in its metadata passes.
        let head = ctx
            .store
            .head(&key)
            .map_err(Context::store_error("HEAD of", &key))?;
        match (head.and_then(|h| h.crc32c), entry.crc32c) {
            (None, _) => lines.push(format!("copy {key}: no valid crc32c metadata")),
            (Some(copy), Some(file)) if copy != file => lines.push(format!(
                "copy {key}: CRC32C {copy:08x}, the file has {file:08x}"
            )),
            _ => {}
        }
    }
    for key in objects.keys() {
        lines.push(format!(
            "copy {key}: no regular file at this path in the backing tree"
        ));
    }
    Ok(lines)
}

/// Lists the copies: every object under the prefix except the mirror's own folder.
fn list_copies(ctx: &Context) -> Result<BTreeMap<String, ObjectInfo>, CopyError> {
    let prefix = key::copy_prefix(&ctx.prefix);
    let reserved = key::reserved_prefix(&ctx.prefix);
    let objects = ctx
        .store
        .list_objects(&prefix)
        .map_err(Context::store_error("listing of", &prefix))?;
    Ok(objects
        .into_iter()
        .filter(|o| !o.key.starts_with(&reserved))
        .map(|o| (o.key.clone(), o))
        .collect())
}

/// Lists the regular files of the backing tree while no name can change, with the paths
/// that records after `position` changed. `None` when the journal no longer lists them.
fn walk_at_position(ctx: &Context, position: Seq) -> Result<Option<WalkedTree>, CopyError> {
    let _names = ctx
        .namespace
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(changed) = ctx.journal.names_changed_after(position) else {
        return Ok(None);
    };
    let mut files = BTreeMap::new();
    walk_dir(ctx.backing_root.as_fd(), &RelPath::root(), &mut files)?;
    files.retain(|path, _| (ctx.selects_file)(path));
    Ok(Some(WalkedTree { files, changed }))
}

fn walk_dir(
    dir: BorrowedFd,
    rel: &RelPath,
    files: &mut BTreeMap<RelPath, Walked>,
) -> Result<(), CopyError> {
    let read_error = |path: &RelPath| {
        let path = path.clone();
        move |source| CopyError::Read { path, source }
    };
    let names = at::list_names(dir).map_err(read_error(rel))?;
    for name in names {
        if rel.is_root() && name == OsStr::new(STATE_DIR_NAME) {
            continue;
        }
        let path = rel.join(&name);
        let c_name = at::c_name(&name).map_err(read_error(&path))?;
        let st = match at::stat_at(dir, &c_name) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(read_error(&path)(e)),
        };
        match at::file_type(&st) {
            libc::S_IFREG => {
                let walked = Walked {
                    size: st.st_size as u64,
                    id: at::file_id(&st),
                };
                files.insert(path, walked);
            }
            libc::S_IFDIR => {
                let child = match at::open_dir_at(dir, &c_name) {
                    Ok(child) => child,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(e) => return Err(read_error(&path)(e)),
                };
                walk_dir(child.as_fd(), &path, files)?;
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn file_crcs_prefix_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        File::create(&path).unwrap().write_all(&data).unwrap();
        let crcs = file_crcs(File::open(&path).unwrap(), 1_500_000).unwrap();
        assert_eq!(crcs.prefix.size(), 1_500_000);
        assert_eq!(crcs.prefix.crc(), crc32c::crc32c(&data[..1_500_000]));
        assert_eq!(crcs.whole.size(), 3_000_000);
        assert_eq!(crcs.whole.crc(), crc32c::crc32c(&data));
        let crcs = file_crcs(File::open(&path).unwrap(), 5_000_000).unwrap();
        assert_eq!(crcs.prefix, crcs.whole);
    }
}
