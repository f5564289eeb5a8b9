//! Writing one file's copy: the bytes the previous copy shares with the file are copied
//! inside the store, and only the bytes after them are read from the backing file and sent.
//!
//! The copy's `crc32c` metadata is set when the upload starts, so the bytes to send are
//! read twice: once for the CRC32C, and once part by part for the upload, each part checked
//! against its CRC32C from the first read. A file rewritten in between fails with
//! [`CopyError::Changed`] and is written again on the next pass.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::journal::RelPath;

use super::plan::{self, Checkpoints, CrcBuilder, PUT_MAX_BYTES, Part};
use super::tracker::{FileCopy, SizeTrack, Stored, StoredObject};
use super::{Context, CopyError};
use crate::mirror::s3::store::ByteRange;

/// Size of the reads that compute a CRC32C.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// The backing file a copy is written from.
struct BackingFile<'a> {
    path: &'a RelPath,
    file: &'a File,
}

/// A copy after an update.
pub struct Written {
    pub object: StoredObject,
    /// False when the copy was already current and nothing was sent.
    pub uploaded: bool,
}

/// Brings the copy of `path` at `key` up to date from `file`, the backing file, whose size
/// was `file_size` when opened.
pub fn write_copy(
    ctx: &Context,
    path: &RelPath,
    key: &str,
    file: &File,
    file_size: u64,
    state: &FileCopy,
) -> Result<Written, CopyError> {
    let previous = previous_copy(ctx, key, &state.stored)?;
    let size = target_size(state.size, previous.as_ref(), file_size);
    let changed_from = state.dirty.map_or(size, |d| d.from);
    if let Some(object) = &previous
        && object.size() == size
        && changed_from >= size
    {
        return Ok(Written {
            object: object.clone(),
            uploaded: false,
        });
    }
    let kept = previous
        .as_ref()
        .map(|object| {
            (
                object,
                plan::kept_prefix(&object.checkpoints, changed_from, size).0,
            )
        })
        .filter(|(_, keep)| *keep > 0);
    let source = BackingFile { path, file };
    let object = match kept {
        None if size <= PUT_MAX_BYTES => put_whole(ctx, key, &source, size)?,
        None => multipart(ctx, key, &source, None, size)?,
        Some((object, keep)) => multipart(ctx, key, &source, Some((object, keep)), size)?,
    };
    Ok(Written {
        object,
        uploaded: true,
    })
}

/// Returns the previous copy whose bytes an update may keep, looking it up when unknown.
/// A copy without valid `crc32c` metadata is not one the mirror wrote, so it is not kept.
fn previous_copy(
    ctx: &Context,
    key: &str,
    stored: &Stored,
) -> Result<Option<StoredObject>, CopyError> {
    match stored {
        Stored::Present(object) => Ok(Some(object.clone())),
        Stored::Absent => Ok(None),
        Stored::Unknown => {
            let found = ctx
                .store
                .head(key)
                .map_err(Context::store_error("HEAD of", key))?;
            Ok(found.and_then(|info| {
                info.crc32c.map(|crc| StoredObject {
                    etag: info.etag,
                    checkpoints: Checkpoints::whole(info.size, crc),
                })
            }))
        }
    }
}

/// Returns the size the copy gets: the file's size at the copier's journal position where
/// the journal gives it, else the backing file's size, and never more than the file has.
fn target_size(track: SizeTrack, previous: Option<&StoredObject>, file_size: u64) -> u64 {
    let size = match track {
        SizeTrack::Known(size) => size,
        SizeTrack::AtLeast(size) => size.max(previous.map_or(file_size, StoredObject::size)),
        SizeTrack::Unknown => file_size,
    };
    size.min(file_size)
}

/// Writes a small file with one PUT.
fn put_whole(
    ctx: &Context,
    key: &str,
    source: &BackingFile,
    size: u64,
) -> Result<StoredObject, CopyError> {
    let mut body = vec![0u8; size as usize];
    source.read_exact(&mut body, 0)?;
    let mut builder = CrcBuilder::new(Checkpoints::whole(0, 0));
    builder.update(&body);
    let crc = builder.crc();
    let etag = ctx
        .store
        .put_copy(key, &body, crc)
        .map_err(Context::store_error("upload of", key))?;
    log::debug!(
        "mirror {}: wrote copy key={key} bytes={size} crc32c={crc:08x}",
        ctx.name
    );
    Ok(StoredObject {
        etag,
        checkpoints: builder.finish(),
    })
}

