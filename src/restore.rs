//! Restore: rebuilds a backing directory from an S3 mirror, for a host that lost its disk,
//! as of the newest record or of an earlier seq or time.
//!
//! The mirror's newest snapshot and the journal objects after it are downloaded in order.
//! Each one is checked whole (the store's CRC32C, its header, every frame's CRC32C and
//! every path) before its records are replayed into the directory through a `DirMirror`,
//! which reaches every path from the directory's descriptor with `O_NOFOLLOW`. So nothing
//! is written outside the directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{MirrorSpec, S3Options, STATE_DIR_NAME};
use crate::journal::Seq;
use crate::mirror::manifest::{self, EntryKind};
use crate::mirror::s3::{self, ReplayEnd, ReplayStats, ReplayTarget};

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
    #[error(
        "{requested} is before the earliest point that {mirror} can restore, which is {earliest}; \
         older history was folded into a snapshot (retention=) or never uploaded. Pass a later \
         --seq or --at; nothing was written to {dir:?}"
    )]
    BeforeEarliest {
        mirror: String,
        requested: String,
        earliest: String,
        dir: PathBuf,
    },
    #[error(
        "record seq {seq} is not in the history of {mirror}: it goes from seq {before} to seq \
         {after}, because a resync from the backing tree replaced the records between them. \
         {dir:?} contains the tree up to seq {before} and that resync; pass --seq {before} or \
         --seq {after}"
    )]
    SeqMissing {
        mirror: String,
        seq: Seq,
        before: Seq,
        after: Seq,
        dir: PathBuf,
    },
    #[error(
        "the history of {mirror} ends at seq {last_seq} ({last_at}) and has no seq {seq}; \
         {dir:?} contains the tree as of seq {last_seq}"
    )]
    SeqAfterEnd {
        mirror: String,
        seq: Seq,
        last_seq: Seq,
        last_at: String,
        dir: PathBuf,
    },
    #[error("failed to list the restored tree")]
    Scan(#[source] manifest::ScanError),
}

/// The point of the mirror's history to restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointInTime {
    /// The newest record in the mirror.
    Latest,
    /// Right after the record with this seq (the first one, if the history contains several
    /// journals).
    Seq(Seq),
    /// The newest state committed at or before this time, in ns since the Unix epoch.
    Time(u64),
}

impl PointInTime {
    fn target(self) -> ReplayTarget {
        match self {
            PointInTime::Latest => ReplayTarget::End,
            PointInTime::Seq(seq) => ReplayTarget::Seq(seq),
            PointInTime::Time(ns) => ReplayTarget::Time(ns),
        }
    }

    fn describe(self) -> String {
        match self {
            PointInTime::Latest => "the newest record".to_string(),
            PointInTime::Seq(seq) => format!("seq {seq}"),
            PointInTime::Time(ns) => format_time(ns),
        }
    }
}

/// Receives the counts of a restore as it goes, for a progress display.
pub trait Progress {
    /// Called after each snapshot part or journal object was applied.
    fn update(&mut self, stats: &ReplayStats);

