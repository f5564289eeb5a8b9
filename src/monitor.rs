//! The monitor: a thread that looks at each mirror five times a second. It logs every change
//! between `ok` and `lagging` (workers log the changes to and from `down`, where they see
//! the error), and keeps a minute of confirmed positions for the throughput in status and
//! metrics. It only reads progress; nothing here changes what a mirror or a writer does.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::journal::{Position, Seq};
use crate::mirror::worker::{Context, MirrorSlot, MirrorState, now_ns};

/// Time between two looks at the mirrors.
const TICK: Duration = Duration::from_millis(200);
/// Time between two stored samples of a mirror's confirmed position.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Span of the throughput shown in status.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(60);
/// Shortest time between two log lines about one mirror changing between `ok` and
/// `lagging`; the changes in between are counted in the next line.
const MIN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Records and journal bytes a mirror confirmed per second, over the last minute or since
/// the mount when that is shorter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    pub records_per_second: f64,
    pub bytes_per_second: f64,
    /// Seconds the rates are averaged over.
    pub window_seconds: f64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    confirmed: (Seq, Position),
}

/// Observed states and samples of one mirror.
struct Watch {
    /// State at the latest look.
    current: MirrorState,
    /// State the daemon log shows last.
    logged: MirrorState,
    last_logged_at: Option<Instant>,
    /// Changes between `ok` and `lagging` since the last line about them.
    unlogged_changes: u64,
    /// Confirmed positions, oldest first, spanning at most [`THROUGHPUT_WINDOW`].
    samples: VecDeque<Sample>,
}

/// Start time of the daemon and the per-mirror watch, shared with status and metrics.
pub struct Monitor {
    started: Instant,
    started_at_ns: u64,
    watches: Mutex<Vec<Watch>>,
}

impl Monitor {
    /// Starts watching `slots` as they are now.
    pub fn new(slots: &[Arc<MirrorSlot>], head: Seq) -> Monitor {
        let now = Instant::now();
        let watches = slots
            .iter()
            .map(|slot| {
                let state = slot.state(head).0;
                Watch {
                    current: state,
                    logged: state,
                    last_logged_at: None,
                    unlogged_changes: 0,
                    samples: VecDeque::from([Sample {
                        at: now,
                        confirmed: slot.progress().confirmed,
                    }]),
                }
            })
            .collect();
        Monitor {
            started: now,
            started_at_ns: now_ns(),
            watches: Mutex::new(watches),
        }
    }

    /// Returns the wall-clock start of the daemon, in nanoseconds since the Unix epoch.
    pub fn started_at_ns(&self) -> u64 {
        self.started_at_ns
    }

    /// Returns how long the daemon has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Returns the throughput of mirror `index`, which has confirmed `confirmed` by now.
    pub fn throughput(&self, index: usize, confirmed: (Seq, Position)) -> Throughput {
        let watches = self.watches.lock().expect("monitor lock");
        let Some(oldest) = watches.get(index).and_then(|w| w.samples.front()) else {
            return Throughput::default();
        };
        let seconds = oldest.at.elapsed().as_secs_f64();
        // Rates over less than half a second are mostly noise, so a fresh mount shows zero.
        if seconds < 0.5 {
            return Throughput::default();
        }
        // NOTE: a resync confirms every record it covers at once, which shows as a burst.
        let records = confirmed.0.0.saturating_sub(oldest.confirmed.0.0);
        let bytes = confirmed.1.0.saturating_sub(oldest.confirmed.1.0);
        Throughput {
            records_per_second: records as f64 / seconds,
            bytes_per_second: bytes as f64 / seconds,
            window_seconds: seconds,
        }
    }

    /// Starts the thread that looks at the mirrors until the daemon stops.
    pub fn spawn(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        slots: Vec<Arc<MirrorSlot>>,
    ) -> std::io::Result<JoinHandle<()>> {
        let monitor = self.clone();
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let mut last_sample = Instant::now();
                while !ctx.stop.sleep(TICK) {
                    let head = ctx.journal.head().0;
                    let sample = last_sample.elapsed() >= SAMPLE_INTERVAL;
                    if sample {
                        last_sample = Instant::now();
                    }
                    monitor.look(&slots, head, sample);
                }
            })
    }

    fn look(&self, slots: &[Arc<MirrorSlot>], head: Seq, sample: bool) {
        let mut watches = self.watches.lock().expect("monitor lock");
        for (slot, watch) in slots.iter().zip(watches.iter_mut()) {
            let state = slot.state(head).0;
            log_change(slot, head, watch, state);
            if sample {
                let now = Instant::now();
                watch.samples.push_back(Sample {
                    at: now,
                    confirmed: slot.progress().confirmed,
                });
                while watch
                    .samples
                    .front()
                    .is_some_and(|s| now.duration_since(s.at) > THROUGHPUT_WINDOW)
                {
                    watch.samples.pop_front();
                }
            }
        }
    }
}

/// Records the state of one mirror and logs a change between `ok` and `lagging`, at most
/// once per [`MIN_LOG_INTERVAL`]. A change to or from `down` is only recorded, because the
/// worker logged it with its error.
fn log_change(slot: &MirrorSlot, head: Seq, watch: &mut Watch, state: MirrorState) {
    if state == MirrorState::Down || watch.current == MirrorState::Down {
        watch.current = state;
        watch.logged = state;
        watch.unlogged_changes = 0;
        return;
    }
    if state != watch.current {
        watch.current = state;
        watch.unlogged_changes += 1;
    }
    let is_due = watch
        .last_logged_at
        .is_none_or(|t| t.elapsed() >= MIN_LOG_INTERVAL);
    if watch.logged == state || !is_due {
        return;
    }
    let skipped = match watch.unlogged_changes {
        0 | 1 => String::new(),
        n => format!(
            " ({} more changes between ok and lagging since the last line)",
            n - 1
        ),
    };
    let name = &slot.name;
    let before = watch.logged;
    match state {
        MirrorState::Lagging => {
            let cause = lag_cause(slot, head);
            log::warn!("mirror {name}: {before} -> lagging: {cause}{skipped}");
        }
        _ => log::info!("mirror {name}: {before} -> {state}: caught up{skipped}"),
    }
    watch.logged = state;
    watch.last_logged_at = Some(Instant::now());
    watch.unlogged_changes = 0;
}

/// Describes why a mirror is lagging: a pending resync, or how far behind it is.
fn lag_cause(slot: &MirrorSlot, head: Seq) -> String {
    let progress = slot.progress();
    if progress.needs_resync {
        return "resync from the backing tree pending".to_string();
    }
    let (_, lag_seconds) = slot.state(head);
    let records = head.0.saturating_sub(progress.confirmed.0.0);
    format!(
        "{records} records unconfirmed, the oldest {lag_seconds:.1} s old; confirmed seq {}",
        progress.confirmed.0
    )
}
