//! Status of a running mount: mode, policy, uptime, journal, backlog, blocked writes and, per
//! mirror, state, lag, throughput and last error, as JSON for scripts and as text for
//! operators. Built by the daemon, printed by the client; the metrics endpoint renders the
//! same values.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::mirror::acks::WritesBlocked;
use crate::mirror::s3::{CopiesStatus, StoreReport};
use crate::mirror::worker::{Context, LastFold, LastVerify, MirrorSlot, VerifyTrigger, now_ns};
use crate::monitor::{Monitor, Throughput};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub mountpoint: String,
    pub backing: String,
    pub state_dir: String,
    pub mode: String,
    /// Sync mode fell back to async because mirrors did not confirm within sync_timeout.
    pub degraded: bool,
    /// Wall-clock start of the daemon, in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub started_at_ns: u64,
    #[serde(default)]
    pub uptime_seconds: u64,
    #[serde(default)]
    pub policy: Policy,
    pub head_seq: u64,
    pub journal_first_seq: u64,
    /// Size of the journal's segment files on disk.
    pub journal_bytes: u64,
    /// Data of writes journaled by reference, held in memory until every mirror has it.
    #[serde(default)]
    pub journal_memory_bytes: u64,
    /// Records and writes appended to the journal since the daemon started.
    #[serde(default)]
    pub appended: Appended,
    /// Journal bytes not yet confirmed by every mirror; async writers wait or fail once it
    /// reaches `policy.max_backlog_bytes`.
    #[serde(default)]
    pub backlog_bytes: u64,
    /// Writes whose reply waits right now.
    #[serde(default)]
    pub writes_blocked: WritesBlocked,
    /// Address of the metrics endpoint (`127.0.0.1:9100` or a socket path); `None` when
    /// `metrics=` is not set.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Read passthrough, and the reads the daemon served.
    #[serde(default)]
    pub reads: crate::fs::ReadsStatus,
    /// Seconds between two periodic verifies; 0 when they are off.
    pub verify_interval_secs: u64,
    /// A periodic verify that finds differences schedules a resync.
    pub repair: bool,
    /// Seconds after which S3 history is folded into a snapshot; `None` keeps it whole.
    pub retention_secs: Option<u64>,
    pub mirrors: Vec<MirrorStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MirrorStatus {
    pub name: String,
    /// Name of a mirror given as `[mirrors.NAME]` in the config file.
    #[serde(default)]
    pub label: Option<String>,
    /// With `[[rule]]`s: the rules that send their paths to the mirror, in rule order, the default
    /// (paths no rule matches) last. Empty without rules.
    #[serde(default)]
    pub rules: Vec<RuleStatus>,
    /// ok, lagging or down.
    pub state: String,
    pub confirmed_seq: u64,
    pub lag_records: u64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    /// Records and journal bytes confirmed per second over the last minute.
    #[serde(default)]
    pub throughput: Throughput,
    /// Latest failure, kept after the mirror recovered. `state` shows whether the mirror
    /// is still down.
    pub last_error: Option<String>,
    /// Wall-clock time of `last_error`, in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub last_error_at_ns: Option<u64>,
    /// Failed attempts since the mirror last worked.
    pub failed_attempts: u64,
    /// Failed attempts since the mount.
    #[serde(default)]
    pub errors_total: u64,
    pub resync_pending: bool,
    /// Outcome of the latest verify (`logmirror verify` or periodic), if one ran since the
    /// mount.
    pub last_verify: Option<LastVerify>,
    /// Folds of the history since the mount, for an S3 mirror with `retention=`.
    pub last_fold: Option<LastFold>,
    /// Findings of an S3 mirror's probe at mount: endpoint, conditional writes, checksums,
    /// lease. Absent for other mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreReport>,
    /// S3 mirrors: bytes of request bodies sent to the store since the mount (journal
    /// objects and readable copies, retries included).
    #[serde(default)]
    pub bytes_uploaded: Option<u64>,
    /// S3 mirrors: progress of the readable copies.
    #[serde(default)]
    pub copies: Option<CopiesStatus>,
}

