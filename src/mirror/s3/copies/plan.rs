//! Arithmetic of a copy update: the running CRC32C of a copy's content with checkpoints,
//! and the parts of a multipart upload that keeps an unchanged prefix inside the store.
//!
//! S3's rules for multipart uploads: at most 10,000 parts, each of 5 MiB to 5 GiB except
//! the last, which may be smaller. A part copied from an existing object (UploadPartCopy)
//! obeys the same limits, so an unchanged prefix of less than 5 MiB cannot be kept and the
//! whole file is uploaded instead. Nothing here does I/O.

use crate::mirror::s3::store::ByteRange;

/// Smallest part S3 accepts, except for the last part of an upload.
pub const MIN_PART_BYTES: u64 = 5 << 20;

/// Largest part S3 accepts, uploaded or copied.
pub const MAX_PART_BYTES: u64 = 5 << 30;

/// Maximum number of parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// Size of the parts read from the backing file and uploaded; each is held in memory.
pub const UPLOAD_PART_BYTES: u64 = 16 << 20;

/// Largest file sent with one PUT when no prefix can be kept.
pub const PUT_MAX_BYTES: u64 = UPLOAD_PART_BYTES;

/// Distance between checkpoints when a copy is written; it doubles when a copy has more
/// than [`MAX_CHECKPOINTS`].
pub const CHECKPOINT_STEP_BYTES: u64 = 1 << 20;

/// Most checkpoints kept per copy, so that memory stays small for large files.
pub const MAX_CHECKPOINTS: usize = 1024;

/// CRC32C values of prefixes of a copy's content: `(offset, CRC32C of bytes 0..offset)`,
/// in offset order, from `(0, 0)` to `(size, CRC32C of the whole content)`.
///
/// A later update that keeps the bytes up to a checkpoint has their CRC32C without reading
/// them. CRC32C values combine, so the new content's CRC32C follows from the checkpoint and
/// the bytes sent after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoints {
    points: Vec<(u64, u32)>,
}

impl Checkpoints {
    /// Returns the checkpoints of content whose only known CRC32C is the whole one.
    pub fn whole(size: u64, crc: u32) -> Checkpoints {
        let mut points = vec![(0, 0)];
        if size > 0 {
            points.push((size, crc));
        }
        Checkpoints { points }
    }

    /// Returns the size of the content.
    pub fn size(&self) -> u64 {
        self.last().0
    }

    /// Returns the CRC32C of the whole content.
    pub fn crc(&self) -> u32 {
        self.last().1
    }

    fn last(&self) -> (u64, u32) {
        *self.points.last().expect("checkpoints start with (0, 0)")
    }

    /// Returns the last checkpoint at or before `offset`.
    pub fn floor(&self, offset: u64) -> (u64, u32) {
        let index = self.points.partition_point(|(at, _)| *at <= offset);
        self.points[index.saturating_sub(1)]
    }

    /// Returns the checkpoints up to and including `offset`, which must be a checkpoint.
    pub fn cut_at(&self, offset: u64) -> Checkpoints {
        let index = self.points.partition_point(|(at, _)| *at <= offset);
        let points = self.points[..index.max(1)].to_vec();
        debug_assert_eq!(points.last().map(|p| p.0), Some(offset));
        Checkpoints { points }
    }

    /// Returns the number of checkpoints, `(0, 0)` included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }
}

/// Extends checkpoints over bytes appended after them, as they are read.
#[derive(Clone, Debug)]
pub struct CrcBuilder {
    points: Vec<(u64, u32)>,
    offset: u64,
    crc: u32,
    step: u64,
}

impl CrcBuilder {
    /// Starts after the last of `base`, whose content is kept.
    pub fn new(base: Checkpoints) -> CrcBuilder {
        let (offset, crc) = base.last();
        let mut builder = CrcBuilder {
            points: base.points,
            offset,
            crc,
            step: CHECKPOINT_STEP_BYTES,
        };
        while builder.points.len() > MAX_CHECKPOINTS {
            builder.thin();
        }
        builder
    }

