//! Acknowledgements: decides when the reply to a committed change may go to the program.
//!
//! `fs` hands over a completion for each committed record. In async mode it runs at once; in
//! sync mode it waits until `ack` mirrors confirmed the record, and `on_mirror_failure`
//! decides what happens after `sync_timeout`. Mirror workers report confirmations here. The
//! async backlog limit (`max_backlog`, `when_full`) is enforced here too.
//!
//! With path rules, the rule of each record's path decides instead: its mode, its mirrors
//! and its ack count. `fs` notes the rule of every record whose path a rule matches, and a
//! reply for a record of an async or local-only rule runs at once.
//!
//! A change that could not be journaled is covered by a resync instead, for which `fs` takes
//! a resync ticket. In sync mode, every reply made while a ticket is outstanding also waits
//! until `ack` mirrors finished a resync that started after the ticket was taken.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Mode, OnMirrorFailure};
use crate::journal::{Position, Seq};
use crate::rules::{Policy, RuleId, Rules};

/// Sends the reply of one request: `Ok` or an errno.
pub type Completion = Box<dyn FnOnce(Result<(), i32>) + Send>;

/// Acknowledgement policy, from the mount configuration.
#[derive(Clone, Debug)]
pub struct AckPolicy {
    pub mode: Mode,
    /// Mirrors that must confirm a record in sync mode.
    pub ack_count: usize,
    pub on_mirror_failure: OnMirrorFailure,
    pub sync_timeout: Duration,
    pub max_backlog_bytes: u64,
    /// Max time an async-mode mirror keeps applied records unflushed.
    pub flush_interval: Duration,
    /// Path rules; `None` applies `mode` and `ack_count` to every record and mirror.
    pub rules: Option<Arc<Rules>>,
}

impl AckPolicy {
    /// Returns the rules' policies, the default last; without rules, the one policy of
    /// `mode` and `ack_count` over `mirrors` mirrors.
    fn policies(&self, mirrors: usize) -> Vec<Policy> {
        match &self.rules {
            Some(rules) => rules.policies().to_vec(),
            None => vec![Policy {
                path: None,
                mirrors: (0..mirrors).collect(),
                mode: self.mode,
                ack: self.ack_count,
            }],
        }
    }
}

struct Waiter {
    since: Instant,
    /// Rule of the record, which names the mirrors that must confirm it.
    rule: RuleId,
    /// Resync ticket the reply also waits for; 0 for none.
    resync: u64,
    done: Completion,
}

struct State {
    /// Newest confirmed record and its end position, per mirror.
    confirmed: Vec<(Seq, Position)>,
    pending: BTreeMap<Seq, Vec<Waiter>>,
    /// Newest record a client waits for every mirror to confirm (`logmirror sync`,
    /// unmount). Async-mode workers behind it flush at once.
    flush_requested: Seq,
    /// Resync tickets taken so far; the newest ticket's number.
    resync_requested: u64,
    /// Per mirror, the newest ticket its latest finished resync covers.
    resynced: Vec<u64>,
    /// Sync mode fell back to async after `sync_timeout` (policy degrade).
    degraded: bool,
    since_degraded: Option<Instant>,
    /// Rule of each record whose path a rule matches, noted by `fs`; records that are not
    /// here fall under the default. Entries every mirror confirmed are dropped.
    rule_of: BTreeMap<Seq, RuleId>,
}

/// Shared between FUSE threads, mirror workers and the control socket.
pub struct Acks {
    policy: AckPolicy,
    /// The rules' policies, the default last.
    policies: Vec<Policy>,
    /// Per mirror: a rule that waits for it exists, so it flushes after every batch.
    serves_sync: Vec<bool>,
    state: Mutex<State>,
    changed: Condvar,
    /// Writes queued or running on the deferred-write thread, because the async backlog was
    /// full when they arrived.
    backlog_waiters: AtomicU64,
    /// Per mirror, the newest record whose write data it no longer reads from the journal:
    /// confirmed, or applied to a mirror that keeps the bytes itself (see
    /// [`crate::mirror::Mirror::stores_applied_data`]).
    data_done: Mutex<Vec<Seq>>,
}