/// The acknowledgement and backlog settings of the mount.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Policy {
    /// Mirrors that must confirm a sync-mode write (`ack=`, with `all` resolved).
    pub ack: usize,
    /// block, fail or degrade.
    pub on_mirror_failure: String,
    pub sync_timeout_ms: u64,
    /// block or fail.
    pub when_full: String,
    pub max_backlog_bytes: u64,
}

/// Counts of records and writes appended to the journal since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// Records of every kind.
    pub records: u64,
    /// Journal bytes of those records, framing included.
    pub bytes: u64,
    /// Writes through the mount (one per write request the kernel sent).
    pub writes: u64,
    /// Data bytes of those writes.
    pub written_bytes: u64,
}

/// One rule that sends its paths to a mirror.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule's path glob; `None` for the paths that no rule matches.
    pub path: Option<String>,
    /// sync or async.
    pub mode: String,
    /// Mirrors of the rule that must confirm a sync-mode record.
    pub ack: usize,
    /// Mirrors the rule sends its paths to.
    pub mirrors: usize,
}

/// Paths, mode and policy shown in status, fixed at mount time.
pub struct MountInfo {
    pub mountpoint: String,
    pub backing: String,
    pub state_dir: String,
    pub mode: String,
    pub policy: Policy,
    pub verify_interval_secs: u64,
    pub repair: bool,
    pub retention_secs: Option<u64>,
    /// Address the metrics endpoint listens on, if any.
    pub metrics: Option<String>,
    /// Name of each mirror given as `[mirrors.NAME]`, by mirror index.
    pub mirror_labels: Vec<Option<String>>,
    /// Read passthrough setting and counters.
    pub reads: Arc<crate::fs::Reads>,
}

/// Returns the rules that send their paths to mirror `index`; empty without rules.
fn rules_of(ctx: &Context, index: usize) -> Vec<RuleStatus> {
    if ctx.rules.is_empty() {
        return Vec::new();
    }
    ctx.rules
        .policies_of(index)
        .into_iter()
        .map(|policy| RuleStatus {
            path: policy.path.clone(),
            mode: match policy.mode {
                crate::config::Mode::Sync => "sync".into(),
                crate::config::Mode::Async => "async".into(),
            },
            ack: policy.ack,
            mirrors: policy.mirrors.len(),
        })
        .collect()
}