    /// Adds `data`, the bytes that follow what was added so far.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let next_point = (self.offset / self.step + 1) * self.step;
            let take = ((next_point - self.offset) as usize).min(data.len());
            self.crc = crc32c::crc32c_append(self.crc, &data[..take]);
            self.offset += take as u64;
            data = &data[take..];
            if self.offset == next_point {
                self.points.push((self.offset, self.crc));
                if self.points.len() > MAX_CHECKPOINTS {
                    self.thin();
                }
            }
        }
    }

    /// Returns the offset after the bytes added so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Returns the CRC32C of the content up to the offset.
    pub fn crc(&self) -> u32 {
        self.crc
    }

    /// Returns the checkpoints, ending at the offset.
    pub fn finish(mut self) -> Checkpoints {
        if self.points.last().map(|p| p.0) != Some(self.offset) {
            self.points.push((self.offset, self.crc));
        }
        Checkpoints {
            points: self.points,
        }
    }

    /// Doubles the step and keeps the checkpoints at its multiples, plus the first and the
    /// last.
    fn thin(&mut self) {
        self.step *= 2;
        let last = self.points.len() - 1;
        let step = self.step;
        let mut index = 0;
        self.points.retain(|(at, _)| {
            let keep = index == 0 || index == last || at % step == 0;
            index += 1;
            keep
        });
    }
}

/// One part of a multipart upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Bytes of the previous object, copied inside the store.
    Copy(ByteRange),
    /// Bytes read from the backing file and sent.
    Upload(ByteRange),
}

/// Returns the parts that make an object of `size` bytes from the first `keep` bytes of the
/// previous object and the backing file's bytes after them.
///
/// `keep` must be 0 or at least [`MIN_PART_BYTES`]. Copied parts cover `0..keep` in pieces
/// of at most 5 GiB, and uploaded parts cover `keep..size` in pieces of
/// [`UPLOAD_PART_BYTES`] (more when 10,000 parts would not be enough). Every part but the
/// last has at least 5 MiB.
pub fn multipart_parts(keep: u64, size: u64) -> Vec<Part> {
    debug_assert!(keep == 0 || keep >= MIN_PART_BYTES);
    debug_assert!(keep <= size);
    let mut parts = Vec::new();
    if keep > 0 {
        let count = keep.div_ceil(MAX_PART_BYTES);
        let step = keep.div_ceil(count);
        let mut start = 0;
        while start < keep {
            let end = (start + step).min(keep);
            parts.push(Part::Copy(ByteRange { start, end }));
            start = end;
        }
    }
    let tail = size - keep;
    if tail > 0 {
        let room = MAX_PARTS - parts.len() as u64;
        let step = UPLOAD_PART_BYTES.max(tail.div_ceil(room));
        let mut start = keep;
        while start < size {
            let end = (start + step).min(size);
            parts.push(Part::Upload(ByteRange { start, end }));
            start = end;
        }
    }
    parts
}