/// Writes whose reply waits right now, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WritesBlocked {
    /// Async mode, `when_full=block`: waiting for room in the backlog (`max_backlog`).
    pub backlog: u64,
    /// Sync mode: waiting for `ack` mirrors to confirm them.
    pub mirrors: u64,
}

/// Counts one write as waiting for backlog room until it is dropped.
pub struct BacklogWaiter(Arc<Acks>);

impl Drop for BacklogWaiter {
    fn drop(&mut self) {
        self.0.backlog_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Acks {
    /// Starts with each mirror's confirmed position as read from its cursor.
    pub fn new(policy: AckPolicy, confirmed: Vec<(Seq, Position)>) -> Acks {
        let mirrors = confirmed.len();
        let data_done = Mutex::new(confirmed.iter().map(|c| c.0).collect());
        let policies = policy.policies(mirrors);
        let serves_sync = (0..mirrors)
            .map(|m| policies.iter().any(|p| p.waits() && p.mirrors.contains(&m)))
            .collect();
        Acks {
            policy,
            policies,
            serves_sync,
            state: Mutex::new(State {
                confirmed,
                pending: BTreeMap::new(),
                flush_requested: Seq::default(),
                resync_requested: 0,
                resynced: vec![0; mirrors],
                degraded: false,
                since_degraded: None,
                rule_of: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            backlog_waiters: AtomicU64::new(0),
            data_done,
        }
    }

    pub fn policy(&self) -> &AckPolicy {
        &self.policy
    }

    /// Returns true when a rule waits for mirror `index` in sync mode, so that its worker
    /// flushes after every batch.
    pub fn serves_sync(&self, index: usize) -> bool {
        self.serves_sync[index]
    }

    /// Notes that record `seq` falls under `rule` rather than the default.
    pub fn note_rule(&self, seq: Seq, rule: RuleId) {
        self.state
            .lock()
            .expect("acks lock")
            .rule_of
            .insert(seq, rule);
    }

    /// Runs `done` once the record `seq` is acknowledged under the mode in force; `None`
    /// means nothing was journaled. In sync mode the reply also waits for every resync
    /// ticket taken before this call.
    pub fn complete(&self, seq: Option<Seq>, done: Completion) {
        let mut state = self.state.lock().expect("acks lock");
        let seq = seq.unwrap_or_default();
        let rule = self.rule_of(&state, seq);
        let policy = &self.policies[rule];
        let resync = match state.resync_requested > resync_acked(&state, policy) {
            true => state.resync_requested,
            false => 0,
        };
        if !policy.waits() || state.degraded || (acked_seq(&state, policy) >= seq && resync == 0) {
            drop(state);
            return done(Ok(()));
        }
        state.pending.entry(seq).or_default().push(Waiter {
            since: Instant::now(),
            rule,
            resync,
            done,
        });
    }

    fn rule_of(&self, state: &State, seq: Seq) -> RuleId {
        let default = self.policies.len() - 1;
        match seq {
            Seq(0) => default,
            seq => state.rule_of.get(&seq).copied().unwrap_or(default),
        }
    }

    /// Records that mirror `index` confirmed every record up to `seq`, and releases the
    /// writers this acknowledges.
    pub fn confirm(&self, index: usize, seq: Seq, position: Position) {
        let ready = {
            let mut state = self.state.lock().expect("acks lock");
            state.confirmed[index] = (seq, position);
            if !state.rule_of.is_empty() {
                let oldest = state
                    .confirmed
                    .iter()
                    .map(|c| c.0)
                    .min()
                    .unwrap_or_default();
                state.rule_of = state.rule_of.split_off(&oldest.next());
            }
            take_ready(&mut state, &self.policies)
        };
        self.changed.notify_all();
        for waiter in ready {
            (waiter.done)(Ok(()));
        }
    }

    /// Takes a resync ticket: every mirror must resync from the backing tree, because a
    /// change reached the backing directory without a journal record. Returns true when no
    /// other ticket was outstanding.
    pub fn request_resync(&self) -> bool {
        let is_first = {
            let mut state = self.state.lock().expect("acks lock");
            let outstanding = state.resynced.iter().any(|&r| r < state.resync_requested);
            state.resync_requested += 1;
            !outstanding
        };
        self.changed.notify_all();
        is_first
    }

    /// Returns the newest resync ticket taken. A resync that starts after reading it covers
    /// that ticket and every older one.
    pub fn resync_requested(&self) -> u64 {
        self.state.lock().expect("acks lock").resync_requested
    }

    /// Returns true when mirror `index` has not yet finished a resync that covers every
    /// ticket taken.
    pub fn is_resync_requested(&self, index: usize) -> bool {
        let state = self.state.lock().expect("acks lock");
        state.resynced[index] < state.resync_requested
    }

    /// Records that mirror `index` finished a resync covering tickets up to `ticket`, and
    /// releases the writers this acknowledges. Call it after `confirm` of the resync's head.
    pub fn resynced(&self, index: usize, ticket: u64) {
        let ready = {
            let mut state = self.state.lock().expect("acks lock");
            state.resynced[index] = state.resynced[index].max(ticket);
            take_ready(&mut state, &self.policies)
        };
        self.changed.notify_all();
        for waiter in ready {
            (waiter.done)(Ok(()));
        }
    }

    /// Returns the oldest position every mirror confirmed: the start of the backlog.
    pub fn min_confirmed(&self) -> (Seq, Position) {
        let state = self.state.lock().expect("acks lock");
        state.confirmed.iter().copied().min().unwrap_or_default()
    }

    /// Records that mirror `index` no longer needs the write data of the records up to
    /// `seq`, and returns the newest record that no mirror needs it for.
    pub fn data_done(&self, index: usize, seq: Seq) -> Seq {
        let mut done = self.data_done.lock().expect("data lock");
        done[index] = done[index].max(seq);
        done.iter().copied().min().unwrap_or_default()
    }

    /// Returns the newest record confirmed by mirror `index`.
    pub fn confirmed(&self, index: usize) -> (Seq, Position) {
        self.state.lock().expect("acks lock").confirmed[index]
    }

    /// Returns whether a client waits for a record newer than `confirmed`.
    pub fn flush_requested(&self, confirmed: Seq) -> bool {
        self.state.lock().expect("acks lock").flush_requested > confirmed
    }

    /// Counts a write that waits for room in the backlog, until the returned guard drops.
    pub fn backlog_waiter(self: &Arc<Self>) -> BacklogWaiter {
        self.backlog_waiters.fetch_add(1, Ordering::Relaxed);
        BacklogWaiter(self.clone())
    }

    /// Returns the writes whose reply waits right now.
    pub fn writes_blocked(&self) -> WritesBlocked {
        let mirrors = {
            let state = self.state.lock().expect("acks lock");
            state.pending.values().map(|w| w.len() as u64).sum()
        };
        WritesBlocked {
            backlog: self.backlog_waiters.load(Ordering::Relaxed),
            mirrors,
        }
    }

    pub fn is_degraded(&self) -> bool {
        self.state.lock().expect("acks lock").degraded
    }

    /// Waits while the async backlog is full. Returns false when the write must fail instead
    /// (`when_full=fail`). `head` returns the journal's end position.
    pub fn wait_for_room(&self, when_full_blocks: bool, head: impl Fn() -> Position) -> bool {
        // Records of an async or local-only rule are bounded by the backlog limit as well.
        let all_wait = self
            .policies
            .iter()
            .all(|p| p.waits() || p.mirrors.is_empty());
        if self.policy.mode == Mode::Sync && all_wait && !self.is_degraded() {
            return true;
        }
        let mut state = self.state.lock().expect("acks lock");
        loop {
            let start = state
                .confirmed
                .iter()
                .map(|c| c.1)
                .min()
                .unwrap_or_default();
            if head().0.saturating_sub(start.0) < self.policy.max_backlog_bytes {
                return true;
            }
            if !when_full_blocks {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(200))
                .expect("acks lock")
                .0;
        }
    }

    /// Waits until every mirror confirmed `seq`, and finished a resync for every ticket taken
    /// before the call, or `deadline` passes; returns whether they did.
    pub fn wait_all_confirmed(&self, seq: Seq, deadline: Instant) -> bool {
        let mut state = self.state.lock().expect("acks lock");
        state.flush_requested = state.flush_requested.max(seq);
        let ticket = state.resync_requested;
        loop {
            let is_resynced = state.resynced.iter().all(|&r| r >= ticket);
            if is_resynced && state.confirmed.iter().all(|c| c.0 >= seq) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, (deadline - now).min(Duration::from_millis(200)))
                .expect("acks lock")
                .0;
        }
    }

    /// Applies `on_mirror_failure` to writers that waited longer than `sync_timeout`, and
    /// leaves degraded mode once the mirrors confirmed everything up to `head`. Called
    /// periodically by the housekeeping thread.
    pub fn tick(&self, head: Seq) {
        let mut expired = Vec::new();
        let mut state = self.state.lock().expect("acks lock");
        let caught_up = self
            .policies
            .iter()
            .filter(|p| p.waits())
            .all(|p| acked_seq(&state, p) >= head);
        if state.degraded && caught_up {
            state.degraded = false;
            let lasted = state
                .since_degraded
                .take()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            log::info!("sync mode restored: mirrors caught up after {lasted:.1?} in async mode");
        }
        let timed_out = state
            .pending
            .values()
            .flatten()
            .any(|w| w.since.elapsed() >= self.policy.sync_timeout);
        if timed_out {
            match self.policy.on_mirror_failure {
                OnMirrorFailure::Block => {}
                OnMirrorFailure::Fail => {
                    let timeout = self.policy.sync_timeout;
                    for waiters in state.pending.values_mut() {
                        let (old, young): (Vec<_>, Vec<_>) = waiters
                            .drain(..)
                            .partition(|w| w.since.elapsed() >= timeout);
                        *waiters = young;
                        expired.extend(old.into_iter().map(|w| (w, Err(libc::EIO))));
                    }
                    state.pending.retain(|_, w| !w.is_empty());
                    log::error!(
                        "mirrors did not confirm within sync_timeout={:?}: {} writes got EIO \
                         (they stay committed locally and will still be mirrored)",
                        timeout,
                        expired.len()
                    );
                }
                OnMirrorFailure::Degrade => {
                    state.degraded = true;
                    state.since_degraded = Some(Instant::now());
                    let all = std::mem::take(&mut state.pending);
                    expired.extend(all.into_values().flatten().map(|w| (w, Ok(()))));
                    log::warn!(
                        "mirrors did not confirm within sync_timeout={:?}: switching to async \
                         mode until they catch up ({} waiting writes released)",
                        self.policy.sync_timeout,
                        expired.len()
                    );
                }
            }
        }
        drop(state);
        for (waiter, result) in expired {
            (waiter.done)(result);
        }
    }

    /// Fails every waiting writer with `errno`; used when the daemon stops.
    pub fn fail_all(&self, errno: i32) {
        let all = std::mem::take(&mut self.state.lock().expect("acks lock").pending);
        for waiter in all.into_values().flatten() {
            (waiter.done)(Err(errno));
        }
    }
}

/// Returns the newest record confirmed by at least `ack` of the policy's mirrors.
fn acked_seq(state: &State, policy: &Policy) -> Seq {
    let mut seqs: Vec<Seq> = policy
        .mirrors
        .iter()
        .map(|&m| state.confirmed[m].0)
        .collect();
    seqs.sort_unstable_by(|a, b| b.cmp(a));
    let index = policy.ack.clamp(1, seqs.len().max(1)) - 1;
    seqs.get(index).copied().unwrap_or_default()
}

/// Returns the newest resync ticket covered by at least `ack` of the policy's mirrors.
fn resync_acked(state: &State, policy: &Policy) -> u64 {
    let mut tickets: Vec<u64> = policy.mirrors.iter().map(|&m| state.resynced[m]).collect();
    tickets.sort_unstable_by(|a, b| b.cmp(a));
    let index = policy.ack.clamp(1, tickets.len().max(1)) - 1;
    tickets.get(index).copied().unwrap_or_default()
}

/// Removes and returns the waiters whose record and resync ticket are both acknowledged by
/// the mirrors of their rule.
fn take_ready(state: &mut State, policies: &[Policy]) -> Vec<Waiter> {
    let acked: Vec<Seq> = policies.iter().map(|p| acked_seq(state, p)).collect();
    let resynced: Vec<u64> = policies.iter().map(|p| resync_acked(state, p)).collect();
    let newest = acked.iter().copied().max().unwrap_or_default();
    let rest = state.pending.split_off(&newest.next());
    let covered = std::mem::replace(&mut state.pending, rest);
    let mut ready = Vec::new();
    for (seq, waiters) in covered {
        let (now, later): (Vec<_>, Vec<_>) = waiters
            .into_iter()
            .partition(|w| seq <= acked[w.rule] && w.resync <= resynced[w.rule]);
        ready.extend(now);
        if !later.is_empty() {
            state.pending.insert(seq, later);
        }
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn policy(mode: Mode, ack_count: usize, on_failure: OnMirrorFailure) -> AckPolicy {
        AckPolicy {
            mode,
            ack_count,
            on_mirror_failure: on_failure,
            sync_timeout: Duration::from_millis(0),
            max_backlog_bytes: 1000,
            flush_interval: Duration::from_millis(500),
            rules: None,
        }
    }

    fn counter() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
    }

    fn completion(ok: &Arc<AtomicUsize>, err: &Arc<AtomicUsize>) -> Completion {
        let (ok, err) = (ok.clone(), err.clone());
        Box::new(move |r| {
            match r {
                Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                Err(_) => err.fetch_add(1, Ordering::SeqCst),
            };
        })
    }

    #[test]
    fn data_stays_needed_until_every_mirror_is_done() {
        let acks = Acks::new(
            policy(Mode::Async, 1, OnMirrorFailure::Block),
            vec![(Seq(3), Position(0)), (Seq(5), Position(0))],
        );
        assert_eq!(
            acks.data_done(1, Seq(9)),
            Seq(3),
            "mirror 0 still needs 4 and on"
        );
        assert_eq!(acks.data_done(0, Seq(7)), Seq(7));
        assert_eq!(
            acks.data_done(0, Seq(2)),
            Seq(7),
            "an older seq does not go back"
        );
        assert_eq!(acks.data_done(0, Seq(12)), Seq(9));
    }

    #[test]
    fn sync_waits_for_ack_count() {
        let acks = Acks::new(
            policy(Mode::Sync, 1, OnMirrorFailure::Block),
            vec![Default::default(); 2],
        );
        let (ok, err) = counter();
        acks.complete(Some(Seq(1)), completion(&ok, &err));
        acks.complete(Some(Seq(2)), completion(&ok, &err));
        assert_eq!(ok.load(Ordering::SeqCst), 0);
        acks.confirm(1, Seq(1), Position(10));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        acks.confirm(0, Seq(2), Position(20));
        assert_eq!(ok.load(Ordering::SeqCst), 2);
        assert_eq!(err.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn sync_all_needs_every_mirror() {
        let acks = Acks::new(
            policy(Mode::Sync, 2, OnMirrorFailure::Block),
            vec![Default::default(); 2],
        );
        let (ok, err) = counter();
        acks.complete(Some(Seq(1)), completion(&ok, &err));
        acks.confirm(0, Seq(1), Position(10));
        assert_eq!(ok.load(Ordering::SeqCst), 0);
        acks.confirm(1, Seq(1), Position(10));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn timeout_fail_returns_eio() {
        let acks = Acks::new(
            policy(Mode::Sync, 1, OnMirrorFailure::Fail),
            vec![Default::default()],
        );
        let (ok, err) = counter();
        acks.complete(Some(Seq(1)), completion(&ok, &err));
        acks.tick(Seq(1));
        assert_eq!(err.load(Ordering::SeqCst), 1);
        assert_eq!(ok.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn timeout_degrade_then_restore() {
        let acks = Acks::new(
            policy(Mode::Sync, 1, OnMirrorFailure::Degrade),
            vec![Default::default()],
        );
        let (ok, err) = counter();
        acks.complete(Some(Seq(1)), completion(&ok, &err));
        acks.tick(Seq(1));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        assert!(acks.is_degraded());
        acks.complete(Some(Seq(2)), completion(&ok, &err));
        assert_eq!(ok.load(Ordering::SeqCst), 2);
        acks.confirm(0, Seq(2), Position(5));
        acks.tick(Seq(2));
        assert!(!acks.is_degraded());
        assert_eq!(err.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn sync_reply_waits_for_resync_ticket() {
        let acks = Acks::new(
            policy(Mode::Sync, 1, OnMirrorFailure::Block),
            vec![Default::default(); 2],
        );
        let (ok, err) = counter();
        assert!(acks.request_resync());
        assert!(!acks.request_resync());
        let ticket = acks.resync_requested();
        assert_eq!(ticket, 2);
        acks.complete(None, completion(&ok, &err));
        acks.confirm(0, Seq(5), Position(50));
        assert_eq!(ok.load(Ordering::SeqCst), 0);
        acks.resynced(0, ticket - 1);
        assert_eq!(ok.load(Ordering::SeqCst), 0);
        acks.resynced(1, ticket);
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        assert!(acks.is_resync_requested(0));
        assert!(!acks.is_resync_requested(1));
        acks.complete(Some(Seq(5)), completion(&ok, &err));
        assert_eq!(ok.load(Ordering::SeqCst), 2);
        assert_eq!(err.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn async_reply_ignores_resync_ticket() {
        let acks = Acks::new(
            policy(Mode::Async, 1, OnMirrorFailure::Block),
            vec![Default::default()],
        );
        let (ok, err) = counter();
        acks.request_resync();
        acks.complete(None, completion(&ok, &err));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        assert!(!acks.wait_all_confirmed(Seq(0), Instant::now()));
        acks.resynced(0, 1);
        assert!(acks.wait_all_confirmed(Seq(0), Instant::now()));
    }

    #[test]
    fn sync_rule_waits_for_its_mirrors_only() {
        let options = ["mirror=dir:/m0".to_string()];
        let path = std::path::Path::new("/");
        let mut config = crate::config::build(path, path, None, &options).expect("options");
        config.rules = vec![
            crate::config::PathRule {
                path: "audit/**".into(),
                mirrors: vec![1, 2],
                mode: Mode::Sync,
                ack: 2,
            },
            crate::config::PathRule {
                path: "app/*.log".into(),
                mirrors: vec![1],
                mode: Mode::Async,
                ack: 1,
            },
        ];
        let rules = Arc::new(Rules::new(&config));
        assert!(rules.acks_depend_on_path());
        assert!(!rules.acks_differ(1));
        let mut policy = policy(Mode::Async, 1, OnMirrorFailure::Block);
        policy.rules = Some(rules);
        let acks = Acks::new(policy, vec![Default::default(); 3]);
        assert!(acks.serves_sync(1));
        assert!(!acks.serves_sync(0));

        let (ok, err) = counter();
        acks.note_rule(Seq(1), 0);
        acks.complete(Some(Seq(1)), completion(&ok, &err));
        acks.complete(Some(Seq(2)), completion(&ok, &err));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        acks.confirm(0, Seq(2), Position(20));
        acks.confirm(1, Seq(2), Position(20));
        assert_eq!(ok.load(Ordering::SeqCst), 1);
        acks.confirm(2, Seq(1), Position(10));
        assert_eq!(ok.load(Ordering::SeqCst), 2);
        assert_eq!(err.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn backlog_full_fails_without_blocking() {
        let acks = Acks::new(
            policy(Mode::Async, 1, OnMirrorFailure::Block),
            vec![Default::default()],
        );
        assert!(acks.wait_for_room(false, || Position(999)));
        assert!(!acks.wait_for_room(false, || Position(1000)));
        acks.confirm(0, Seq(3), Position(500));
        assert!(acks.wait_for_room(false, || Position(1000)));
    }
}
