//! Verify: compares each mirror with the entries of the backing tree that its path rules
//! send it (type, size, mode, symlink target, CRC32C of content) after the mirrors confirmed
//! everything committed before the call. The
//! readable copies of an S3 mirror are compared too, by size and the CRC32C in their
//! metadata, once every file changed before the call has its copy written.
//!
//! A difference seen while writes continue may only be a change in flight, so a difference
//! is reported only if it is still there after a second sync and a second comparison. Runs
//! for `logmirror verify` and, every `verify_interval`, on the daemon's own schedule.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::STATE_DIR_NAME;
use crate::mirror::manifest::{self, Difference};
use crate::mirror::worker::{Context, LastVerify, MirrorSlot, VerifyTrigger, error_chain};

/// Differences logged per mirror and verify; the rest are counted in one more line.
const MAX_LOGGED_DIFFERENCES: usize = 100;

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
/// mirror that differs. The result is also kept in the mirror's progress for status, and
/// each difference is logged at error level.
pub fn run(
    ctx: &Context,
    slots: &[Arc<MirrorSlot>],
    timeout: Duration,
    repair: bool,
    trigger: VerifyTrigger,
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
            // A mirror that failed the comparison, because it did not confirm in time or
            // could not be listed, is resynced too: that is the repair it can still get.
            let is_repairable =
                !mirror_report.differences.is_empty() || mirror_report.error.is_some();
            if repair && is_repairable {
                progress.needs_resync = true;
                mirror_report.resync_scheduled = true;
            }
            progress.last_verify = Some(LastVerify {
                at_ns: crate::mirror::worker::now_ns(),
                trigger,
                differences: mirror_report.differences.len() as u64,
                error: mirror_report.error.clone(),
                resync_scheduled: mirror_report.resync_scheduled,
            });
        }
        log_report(&mirror_report, trigger);
        report.mirrors.push(mirror_report);
    }
    report
}

/// Logs each difference at error level, naming the mirror and the path, then the summary.
fn log_report(report: &MirrorReport, trigger: VerifyTrigger) {
    let kind = match trigger {
        VerifyTrigger::Command => "verify",
        VerifyTrigger::Periodic => "periodic verify",
    };
    let name = &report.name;
    for line in report.differences.iter().take(MAX_LOGGED_DIFFERENCES) {
        log::error!("{kind} mirror {name}: {line}");
    }
    let unlogged = report
        .differences
        .len()
        .saturating_sub(MAX_LOGGED_DIFFERENCES);
    if unlogged > 0 {
        log::error!(
            "{kind} mirror {name}: {unlogged} more differences not logged; `logmirror verify` \
             lists them all"
        );
    }
    if let Some(error) = &report.error {
        log::error!("{kind} mirror {name}: not compared: {error}");
    }
    if report.resync_scheduled {
        log::warn!("{kind} mirror {name}: resync from the backing tree scheduled to repair it");
    }
    log::info!(
        "{kind} mirror {name}: entries: {}, differences: {}{}",
        report.entries,
        report.differences.len(),
        report
            .error
            .as_ref()
            .map(|e| format!(", failed: {e}"))
            .unwrap_or_default()
    );
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
    let whole = manifest::scan_tree(&ctx.backing, skip)
        .map_err(|e| format!("reading the backing tree: {}", error_chain(&e)))?;
    let backing = ctx.rules.select(slot.index, &whole);
    let (alert, mirror) = {
        let mut mirror = slot.mirror.lock().expect("mirror lock");
        (mirror.integrity_alert(), mirror.manifest())
    };
    let mirror = match (alert, mirror) {
        (None, Ok(mirror)) => mirror,
        (None, Err(e)) => return Err(format!("reading the mirror: {}", error_chain(&e))),
        (Some(alert), Ok(_)) => return Err(format!("history check failed: {alert}")),
        (Some(alert), Err(e)) => {
            return Err(format!(
                "history check failed: {alert}; reading the mirror: {}",
                error_chain(&e)
            ));
        }
    };
    let mut lines: Vec<String> = manifest::diff(&backing, &mirror)
        .into_iter()
        .map(|difference| match difference {
            Difference::Extra { path, mirror } if whole.entries.contains_key(&path) => {
                Difference::NotHeld { path, mirror }
            }
            other => other,
        })
        .map(|d| d.to_string())
        .collect();
    if let Some(copies) = &slot.copies {
        copies
            .settle(deadline)
            .map_err(|e| format!("readable copies did not catch up: {e}"))?;
        let differences = copies
            .compare(&backing)
            .map_err(|e| format!("comparing the readable copies: {}", error_chain(&e)))?;
        lines.extend(differences);
    }
    Ok((backing.entries.len(), lines))
}
