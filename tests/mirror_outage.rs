//! A directory mirror stops accepting writes while programs keep logging. In async mode,
//! writes through the mount must keep succeeding and status must report the mirror behind
//! with an error. Once the mirror is writable again, `logmirror sync` must bring it level.
//!
//! The fault is a read-only bind mount over the mirror directory, because root ignores
//! permission bits. A second case puts it in place while eight threads append to a file
//! each, so that the runs of writes the mirror merges fail and are retried whole.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::{Mode, Mount, Status, TestDirs, assert_mirrors_match};

/// Lines written so far to the files of the test, for the exact final content check.
struct Writer {
    app: File,
    app_lines: usize,
    outage: Option<File>,
    outage_lines: usize,
}

impl Writer {
    fn append(&mut self) {
        let line = format!("app line {:06}\n", self.app_lines);
        self.app
            .write_all(line.as_bytes())
            .expect("append to app.log through the mount");
        self.app_lines += 1;
        if let Some(outage) = self.outage.as_mut() {
            let line = format!("outage line {:06}\n", self.outage_lines);
            outage
                .write_all(line.as_bytes())
                .expect("append to outage.log through the mount");
            self.outage_lines += 1;
        }
    }
}

fn open_append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?} for append: {e}"))
}

fn is_behind_with_error(status: &Status) -> bool {
    let mirror = &status.mirrors[0];
    let is_behind = mirror.state == "down" || mirror.state == "lagging";
    is_behind && mirror.lag_records > 0 && mirror.last_error.is_some()
}

#[test]
fn mirror_outage_async() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    let mut writer = Writer {
        app: open_append(&dirs.mnt.join("app.log")),
        app_lines: 0,
        outage: None,
        outage_lines: 0,
    };
    for _ in 0..100 {
        writer.append();
    }
    assert_mirrors_match(&mount);

    let mut bind = common::ReadOnlyBind::new(&dirs.mirrors[0]);
    let probe = fs::write(dirs.mirrors[0].join("probe"), "x");
    let errno = probe.map_err(|e| e.raw_os_error()).err();
    assert_eq!(
        errno,
        Some(Some(libc::EROFS)),
        "mirror must be read-only now"
    );

    // A create after the fault: the mirror cannot apply it even if it kept files open.
    writer.outage = Some(open_append(&dirs.mnt.join("outage.log")));
    let seen = common::wait_until(
        Duration::from_secs(60),
        "status to show the mirror down or lagging with an error",
        || {
            writer.append();
            let status = common::status(&dirs.mnt)?;
            match is_behind_with_error(&status) {
                true => Ok(status),
                false => Err(format!("{status:?}")),
            }
        },
    );
    assert_eq!(seen.mirrors.len(), 1);
    assert_eq!(seen.mode, "async");
    for _ in 0..100 {
        writer.append();
    }
    assert!(
        !dirs.mirrors[0].join("outage.log").exists(),
        "outage.log reached the read-only mirror"
    );

    bind.remove();
    let out = mount.sync(common::SYNC_TIMEOUT_SECS);
    out.assert_success("logmirror sync after the mirror came back");
    let status = mount.status();
    let mirror = &status.mirrors[0];
    assert_eq!(mirror.state, "ok", "{status:?}");
    assert_eq!(mirror.lag_records, 0, "{status:?}");
    assert_eq!(mirror.lag_bytes, 0, "{status:?}");
    assert_eq!(mirror.confirmed_seq, status.head_seq, "{status:?}");
    assert!(mirror.last_error.is_some(), "{status:?}");
    assert!(mirror.last_error_at_ns.is_some(), "{status:?}");
    let text = common::logmirror(&["status", common::path_str(&dirs.mnt)]);
    text.assert_success("logmirror status after the mirror came back");
    assert!(text.stdout.contains("recovered since"), "{text}");

    let app: String = (0..writer.app_lines)
        .map(|i| format!("app line {i:06}\n"))
        .collect();
    let outage: String = (0..writer.outage_lines)
        .map(|i| format!("outage line {i:06}\n"))
        .collect();
    drop(writer);
    assert!(
        common::read_text(&dirs.mnt.join("app.log")) == app,
        "app.log content"
    );
    assert!(
        common::read_text(&dirs.mnt.join("outage.log")) == outage,
        "outage.log content"
    );
    assert_mirrors_match(&mount);
}

