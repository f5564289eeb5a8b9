//! Status of a running mount: mode, journal and, per mirror, state, lag and last error, as
//! JSON for scripts and as text for operators. Built by the daemon, printed by the client.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::mirror::s3::CopiesStatus;
use crate::mirror::worker::{Context, LastVerify, MirrorSlot};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub mountpoint: String,
    pub backing: String,
    pub state_dir: String,
    pub mode: String,
    /// Sync mode fell back to async because mirrors did not confirm within sync_timeout.
    pub degraded: bool,
    pub head_seq: u64,
    pub journal_first_seq: u64,
    pub journal_bytes: u64,
    pub mirrors: Vec<MirrorStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    /// ok, lagging or down.
    pub state: String,
    pub confirmed_seq: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
    pub failed_attempts: u64,
    pub resync_pending: bool,
    /// Outcome of the latest `logmirror verify`, if one ran since the mount.
    pub last_verify: Option<LastVerify>,
    /// S3 mirrors: bytes of request bodies sent to the store since the mount (journal
    /// objects and readable copies, retries included).
    #[serde(default)]
    pub bytes_uploaded: Option<u64>,
    /// S3 mirrors: progress of the readable copies.
    #[serde(default)]
    pub copies: Option<CopiesStatus>,
}

/// Paths and mode shown in status, fixed at mount time.
pub struct MountInfo {
    pub mountpoint: String,
    pub backing: String,
    pub state_dir: String,
    pub mode: String,
}

/// Builds the status from the live state.
pub fn collect(info: &MountInfo, ctx: &Context, slots: &[Arc<MirrorSlot>]) -> Status {
    let (head, head_position) = ctx.journal.head();
    let mirrors = slots
        .iter()
        .map(|slot| {
            let progress = slot.progress();
            let (state, lag_seconds) = slot.state(head);
            let state = serde_json::to_value(state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            MirrorStatus {
                name: slot.name.clone(),
                state,
                confirmed_seq: progress.confirmed.0.0,
                lag_records: head.0.saturating_sub(progress.confirmed.0.0),
                lag_bytes: head_position.0.saturating_sub(progress.confirmed.1.0),
                lag_seconds,
                last_error: progress.last_error,
                failed_attempts: progress.failed_attempts,
                resync_pending: progress.needs_resync,
                last_verify: progress.last_verify,
                bytes_uploaded: slot.copies.as_ref().map(|c| c.bytes_uploaded()),
                copies: slot.copies.as_ref().map(|c| c.status()),
            }
        })
        .collect();
    Status {
        pid: std::process::id(),
        mountpoint: info.mountpoint.clone(),
        backing: info.backing.clone(),
        state_dir: info.state_dir.clone(),
        mode: info.mode.clone(),
        degraded: ctx.acks.is_degraded(),
        head_seq: head.0,
        journal_first_seq: ctx.journal.first_seq().0,
        journal_bytes: ctx.journal.size_bytes(),
        mirrors,
    }
}

/// Renders the status for a terminal.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mode = if status.degraded {
        format!(
            "{} (degraded: running async until mirrors catch up)",
            status.mode
        )
    } else {
        status.mode.clone()
    };
    let _ = writeln!(
        out,
        "mount:   {} (backing {})",
        status.mountpoint, status.backing
    );
    let _ = writeln!(
        out,
        "daemon:  pid {}, state {}",
        status.pid, status.state_dir
    );
    let _ = writeln!(out, "mode:    {mode}");
    let _ = writeln!(
        out,
        "journal: head seq {}, oldest seq {}, {}",
        status.head_seq,
        status.journal_first_seq,
        human_bytes(status.journal_bytes)
    );
    for m in &status.mirrors {
        let _ = writeln!(
            out,
            "mirror {}: {}, confirmed seq {}, lag {} records, {}, {:.1} s",
            m.name,
            m.state,
            m.confirmed_seq,
            m.lag_records,
            human_bytes(m.lag_bytes),
            m.lag_seconds
        );
        if m.resync_pending {
            let _ = writeln!(out, "  resync from the backing tree pending");
        }
        if let Some(bytes) = m.bytes_uploaded {
            let _ = writeln!(out, "  uploaded since the mount: {}", human_bytes(bytes));
        }
        if let Some(copies) = &m.copies {
            let comparing = if copies.comparing {
                ", comparison with the backing tree pending"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  readable copies: {} files pending, {} written, at seq {}{comparing}",
                copies.files_pending, copies.copies_written, copies.position
            );
            if let Some(error) = &copies.last_error {
                let _ = writeln!(out, "  readable copies, last error: {error}");
            }
        }
        if let Some(error) = &m.last_error {
            let _ = writeln!(out, "  last error: {error}");
        }
        if let Some(verify) = &m.last_verify {
            let ago = crate::mirror::worker::now_ns().saturating_sub(verify.at_ns) / 1_000_000_000;
            match &verify.error {
                Some(error) => {
                    let _ = writeln!(out, "  last verify ({ago} s ago) failed: {error}");
                }
                None => {
                    let _ = writeln!(
                        out,
                        "  last verify ({ago} s ago): differences: {}",
                        verify.differences
                    );
                }
            }
        }
    }
    out
}

/// Formats a byte count with a binary unit.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