/// Builds the status from the live state.
pub fn collect(
    info: &MountInfo,
    ctx: &Context,
    slots: &[Arc<MirrorSlot>],
    monitor: &Monitor,
) -> Status {
    let (head, head_position) = ctx.journal.head();
    let mirrors = slots
        .iter()
        .map(|slot| {
            let progress = slot.progress();
            let (state, lag_seconds) = slot.state(head);
            MirrorStatus {
                name: slot.name.clone(),
                label: info.mirror_labels.get(slot.index).cloned().flatten(),
                rules: rules_of(ctx, slot.index),
                state: state.as_str().to_string(),
                confirmed_seq: progress.confirmed.0.0,
                lag_records: head.0.saturating_sub(progress.confirmed.0.0),
                lag_bytes: head_position.0.saturating_sub(progress.confirmed.1.0),
                lag_seconds,
                throughput: monitor.throughput(slot.index, progress.confirmed),
                last_error: progress.last_error,
                last_error_at_ns: progress.last_error_at_ns,
                failed_attempts: progress.failed_attempts,
                errors_total: progress.errors_total,
                resync_pending: progress.needs_resync,
                last_verify: progress.last_verify,
                last_fold: progress.last_fold,
                store: slot.store.clone(),
                bytes_uploaded: slot.copies.as_ref().map(|c| c.bytes_uploaded()),
                copies: slot.copies.as_ref().map(|c| c.status()),
            }
        })
        .collect();
    let appended = ctx.journal.append_counts();
    Status {
        pid: std::process::id(),
        mountpoint: info.mountpoint.clone(),
        backing: info.backing.clone(),
        state_dir: info.state_dir.clone(),
        mode: info.mode.clone(),
        degraded: ctx.acks.is_degraded(),
        started_at_ns: monitor.started_at_ns(),
        uptime_seconds: monitor.uptime().as_secs(),
        policy: info.policy.clone(),
        head_seq: head.0,
        journal_first_seq: ctx.journal.first_seq().0,
        journal_bytes: ctx.journal.size_bytes(),
        journal_memory_bytes: ctx.journal.data_held_bytes(),
        appended: Appended {
            records: appended.records,
            bytes: appended.bytes,
            writes: appended.writes,
            written_bytes: appended.written_bytes,
        },
        backlog_bytes: head_position.0.saturating_sub(ctx.acks.min_confirmed().1.0),
        writes_blocked: ctx.acks.writes_blocked(),
        metrics: info.metrics.clone(),
        reads: info.reads.status(),
        verify_interval_secs: info.verify_interval_secs,
        repair: info.repair,
        retention_secs: info.retention_secs,
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
        "daemon:  pid {}, up {}, state {}",
        status.pid,
        human_uptime(status.uptime_seconds),
        status.state_dir
    );
    let _ = writeln!(out, "mode:    {mode}");
    let _ = writeln!(out, "policy:  {}", render_policy(&status.policy));
    let _ = writeln!(
        out,
        "journal: head seq {}, oldest seq {}, {} on disk, {} of write data in memory",
        status.head_seq,
        status.journal_first_seq,
        human_bytes(status.journal_bytes),
        human_bytes(status.journal_memory_bytes)
    );
    let appended = &status.appended;
    let _ = writeln!(
        out,
        "since start: {} writes of {}, {} records of {} in the journal",
        appended.writes,
        human_bytes(appended.written_bytes),
        appended.records,
        human_bytes(appended.bytes)
    );
    let _ = writeln!(
        out,
        "backlog: {} of max_backlog {} ({}); writes blocked now: {} waiting for backlog \
         room, {} waiting for mirrors",
        human_bytes(status.backlog_bytes),
        human_bytes(status.policy.max_backlog_bytes),
        percent(status.backlog_bytes, status.policy.max_backlog_bytes),
        status.writes_blocked.backlog,
        status.writes_blocked.mirrors
    );
    if let Some(address) = &status.metrics {
        let _ = writeln!(out, "metrics: {address}");
    }
    let reads = &status.reads;
    let _ = writeln!(
        out,
        "reads:   passthrough {}, {} passthrough opens, {} reads served by the daemon",
        reads.passthrough, reads.passthrough_opens, reads.served
    );
    let _ = writeln!(out, "verify:  {}", render_schedule(status));
    for m in &status.mirrors {
        let label = m
            .label
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "mirror {}{label}: {}, confirmed seq {}, lag {} records, {}, {:.1} s",
            m.name,
            m.state,
            m.confirmed_seq,
            m.lag_records,
            human_bytes(m.lag_bytes),
            m.lag_seconds
        );
        if !m.rules.is_empty() {
            let rules: Vec<String> = m.rules.iter().map(render_rule).collect();
            let _ = writeln!(out, "  rules: {}", rules.join(", "));
        }
        let _ = writeln!(
            out,
            "  throughput: {:.1} records/s, {}/s over the last {:.0} s; lag is {} of max_backlog",
            m.throughput.records_per_second,
            human_bytes(m.throughput.bytes_per_second.round() as u64),
            m.throughput.window_seconds,
            percent(m.lag_bytes, status.policy.max_backlog_bytes)
        );
        if let Some(store) = &m.store {
            let _ = writeln!(
                out,
                "  store: endpoint {}, conditional_writes: {}, checksums: {}",
                store.endpoint,
                if store.conditional_writes {
                    "yes"
                } else {
                    "no"
                },
                store.checksums
            );
            let _ = writeln!(out, "  lease {}: {}", store.lease_key, store.protection);
            let _ = writeln!(
                out,
                "  history: {}, Object Lock: {}, server-side encryption: {}",
                store.history,
                store.retention_lock.as_deref().unwrap_or("none"),
                store.sse.as_deref().unwrap_or("none")
            );
            if !store.encryption.is_empty() {
                let _ = writeln!(out, "  encryption: {}", store.encryption);
            }
        }
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
            if let Some(reason) = &copies.stopped {
                let _ = writeln!(out, "  readable copies stopped: {reason}");
            }
        }
        if let Some(error) = &m.last_error {
            let ago = m
                .last_error_at_ns
                .map(|at| format!("{} s ago", seconds_since(at)))
                .unwrap_or_else(|| "time unknown".to_string());
            if m.state == "down" {
                let _ = writeln!(out, "  last error ({ago}): {error}");
            } else {
                let _ = writeln!(out, "  last error ({ago}, recovered since): {error}");
            }
        }
        if let Some(verify) = &m.last_verify {
            let _ = writeln!(out, "  {}", render_verify(verify));
        }
        if let Some(fold) = &m.last_fold {
            let _ = writeln!(out, "  {}", render_fold(fold));
        }
    }
    out
}

