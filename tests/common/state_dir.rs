//! Reading and damaging the files of an unmounted state directory: journal segments and
//! mirror cursors, for tests of recovery from damage.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::common::journal_objects::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::common::{STATE_DIR, TestDirs, list_dir, read_text};

pub fn journal_dir(dirs: &TestDirs) -> PathBuf {
    dirs.backing.join(STATE_DIR).join("journal")
}

/// Returns the segment files, oldest first, with the first seq from each name.
pub fn segments(dirs: &TestDirs) -> Vec<(u64, PathBuf)> {
    let mut found: Vec<(u64, PathBuf)> = list_dir(&journal_dir(dirs))
        .into_iter()
        .filter_map(|name| {
            let seq = name.strip_suffix(".seg")?.parse().ok()?;
            Some((seq, journal_dir(dirs).join(name)))
        })
        .collect();
    found.sort();
    found
}

/// Returns the byte offset of every record frame in a segment file, in seq order.
pub fn frame_offsets(segment: &Path) -> Vec<u64> {
    let bytes = std::fs::read(segment).unwrap_or_else(|e| panic!("read {segment:?}: {e}"));
    let mut offsets = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset + FRAME_HEADER_BYTES <= bytes.len() {
        offsets.push(offset as u64);
        let len: [u8; 4] = bytes[offset..offset + 4].try_into().expect("4 bytes");
        offset += FRAME_HEADER_BYTES + u32::from_le_bytes(len) as usize;
    }
    offsets
}

/// Returns the path of the only cursor file.
pub fn only_cursor_file(dirs: &TestDirs) -> PathBuf {
    let cursors = dirs.backing.join(STATE_DIR).join("cursors");
    let names = list_dir(&cursors);
    assert_eq!(names.len(), 1, "cursor files: {names:?}");
    cursors.join(&names[0])
}

/// Returns the confirmed seq and stream position in the cursor file of the only mirror.
pub fn mirror_cursor(dirs: &TestDirs) -> (u64, u64) {
    let text = read_text(&only_cursor_file(dirs));
    let cursor: serde_json::Value = serde_json::from_str(&text).expect("cursor is JSON");
    let field = |key: &str| {
        cursor[key]
            .as_u64()
            .unwrap_or_else(|| panic!("cursor field {key} in {text}"))
    };
    (field("seq"), field("position"))
}

/// Inverts every bit of the byte at `offset` of `path`.
pub fn flip_byte(path: &Path, offset: u64) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)
        .unwrap_or_else(|e| panic!("read {path:?} at {offset}: {e}"));
    byte[0] ^= 0xff;
    file.write_all_at(&byte, offset)
        .unwrap_or_else(|e| panic!("write {path:?} at {offset}: {e}"));
}