    /// Called once when the replay ended, before anything else is logged or printed.
    fn finish(&mut self, stats: &ReplayStats);
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

/// Rebuilds the tree of the mirror `spec` as of `point` in `dir`, which is created if
/// missing and must be empty unless `force` is set.
pub fn run(
    spec: &MirrorSpec,
    options: &S3Options,
    dir: &Path,
    point: PointInTime,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<Summary, Error> {
    let MirrorSpec::S3 { bucket, prefix } = spec else {
        return Err(Error::NotS3 { name: spec.name() });
    };
    let is_new = !dir.exists();
    prepare_dir(dir, force)?;

    let mut replay = ReplayStats::default();
    let target = point.target();
    let restored = s3::restore(
        bucket,
        prefix,
        options,
        dir,
        target,
        &mut replay,
        &mut |stats| progress.update(stats),
    );
    progress.finish(&replay);
    let applied = replay.records + replay.snapshot_frames;
    let end = match restored {
        Ok(end) => end,
        Err(source) if applied > 0 => {
            return Err(Error::Stopped {
                records: replay.records,
                objects: replay.objects,
                last_seq: replay.last_seq,
                dir: dir.to_path_buf(),
                source: Box::new(source),
            });
        }
        Err(source) => {
            remove_if_new(dir, is_new);
            return Err(Error::Failed {
                dir: dir.to_path_buf(),
                source: Box::new(source),
            });
        }
    };
    check_end(spec, dir, point, end, &replay, is_new)?;

    let tree = manifest::scan_tree(dir, &[OsStr::new(STATE_DIR_NAME)]).map_err(Error::Scan)?;
    let files = tree.entries.values().filter(|e| e.kind == EntryKind::File);
    let (files, bytes) = files.fold((0, 0), |(count, bytes), e| (count + 1, bytes + e.size));
    log::info!(
        "restored {} as of {} into {dir:?}: snapshot={} snapshot_frames={} objects={} \
         records={} repeated_records={} last_seq={} files={files} bytes={bytes}",
        spec.name(),
        point.describe(),
        replay
            .snapshot
            .map_or("none".to_string(), |n| n.to_string()),
        replay.snapshot_frames,
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

/// Creates `dir` if missing and checks that it is empty unless `force` is set.
fn prepare_dir(dir: &Path, force: bool) -> Result<(), Error> {
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
    Ok(())
}

/// Removes `dir` if this restore created it; only an empty directory is removed.
fn remove_if_new(dir: &Path, is_new: bool) {
    if is_new {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Turns a replay that ended short of `point` into an error.
fn check_end(
    spec: &MirrorSpec,
    dir: &Path,
    point: PointInTime,
    end: ReplayEnd,
    replay: &ReplayStats,
    is_new: bool,
) -> Result<(), Error> {
    let dir = dir.to_path_buf();
    let mirror = spec.name();
    let seq = match point {
        PointInTime::Seq(seq) => seq,
        _ => Seq(0),
    };
    match end {
        ReplayEnd::Complete | ReplayEnd::Reached => Ok(()),
        ReplayEnd::BeforeEarliest {
            seq: earliest_seq,
            at_ns,
        } => {
            remove_if_new(&dir, is_new);
            let earliest = match earliest_seq {
                Seq(0) => format!("{} (a resync from the backing tree)", format_time(at_ns)),
                _ => format!("seq {earliest_seq} at {}", format_time(at_ns)),
            };
            Err(Error::BeforeEarliest {
                mirror,
                requested: point.describe(),
                earliest,
                dir,
            })
        }
        ReplayEnd::SeqMissing { before, after } => Err(Error::SeqMissing {
            mirror,
            seq,
            before,
            after,
            dir,
        }),
        ReplayEnd::SeqAfterEnd => Err(Error::SeqAfterEnd {
            mirror,
            seq,
            last_seq: replay.last_seq,
            last_at: format_time(replay.last_seq_at_ns),
            dir,
        }),
    }
}

/// Formats a time in ns since the Unix epoch as RFC 3339 in UTC, with as many fractional
/// digits as it needs, so that `--at` with the printed value includes that instant.
pub fn format_time(ns: u64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(time) => time.to_string(),
        Err(_) => format!("{ns} ns after the Unix epoch"),
    }
}

/// Parses the `--at` value: RFC 3339 with an offset (`2026-12-04T10:00:00Z`,
/// `2026-12-04T11:00:00.5+01:00`) or seconds since the Unix epoch (`1796378400`,
/// `1796378400.25`). Returns ns since the Unix epoch.
pub fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Some(ns) = parse_unix_seconds(text) {
        return Ok(ns);
    }
    let time: jiff::Timestamp = text.parse().map_err(|e| {
        format!(
            "invalid time {text:?} ({e}); use RFC 3339 with an offset, as in \
             2026-12-04T10:00:00Z, or seconds since the Unix epoch"
        )
    })?;
    u64::try_from(time.as_nanosecond())
        .map_err(|_| format!("time {text:?} is before 1970-01-01T00:00:00Z"))
}

/// Parses `SECONDS[.FRACTION]` with at most 9 fractional digits.
fn parse_unix_seconds(text: &str) -> Option<u64> {
    let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if seconds.is_empty() || !is_digits(seconds) || !is_digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let nanos: u64 = format!("{fraction:0<9}").parse().ok()?;
    seconds
        .parse::<u64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_parses_rfc3339_and_seconds() {
        let cases = [
            ("2026-12-04T10:00:00Z", 1_796_378_400_000_000_000),
            ("2026-12-04T11:00:00+01:00", 1_796_378_400_000_000_000),
            ("2026-12-04T10:00:00.25Z", 1_796_378_400_250_000_000),
            ("1796378400", 1_796_378_400_000_000_000),
            ("1796378400.25", 1_796_378_400_250_000_000),
            ("1796378400.000000001", 1_796_378_400_000_000_001),
            ("0", 0),
        ];
        for (text, ns) in cases {
            assert_eq!(parse_time(text), Ok(ns), "{text}");
        }
    }

    #[test]
    fn time_rejects_invalid() {
        for text in [
            "",
            "yesterday",
            "2026-12-04T10:00:00",
            "2026-13-04T10:00:00Z",
            "1796378400.1234567891",
            "-5",
            "1969-12-31T23:59:59Z",
            "99999999999999999999",
        ] {
            let message = parse_time(text).unwrap_err();
            assert!(
                message.contains(&format!("{:?}", text.trim())),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn time_format_round_trips() {
        for ns in [
            0,
            1_796_378_400_000_000_000,
            1_796_378_400_250_000_000,
            1_796_378_400_000_000_001,
        ] {
            let text = format_time(ns);
            assert!(text.ends_with('Z'), "{text}");
            assert_eq!(parse_time(&text), Ok(ns), "{text}");
        }
        assert_eq!(
            format_time(1_796_378_400_000_000_000),
            "2026-12-04T10:00:00Z"
        );
    }
}