fn render_policy(policy: &Policy) -> String {
    format!(
        "ack {}, on_mirror_failure={} after {}, when_full={}",
        policy.ack,
        policy.on_mirror_failure,
        human_millis(policy.sync_timeout_ms),
        policy.when_full
    )
}

/// Formats `part` as a percentage of `whole`, with one decimal.
fn percent(part: u64, whole: u64) -> String {
    match whole {
        0 => "n/a".to_string(),
        whole => format!("{:.1}%", part as f64 * 100.0 / whole as f64),
    }
}

/// Formats milliseconds as a duration, as in 500ms or 30s.
fn human_millis(ms: u64) -> String {
    match ms % 1000 {
        0 => human_duration(ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Formats an uptime in whole seconds as days, hours, minutes and seconds: 2d 3h, 5m 12s.
fn human_uptime(secs: u64) -> String {
    let (days, hours, minutes) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m {}s", secs % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Renders one rule of a mirror as `audit/** (sync, ack 2 of 2)`.
fn render_rule(rule: &RuleStatus) -> String {
    let path = rule.path.as_deref().unwrap_or("paths no rule matches");
    match rule.mode.as_str() {
        "sync" => format!("{path} (sync, ack {} of {})", rule.ack, rule.mirrors),
        mode => format!("{path} ({mode})"),
    }
}

fn render_schedule(status: &Status) -> String {
    let mut text = match status.verify_interval_secs {
        0 => "periodic verify off".to_string(),
        secs => format!(
            "every {}, repair {}",
            human_duration(secs),
            if status.repair { "on" } else { "off" }
        ),
    };
    if let Some(secs) = status.retention_secs {
        let _ = write!(
            text,
            "; S3 history older than {} is folded into a snapshot",
            human_duration(secs)
        );
    }
    text
}

fn render_verify(verify: &LastVerify) -> String {
    let ago = seconds_since(verify.at_ns);
    let kind = match verify.trigger {
        VerifyTrigger::Command => "last verify",
        VerifyTrigger::Periodic => "last verify (periodic)",
    };
    let outcome = match &verify.error {
        Some(error) => format!("failed: {error}"),
        None => format!("differences: {}", verify.differences),
    };
    let repair = if verify.resync_scheduled {
        ", resync scheduled"
    } else {
        ""
    };
    format!("{kind} {ago} s ago: {outcome}{repair}")
}

fn render_fold(fold: &LastFold) -> String {
    let mut text = match fold.snapshot {
        0 => "no snapshot stored since the mount".to_string(),
        number => format!(
            "snapshot of journal objects 1 to {number} stored {} s ago, {} objects removed \
             since the mount",
            seconds_since(fold.stored_at_ns),
            fold.objects_removed
        ),
    };
    if let Some(error) = &fold.error {
        let _ = write!(
            text,
            "; last fold {} s ago failed: {error}",
            seconds_since(fold.attempted_at_ns)
        );
    }
    text
}

/// Returns the whole seconds from `at_ns` (nanoseconds since the Unix epoch) to now.
fn seconds_since(at_ns: u64) -> u64 {
    now_ns().saturating_sub(at_ns) / 1_000_000_000
}

/// Formats whole seconds with the largest unit that divides them: 30d, 12h, 90m, 45s.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
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