const APPENDERS: usize = 8;
const APPENDER_RECORD_BYTES: usize = 1024;

/// Returns record `i` of appender `writer`, `APPENDER_RECORD_BYTES` long.
fn appender_record(writer: usize, i: usize) -> String {
    let head = format!("appender {writer} record {i:07} ");
    format!(
        "{head}{}\n",
        "-".repeat(APPENDER_RECORD_BYTES - 1 - head.len())
    )
}

/// Appends records to `path` until `stop` is set, counting them in `written`.
fn append_until_stopped(path: &Path, writer: usize, written: &AtomicUsize, stop: &AtomicBool) {
    let mut file = open_append(path);
    while !stop.load(Ordering::Relaxed) {
        let i = written.load(Ordering::Relaxed);
        file.write_all(appender_record(writer, i).as_bytes())
            .unwrap_or_else(|e| panic!("append to {path:?} through the mount: {e}"));
        written.store(i + 1, Ordering::Relaxed);
    }
}

/// Threads that append records to `appender-N.log` in a directory until stopped.
struct Appenders {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Appenders {
    /// Starts one thread per counter in `written`, and each thread goes on from its
    /// counter's value.
    fn start(dir: &Path, written: &[Arc<AtomicUsize>]) -> Appenders {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = written
            .iter()
            .enumerate()
            .map(|(writer, written)| {
                let path = dir.join(format!("appender-{writer}.log"));
                let (written, stop) = (written.clone(), stop.clone());
                thread::spawn(move || append_until_stopped(&path, writer, &written, &stop))
            })
            .collect();
        Appenders { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("appender thread");
        }
    }
}

/// Waits until every appender wrote `more` records past `from`.
fn wait_for_records(written: &[Arc<AtomicUsize>], from: &[usize], more: usize, condition: &str) {
    common::wait_until(Duration::from_secs(60), condition, || {
        let now: Vec<usize> = written.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        match now.iter().zip(from).all(|(now, from)| *now >= from + more) {
            true => Ok(()),
            false => Err(format!("records written {now:?}, from {from:?}")),
        }
    });
}

#[test]
fn mirror_outage_many_appenders() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    let written: Vec<Arc<AtomicUsize>> = (0..APPENDERS)
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let appenders = Appenders::start(&dirs.mnt, &written);
    wait_for_records(&written, &[0; APPENDERS], 100, "appenders to start");

    // The bind goes up while the mirror is idle: a batch applied between the bind and its
    // remount would open files through it for writing, and the remount would fail (EBUSY).
    appenders.stop();
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the fault");
    let mut bind = common::ReadOnlyBind::new(&dirs.mirrors[0]);
    let appenders = Appenders::start(&dirs.mnt, &written);
    common::wait_until(
        Duration::from_secs(60),
        "status to show the mirror down or lagging with an error",
        || {
            let status = common::status(&dirs.mnt)?;
            match is_behind_with_error(&status) {
                true => Ok(()),
                false => Err(format!("{status:?}")),
            }
        },
    );
    let at_fault: Vec<usize> = written.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    wait_for_records(
        &written,
        &at_fault,
        200,
        "appenders to go on during the fault",
    );

    bind.remove();
    let at_repair: Vec<usize> = written.iter().map(|w| w.load(Ordering::Relaxed)).collect();
    wait_for_records(
        &written,
        &at_repair,
        200,
        "appenders to go on after the repair",
    );
    appenders.stop();

    for (writer, count) in written.iter().enumerate() {
        let count = count.load(Ordering::Relaxed);
        let expected: String = (0..count).map(|i| appender_record(writer, i)).collect();
        let path = dirs.mnt.join(format!("appender-{writer}.log"));
        let content = common::read_text(&path);
        assert_eq!(content.len(), expected.len(), "size of {path:?}");
        assert!(content == expected, "content of {path:?}");
    }
    assert_mirrors_match(&mount);
    let status = mount.status();
    let mirror = &status.mirrors[0];
    assert_eq!(mirror.state, "ok", "{status:?}");
    assert_eq!(mirror.confirmed_seq, status.head_seq, "{status:?}");
    // The fault failed a run of appends, not some other op.
    let last_error = mirror.last_error.as_deref().unwrap_or_default();
    assert!(last_error.contains(": write appender-"), "{status:?}");
    assert!(last_error.contains("(os error 30)"), "{status:?}");
}
