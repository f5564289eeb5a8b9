//! A directory mirror stops accepting writes while programs keep logging. In async mode,
//! writes through the mount must keep succeeding and status must report the mirror behind
//! with an error. Once the mirror is writable again, `logmirror sync` must bring it level.
//!
//! The fault is a read-only bind mount over the mirror directory, because root ignores
//! permission bits.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
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