/// Writes a copy as a multipart upload: the first `keep` bytes of `previous` copied inside
/// the store, the rest up to `size` read from the file and sent.
fn multipart(
    ctx: &Context,
    key: &str,
    source: &BackingFile,
    previous: Option<(&StoredObject, u64)>,
    size: u64,
) -> Result<StoredObject, CopyError> {
    let keep = previous.map_or(0, |(_, keep)| keep);
    let parts = plan::multipart_parts(keep, size);

    // First read: the CRC32C of the new content, which the upload's metadata needs.
    let base = previous.map_or(Checkpoints::whole(0, 0), |(object, keep)| {
        object.checkpoints.cut_at(keep)
    });
    let mut builder = CrcBuilder::new(base);
    let mut part_crcs = Vec::new();
    for part in &parts {
        if let Part::Upload(range) = part {
            part_crcs.push(source.read_crc(*range, &mut builder)?);
        }
    }
    let crc = builder.crc();

    let upload_id = ctx
        .store
        .create_multipart(key, Some(crc))
        .map_err(Context::store_error("multipart start of", key))?;
    let source_etag = previous.map_or("", |(object, _)| object.etag.as_str());
    let sent = send_parts(
        ctx,
        key,
        source,
        &upload_id,
        &parts,
        &part_crcs,
        source_etag,
    );
    let etag = match sent {
        Ok(etag) => etag,
        Err(e) => {
            if let Err(abort) = ctx.store.abort_multipart(key, &upload_id) {
                log::debug!(
                    "mirror {}: abort of upload to {key} failed: {abort}",
                    ctx.name
                );
            }
            return Err(e);
        }
    };

    log::debug!(
        "mirror {}: wrote copy key={key} bytes={size} kept={keep} sent={} parts={} \
         crc32c={crc:08x}",
        ctx.name,
        size - keep,
        parts.len()
    );
    Ok(StoredObject {
        etag,
        checkpoints: builder.finish(),
    })
}

/// Sends the parts of a multipart upload and completes it; returns the new ETag.
fn send_parts(
    ctx: &Context,
    key: &str,
    source: &BackingFile,
    upload_id: &str,
    parts: &[Part],
    part_crcs: &[u32],
    source_etag: &str,
) -> Result<String, CopyError> {
    let mut done = Vec::with_capacity(parts.len());
    let mut crcs = part_crcs.iter();
    let mut body = Vec::new();
    for (index, part) in parts.iter().enumerate() {
        let number = index as i32 + 1;
        let etag = match part {
            Part::Copy(range) => ctx
                .store
                .upload_part_copy(key, upload_id, number, key, source_etag, *range)
                .map_err(Context::store_error("part copy of", key))?,
            Part::Upload(range) => {
                body.resize(range.len() as usize, 0);
                source.read_exact(&mut body, range.start)?;
                if Some(&crc32c::crc32c(&body)) != crcs.next() {
                    return Err(CopyError::Changed {
                        path: source.path.clone(),
                    });
                }
                ctx.store
                    .upload_part(key, upload_id, number, &body)
                    .map_err(Context::store_error("part upload of", key))?
            }
        };
        done.push((number, etag));
    }
    ctx.store
        .complete_multipart(key, upload_id, &done)
        .map_err(Context::store_error("multipart completion of", key))
}

impl BackingFile<'_> {
    /// Reads `range` into `builder`; returns the CRC32C of the range alone.
    fn read_crc(&self, range: ByteRange, builder: &mut CrcBuilder) -> Result<u32, CopyError> {
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut offset = range.start;
        let mut crc = 0;
        while offset < range.end {
            let len = ((range.end - offset) as usize).min(buf.len());
            self.read_exact(&mut buf[..len], offset)?;
            builder.update(&buf[..len]);
            crc = crc32c::crc32c_append(crc, &buf[..len]);
            offset += len as u64;
        }
        Ok(crc)
    }

    /// Fills `buf` from `offset`; a file that became shorter is [`CopyError::Changed`].
    fn read_exact(&self, buf: &mut [u8], offset: u64) -> Result<(), CopyError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(CopyError::Changed {
                path: self.path.clone(),
            }),
            Err(source) => Err(CopyError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(size: u64) -> StoredObject {
        StoredObject {
            etag: String::new(),
            checkpoints: Checkpoints::whole(size, 1),
        }
    }

    #[test]
    fn target_size_cases() {
        assert_eq!(target_size(SizeTrack::Known(10), None, 100), 10);
        assert_eq!(target_size(SizeTrack::Known(10), None, 5), 5);
        assert_eq!(
            target_size(SizeTrack::AtLeast(10), Some(&object(50)), 100),
            50
        );
        assert_eq!(
            target_size(SizeTrack::AtLeast(60), Some(&object(50)), 100),
            60
        );
        assert_eq!(target_size(SizeTrack::AtLeast(10), None, 100), 100);
        assert_eq!(target_size(SizeTrack::Unknown, Some(&object(50)), 70), 70);
    }
}
