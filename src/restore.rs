//! Restore: rebuilds a backing directory from an S3 mirror, for a host that lost its disk.
//!
//! The mirror's journal objects are downloaded in order. Each one is checked whole (the
//! store's CRC32C, its header, every frame's CRC32C and every path) before its records are
//! replayed into the directory through a `DirMirror`, which reaches every path from the
//! directory's descriptor with `O_NOFOLLOW`. So nothing is written outside the directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{MirrorSpec, S3Options, STATE_DIR_NAME};
use crate::journal::Seq;
use crate::mirror::manifest::{self, EntryKind};
use crate::mirror::s3::{self, ReplayStats};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "restore reads s3:// mirrors; {name} is a directory mirror, which already is a plain \
         copy of the tree: copy it with cp -a"
    )]
    NotS3 { name: String },
    #[error(
        "directory {dir:?} is not empty; restore into an empty directory, or pass --force to \
         replay the mirror over its contents"
    )]
    NotEmpty { dir: PathBuf },
    #[error("failed to {action} {path:?}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restore failed before any record was applied to {dir:?}")]
    Failed {
        dir: PathBuf,
        #[source]
        source: Box<crate::mirror::Error>,
    },
    #[error(
        "restore stopped after {records} records of {objects} whole journal objects (last seq \
         {last_seq}); {dir:?} contains the tree as of the last record applied"
    )]
    Stopped {
        records: u64,
        objects: u64,
        last_seq: Seq,
        dir: PathBuf,
        #[source]
        source: Box<crate::mirror::Error>,
    },
    #[error("failed to list the restored tree")]
    Scan(#[source] manifest::ScanError),
}

/// Counts of what a restore applied and of what the directory contains afterwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub replay: ReplayStats,
    /// Regular files in the directory after the restore.
    pub files: u64,
    /// Sum of their sizes in bytes.
    pub bytes: u64,
}

/// Rebuilds the tree of the mirror `spec` in `dir`, which is created if missing and must be
/// empty unless `force` is set.
pub fn run(
    spec: &MirrorSpec,
    options: &S3Options,
    dir: &Path,
    force: bool,
) -> Result<Summary, Error> {
    let MirrorSpec::S3 { bucket, prefix } = spec else {
        return Err(Error::NotS3 { name: spec.name() });
    };
    let is_new = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "create",
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        action: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    if !force && entries.next().is_some() {
        return Err(Error::NotEmpty {
            dir: dir.to_path_buf(),
        });
    }

    let mut replay = ReplayStats::default();
    let restored = s3::restore(bucket, prefix, options, dir, &mut replay);
    if let Err(source) = restored {
        if replay.records > 0 {
            return Err(Error::Stopped {
                records: replay.records,
                objects: replay.objects,
                last_seq: replay.last_seq,
                dir: dir.to_path_buf(),
                source: Box::new(source),
            });
        }
        if is_new {
            // Nothing was applied, so the directory is empty again, and remove_dir removes
            // only an empty one.
            let _ = std::fs::remove_dir(dir);
        }
        return Err(Error::Failed {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        });
    }

    let tree = manifest::scan_tree(dir, &[OsStr::new(STATE_DIR_NAME)]).map_err(Error::Scan)?;
    let files = tree.entries.values().filter(|e| e.kind == EntryKind::File);
    let (files, bytes) = files.fold((0, 0), |(count, bytes), e| (count + 1, bytes + e.size));
    log::info!(
        "restored {} into {dir:?}: objects={} records={} repeated_records={} last_seq={} \
         files={files} bytes={bytes}",
        spec.name(),
        replay.objects,
        replay.records,
        replay.repeated_records,
        replay.last_seq
    );
    Ok(Summary {
        replay,
        files,
        bytes,
    })
}
