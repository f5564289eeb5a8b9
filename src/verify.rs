//! Verify: compares each mirror with the backing tree (type, size, mode, symlink target,
//! CRC32C of content) after the mirrors confirmed everything committed before the call.
//!
//! A difference seen while writes continue may only be a change in flight, so a difference
//! is reported only if it is still there after a second sync and a second comparison.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::STATE_DIR_NAME;
use crate::mirror::manifest;
use crate::mirror::worker::{Context, LastVerify, MirrorSlot, error_chain};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub mirrors: Vec<MirrorReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MirrorReport {
    pub name: String,
    /// Entries in the backing tree that were compared.
    pub entries: usize,
    /// One line per difference, naming the path.
    pub differences: Vec<String>,
    /// Reason the comparison failed, if it did.
    pub error: Option<String>,
    /// A resync from the backing tree was scheduled because of the differences.
    pub resync_scheduled: bool,
}

impl VerifyReport {
    /// Returns true when every mirror was compared and none differs.
    pub fn is_clean(&self) -> bool {
        self.mirrors
            .iter()
            .all(|m| m.error.is_none() && m.differences.is_empty())
    }
}

/// Compares every mirror with the backing tree; with `repair`, schedules a resync of each
/// mirror that differs. The result is also kept in the mirror's progress for status.
pub fn run(
    ctx: &Context,
    slots: &[Arc<MirrorSlot>],
    timeout: Duration,
    repair: bool,
) -> VerifyReport {
    let deadline = Instant::now() + timeout;
    let skip: Vec<&OsStr> = if ctx.skip_state_dir {
        vec![OsStr::new(STATE_DIR_NAME)]
    } else {
        Vec::new()
    };
    let mut report = VerifyReport::default();
    for slot in slots {
        let first = compare(ctx, slot, &skip, deadline);
        let result = match first {
            Ok((_, lines)) if !lines.is_empty() => {
                compare(ctx, slot, &skip, deadline).map(|(entries, again)| {
                    let before: BTreeSet<String> = lines.into_iter().collect();
                    (
                        entries,
                        again.into_iter().filter(|l| before.contains(l)).collect(),
                    )
                })
            }
            other => other,
        };
        let mut mirror_report = match result {
            Ok((entries, differences)) => MirrorReport {
                name: slot.name.clone(),
                entries,
                differences,
                error: None,
                resync_scheduled: false,
            },
            Err(error) => MirrorReport {
                name: slot.name.clone(),
                error: Some(error),
                ..Default::default()
            },
        };
        {
            let mut progress = slot.progress.lock().expect("progress lock");
            progress.last_verify = Some(LastVerify {
                at_ns: crate::mirror::worker::now_ns(),
                differences: mirror_report.differences.len() as u64,
                error: mirror_report.error.clone(),
            });
            // A mirror that failed the comparison, because it did not confirm in time or
            // could not be listed, is resynced too: that is the repair it can still get.
            let is_repairable =
                !mirror_report.differences.is_empty() || mirror_report.error.is_some();
            if repair && is_repairable {
                progress.needs_resync = true;
                mirror_report.resync_scheduled = true;
            }
        }
        if let Some(first) = mirror_report.differences.first() {
            log::error!(
                "verify mirror {}: {} differences from the backing tree, first: {first}",
                mirror_report.name,
                mirror_report.differences.len()
            );
        }
        log::info!(
            "verify mirror {}: entries: {}, differences: {}{}",
            mirror_report.name,
            mirror_report.entries,
            mirror_report.differences.len(),
            mirror_report
                .error
                .as_ref()
                .map(|e| format!(", failed: {e}"))
                .unwrap_or_default()
        );
        report.mirrors.push(mirror_report);
    }
    report
}

fn compare(
    ctx: &Context,
    slot: &MirrorSlot,
    skip: &[&OsStr],
    deadline: Instant,
) -> Result<(usize, Vec<String>), String> {
    let head = ctx.journal.head().0;
    if !ctx.acks.wait_all_confirmed(head, deadline) {
        let confirmed = slot.progress().confirmed.0;
        if confirmed < head {
            return Err(format!(
                "mirror has not confirmed the writes made before verify (confirmed seq {confirmed} of {head}); \
                 run `logmirror sync` or check `logmirror status`"
            ));
        }
    }
    let backing = manifest::scan_tree(&ctx.backing, skip)
        .map_err(|e| format!("reading the backing tree: {}", error_chain(&e)))?;
    let mirror = slot
        .mirror
        .lock()
        .expect("mirror lock")
        .manifest()
        .map_err(|e| format!("reading the mirror: {}", error_chain(&e)))?;
    let lines = manifest::diff(&backing, &mirror)
        .iter()
        .map(|d| d.to_string())
        .collect();
    Ok((backing.entries.len(), lines))
}