/// Returns how many bytes of the previous object an update keeps, with their CRC32C. That
/// is the last checkpoint at or before both `changed_from` (the first byte that may differ)
/// and `size`. It is 0 below [`MIN_PART_BYTES`], because S3 cannot copy a smaller part in
/// front of others.
pub fn kept_prefix(previous: &Checkpoints, changed_from: u64, size: u64) -> (u64, u32) {
    let limit = changed_from.min(size).min(previous.size());
    let (offset, crc) = previous.floor(limit);
    // NOTE: a copy under 5 MiB is sent whole at every update of its file.
    if offset < MIN_PART_BYTES {
        (0, 0)
    } else {
        (offset, crc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn range(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    /// Checks the S3 rules: parts cover 0..size in order, at most 10,000 of them, each at
    /// most 5 GiB, each but the last at least 5 MiB.
    fn assert_valid(parts: &[Part], size: u64) {
        assert!(parts.len() as u64 <= MAX_PARTS);
        let mut next = 0;
        for (index, part) in parts.iter().enumerate() {
            let (Part::Copy(r) | Part::Upload(r)) = *part;
            assert_eq!(r.start, next, "part {index} of {parts:?}");
            assert!(r.len() <= MAX_PART_BYTES, "part {index}");
            if index + 1 < parts.len() {
                assert!(r.len() >= MIN_PART_BYTES, "part {index} of {}", parts.len());
            }
            next = r.end;
        }
        assert_eq!(next, size);
    }

    #[test]
    fn parts_append_to_large_object() {
        let parts = multipart_parts(256 * MIB, 256 * MIB + 4096);
        assert_eq!(
            parts,
            [
                Part::Copy(range(0, 256 * MIB)),
                Part::Upload(range(256 * MIB, 256 * MIB + 4096)),
            ]
        );
    }

    #[test]
    fn parts_whole_upload() {
        let parts = multipart_parts(0, 40 * MIB);
        assert_eq!(
            parts,
            [
                Part::Upload(range(0, 16 * MIB)),
                Part::Upload(range(16 * MIB, 32 * MIB)),
                Part::Upload(range(32 * MIB, 40 * MIB)),
            ]
        );
    }

    #[test]
    fn parts_truncate_keeps_copy_only() {
        assert_eq!(
            multipart_parts(6 * MIB, 6 * MIB),
            [Part::Copy(range(0, 6 * MIB))]
        );
    }

    #[test]
    fn parts_follow_s3_limits() {
        let cases = [
            (0, 1),
            (0, 16 * MIB + 1),
            (5 * MIB, 5 * MIB + 1),
            (5 * GIB, 5 * GIB + 1),
            (5 * GIB + 1, 5 * GIB + 2),
            (12 * GIB + 7, 20 * GIB),
            (0, 5 * 1024 * GIB),
            (4 * 1024 * GIB, 5 * 1024 * GIB),
        ];
        for (keep, size) in cases {
            let parts = multipart_parts(keep, size);
            assert_valid(&parts, size);
            let copied: u64 = parts
                .iter()
                .map(|p| match p {
                    Part::Copy(r) => r.len(),
                    Part::Upload(_) => 0,
                })
                .sum();
            assert_eq!(copied, keep, "keep {keep} size {size}");
        }
    }

    #[test]
    fn kept_prefix_needs_five_mib() {
        let previous = Checkpoints::whole(4 * MIB, 7);
        assert_eq!(kept_prefix(&previous, 4 * MIB, 5 * MIB), (0, 0));
        let previous = Checkpoints::whole(5 * MIB, 9);
        assert_eq!(kept_prefix(&previous, 5 * MIB, 6 * MIB), (5 * MIB, 9));
        assert_eq!(kept_prefix(&previous, u64::MAX, 6 * MIB), (5 * MIB, 9));
        // A change inside the object, with no checkpoint before it but 0.
        assert_eq!(kept_prefix(&previous, 5 * MIB - 1, 6 * MIB), (0, 0));
        // The file shrank below the object.
        assert_eq!(kept_prefix(&previous, u64::MAX, MIB), (0, 0));
    }

    #[test]
    fn builder_checkpoints_match_crc() {
        let data: Vec<u8> = (0..(3 * MIB + 100) as usize)
            .map(|i| (i * 7) as u8)
            .collect();
        let mut builder = CrcBuilder::new(Checkpoints::whole(0, 0));
        for chunk in data.chunks(100_000) {
            builder.update(chunk);
        }
        assert_eq!(builder.crc(), crc32c::crc32c(&data));
        let points = builder.finish();
        assert_eq!(points.len(), 5);
        for offset in [0, MIB, 2 * MIB, 3 * MIB, 3 * MIB + 100] {
            let (at, crc) = points.floor(offset);
            assert_eq!(at, offset);
            assert_eq!(crc, crc32c::crc32c(&data[..offset as usize]), "{offset}");
        }
        assert_eq!(
            points.floor(MIB + 5),
            (MIB, crc32c::crc32c(&data[..MIB as usize]))
        );

        // Keep 2 MiB, append other bytes: the CRC is that of the new content.
        let mut builder = CrcBuilder::new(points.cut_at(2 * MIB));
        builder.update(b"appended");
        let mut expected = data[..2 * MIB as usize].to_vec();
        expected.extend_from_slice(b"appended");
        assert_eq!(builder.crc(), crc32c::crc32c(&expected));
        let points = builder.finish();
        assert_eq!(points.size(), 2 * MIB + 8);
        assert_eq!(points.crc(), crc32c::crc32c(&expected));
    }

    #[test]
    fn builder_thins_checkpoints() {
        let mut builder = CrcBuilder::new(Checkpoints::whole(0, 0));
        let chunk = vec![0x5a; MIB as usize];
        let mut content_crc = 0;
        for _ in 0..3000 {
            builder.update(&chunk);
            content_crc = crc32c::crc32c_append(content_crc, &chunk);
        }
        let points = builder.finish();
        assert!(points.len() <= MAX_CHECKPOINTS + 1, "{}", points.len());
        assert_eq!(points.size(), 3000 * MIB);
        assert_eq!(points.crc(), content_crc);
        // Checkpoints are at multiples of 4 MiB now: 3000 MiB / 1024 rounds up to 4 MiB.
        let (at, crc) = points.floor(2001 * MIB);
        assert_eq!(at, 2000 * MIB);
        let mut prefix_crc = 0;
        for _ in 0..2000 {
            prefix_crc = crc32c::crc32c_append(prefix_crc, &chunk);
        }
        assert_eq!(crc, prefix_crc);
    }
}
