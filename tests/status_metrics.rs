//! Status and Prometheus metrics against what was written: a mount with a directory mirror
//! and `metrics=`, known writes through it, then `status --json` and a scrape of
//! `GET /metrics` must show the same exact counts, over TCP and over a Unix socket. While
//! the mirror is read-only, both must show the same growing lag, blocked writes, the
//! daemon log one line per state change, and `logmirror sync` plain progress lines.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::{Helper, Mode, Mount, ReadOnlyBind, TestDirs, path_str, wait_until};
use serde_json::Value;

/// Lines written through the mount by [`write_lines`]; each is one write(2).
const LINES: usize = 40;
/// Text inside every written line, which must never appear in the daemon log.
const CONTENT_MARKER: &str = "payload-7f3a";

/// Writes `count` lines of different lengths to `path`, one write(2) each, and returns
/// their total size in bytes.
fn write_lines(path: &Path, first: usize, count: usize) -> u64 {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut total = 0;
    for i in first..first + count {
        let line = format!("line {i} {CONTENT_MARKER} {}\n", "x".repeat(i % 50));
        file.write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("write line {i} to {path:?}: {e}"));
        total += line.len() as u64;
    }
    total
}

/// `logmirror status --json` as a JSON value, for the fields the shared harness does not
/// parse.
fn status_json(mnt: &Path) -> Value {
    let out = common::logmirror(&["status", path_str(mnt), "--json"]);
    out.assert_success("logmirror status --json");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON ({e}): {out}"))
}

/// Returns the field at `path` (keys and array indexes) of `value` as u64.
fn field_u64(value: &Value, path: &[&str]) -> u64 {
    let mut at = value;
    for key in path {
        at = match key.parse::<usize>() {
            Ok(index) => &at[index],
            Err(_) => &at[*key],
        };
    }
    at.as_u64()
        .unwrap_or_else(|| panic!("status field {path:?} is not a number: {at} in {value}"))
}

/// One HTTP response: status code, headers as lines, body.
struct HttpResponse {
    code: u16,
    head: String,
    body: String,
}

/// Sends `request` on `stream` and reads the whole response (the server closes after it).
fn exchange(mut stream: impl Read + Write, request: &str) -> HttpResponse {
    stream
        .write_all(request.as_bytes())
        .expect("send HTTP request");
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read HTTP response");
    let text = String::from_utf8(bytes).expect("response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("response without a blank line: {text:?}"));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("invalid status line in {head:?}"));
    HttpResponse {
        code,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn http_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n")
}

/// Sends `request` to the metrics endpoint at `address`, a TCP address or a socket path as
/// status shows it.
fn request_metrics(address: &str, request: &str) -> HttpResponse {
    if address.starts_with('/') {
        exchange(
            UnixStream::connect(address).expect("connect to the metrics socket"),
            request,
        )
    } else {
        exchange(
            TcpStream::connect(address).expect("connect to the metrics port"),
            request,
        )
    }
}

/// A scrape parsed into series (name with labels, as written) and values, with the names
/// that have `# HELP` and `# TYPE` lines.
struct Scrape {
    series: BTreeMap<String, f64>,
    help: Vec<String>,
    types: BTreeMap<String, String>,
    text: String,
}

impl Scrape {
    fn value(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{}", self.text))
    }
}

fn scrape(address: &str) -> Scrape {
    let response = request_metrics(address, &http_get("/metrics"));
    assert_eq!(response.code, 200, "{}\n{}", response.head, response.body);
    assert!(
        response
            .head
            .contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{}",
        response.head
    );
    let mut parsed = Scrape {
        series: BTreeMap::new(),
        help: Vec::new(),
        types: BTreeMap::new(),
        text: response.body.clone(),
    };
    for line in response.body.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            parsed
                .help
                .push(rest.split(' ').next().unwrap_or("").to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            parsed.types.insert(name.to_string(), kind.to_string());
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample line without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("sample value is not a number: {line:?}"));
            parsed.series.insert(series.to_string(), value);
        }
    }
    parsed
}

fn mirror_series(name: &str, mirror: &str) -> String {
    format!("{name}{{mirror=\"{mirror}\"}}")
}

/// Returns the metrics address that status shows.
fn metrics_address(mnt: &Path) -> String {
    let status = status_json(mnt);
    status["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("status shows no metrics address: {status}"))
        .to_string()
}

/// Mounts `dirs` in `mode` with `extra` options and metrics on a free loopback port, and
/// returns the mount and the metrics address that status shows.
fn mount_with_metrics<'a>(dirs: &'a TestDirs, mode: Mode, extra: &[&str]) -> (Mount<'a>, String) {
    let mut options = dirs.options(mode);
    options.extend(extra.iter().map(|o| o.to_string()));
    options.push("metrics=127.0.0.1:0".to_string());
    let mount = Mount::with_options(dirs, &options);
    let address = metrics_address(mount.mnt());
    (mount, address)
}

#[test]
fn status_and_metrics_match_writes() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let (mount, address) = mount_with_metrics(&dirs, Mode::Async, &[]);
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert!(!address.ends_with(":0"), "status shows port 0: {address}");

    let written = write_lines(&dirs.mnt.join("app.log"), 0, LINES);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");

    let status = status_json(mount.mnt());
    let head = field_u64(&status, &["head_seq"]);
    assert_eq!(field_u64(&status, &["appended", "writes"]), LINES as u64);
    assert_eq!(field_u64(&status, &["appended", "written_bytes"]), written);
    // A fresh journal: every record since the start, the create and the writes.
    assert_eq!(field_u64(&status, &["appended", "records"]), head);
    assert!(head > LINES as u64, "head {head} below {LINES} writes");
    assert_eq!(field_u64(&status, &["mirrors", "0", "confirmed_seq"]), head);
    assert_eq!(field_u64(&status, &["mirrors", "0", "lag_records"]), 0);
    assert_eq!(field_u64(&status, &["mirrors", "0", "lag_bytes"]), 0);
    assert_eq!(field_u64(&status, &["backlog_bytes"]), 0);
    assert_eq!(field_u64(&status, &["writes_blocked", "backlog"]), 0);
    assert_eq!(field_u64(&status, &["writes_blocked", "mirrors"]), 0);
    assert_eq!(
        field_u64(&status, &["policy", "max_backlog_bytes"]),
        1 << 30
    );
    assert_eq!(field_u64(&status, &["policy", "ack"]), 1);
    assert_eq!(status["policy"]["when_full"], "block");
    assert_eq!(status["policy"]["on_mirror_failure"], "block");
    assert_eq!(status["mirrors"][0]["state"], "ok");
    let journal_bytes = field_u64(&status, &["journal_bytes"]);

    // The throughput covers the whole run while it is shorter than a minute, so rate times
    // window gives back what the mirror confirmed since the mount: every record and byte.
    let status = wait_until(
        Duration::from_secs(30),
        "a throughput window of a second",
        || {
            let status = status_json(mount.mnt());
            let window = status["mirrors"][0]["throughput"]["window_seconds"].as_f64();
            match window {
                Some(seconds) if seconds >= 1.0 => Ok(status),
                _ => Err(status.to_string()),
            }
        },
    );
    let throughput = &status["mirrors"][0]["throughput"];
    let window = throughput["window_seconds"]
        .as_f64()
        .expect("window_seconds");
    if field_u64(&status, &["uptime_seconds"]) < 50 {
        let records = throughput["records_per_second"]
            .as_f64()
            .expect("records/s")
            * window;
        assert!(
            (records - head as f64).abs() < 1e-6 * head as f64,
            "{status}"
        );
        let bytes = throughput["bytes_per_second"].as_f64().expect("bytes/s") * window;
        let appended_bytes = field_u64(&status, &["appended", "bytes"]) as f64;
        assert!(
            (bytes - appended_bytes).abs() < 1e-6 * appended_bytes,
            "{status}"
        );
    }

    let metrics = scrape(&address);
    let mirror = format!("dir:{}", dirs.mirrors[0].display());
    assert_eq!(metrics.value("logmirror_up"), 1.0);
    assert_eq!(metrics.value("logmirror_writes_total"), LINES as f64);
    assert_eq!(
        metrics.value("logmirror_written_bytes_total"),
        written as f64
    );
    assert_eq!(
        metrics.value("logmirror_journal_records_total"),
        head as f64
    );
    assert_eq!(metrics.value("logmirror_journal_head_seq"), head as f64);
    assert_eq!(
        metrics.value("logmirror_journal_bytes"),
        journal_bytes as f64
    );
    assert_eq!(metrics.value("logmirror_backlog_bytes"), 0.0);
    assert_eq!(
        metrics.value("logmirror_backlog_max_bytes"),
        (1u64 << 30) as f64
    );
    let confirmed = mirror_series("logmirror_mirror_confirmed_seq", &mirror);
    assert_eq!(metrics.value(&confirmed), head as f64);
    let lag = mirror_series("logmirror_mirror_lag_records", &mirror);
    assert_eq!(metrics.value(&lag), 0.0);
    let lag_bytes = mirror_series("logmirror_mirror_lag_bytes", &mirror);
    assert_eq!(metrics.value(&lag_bytes), 0.0);
    let errors = mirror_series("logmirror_mirror_errors_total", &mirror);
    assert_eq!(metrics.value(&errors), 0.0);
    let ok = format!("logmirror_mirror_state{{mirror=\"{mirror}\",state=\"ok\"}}");
    assert_eq!(metrics.value(&ok), 1.0);
    let down = format!("logmirror_mirror_state{{mirror=\"{mirror}\",state=\"down\"}}");
    assert_eq!(metrics.value(&down), 0.0);
    assert_eq!(
        metrics.value("logmirror_writes_blocked{reason=\"backlog\"}"),
        0.0
    );

    // Every sample's family has HELP and TYPE, counters end in _total, and no name
    // breaks the Prometheus naming rules.
    for series in metrics.series.keys() {
        let name = series.split('{').next().unwrap_or(series);
        assert!(metrics.help.iter().any(|h| h == name), "no HELP for {name}");
        let kind = metrics
            .types
            .get(name)
            .unwrap_or_else(|| panic!("no TYPE for {name}"));
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name}: {kind}"
        );
        assert!(name.starts_with("logmirror_"), "{name}");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
    }

    let text = common::logmirror(&["status", path_str(mount.mnt())]);
    text.assert_success("logmirror status");
    for expected in [
        "policy:  ack 1, on_mirror_failure=block after 30s, when_full=block",
        &format!("since start: {LINES} writes of "),
        "writes blocked now: 0 waiting for backlog room, 0 waiting for mirrors",
        &format!("metrics: {address}"),
        "  throughput: ",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected:?} missing:\n{text}"
        );
    }

    let missing = request_metrics(&address, &http_get("/other"));
    assert_eq!(missing.code, 404, "{}", missing.head);
    let post = request_metrics(&address, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(post.code, 405, "{}", post.head);
    let head_only = request_metrics(&address, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(head_only.code, 200, "{}", head_only.head);
    assert_eq!(head_only.body, "", "HEAD returned a body");
    mount.unmount();
}

#[test]
fn lag_and_state_changes_while_mirror_readonly() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let (mount, address) = mount_with_metrics(&dirs, Mode::Async, &[]);
    let mirror = format!("dir:{}", dirs.mirrors[0].display());
    let log = dirs.mnt.join("app.log");
    write_lines(&log, 0, LINES);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync before the outage");
    let before = status_json(mount.mnt());
    let confirmed_before = field_u64(&before, &["mirrors", "0", "confirmed_seq"]);

    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);
    // A new file: the mirror may keep app.log open from before the bind, and writes to it
    // would still succeed.
    write_lines(&dirs.mnt.join("outage.log"), 0, LINES);
    let status = wait_until(
        Duration::from_secs(60),
        "status to show the mirror down",
        || {
            let status = status_json(mount.mnt());
            match status["mirrors"][0]["state"].as_str() {
                Some("down") => Ok(status),
                _ => Err(status.to_string()),
            }
        },
    );
    let head = field_u64(&status, &["head_seq"]);
    let lag_records = field_u64(&status, &["mirrors", "0", "lag_records"]);
    let lag_bytes = field_u64(&status, &["mirrors", "0", "lag_bytes"]);
    assert_eq!(
        field_u64(&status, &["mirrors", "0", "confirmed_seq"]),
        confirmed_before
    );
    assert_eq!(lag_records, head - confirmed_before);
    assert!(
        lag_records >= LINES as u64,
        "lag {lag_records} below {LINES}"
    );
    assert!(lag_bytes > 0, "{status}");
    assert_eq!(field_u64(&status, &["backlog_bytes"]), lag_bytes);
    assert_eq!(
        field_u64(&status, &["appended", "writes"]),
        2 * LINES as u64
    );
    assert!(status["mirrors"][0]["last_error"].is_string(), "{status}");
    assert!(field_u64(&status, &["mirrors", "0", "errors_total"]) >= 1);

    // Nothing is written while the mirror is read-only, so the lag stays put and the
    // scrape must show the same numbers.
    let metrics = scrape(&address);
    let series = |name: &str| mirror_series(name, &mirror);
    assert_eq!(
        metrics.value(&series("logmirror_mirror_lag_records")),
        lag_records as f64
    );
    assert_eq!(
        metrics.value(&series("logmirror_mirror_lag_bytes")),
        lag_bytes as f64
    );
    assert_eq!(
        metrics.value(&series("logmirror_mirror_confirmed_seq")),
        confirmed_before as f64
    );
    assert_eq!(metrics.value("logmirror_backlog_bytes"), lag_bytes as f64);
    assert!(metrics.value(&series("logmirror_mirror_errors_total")) >= 1.0);
    assert!(metrics.value(&series("logmirror_mirror_lag_seconds")) > 0.0);
    assert!(metrics.value(&series("logmirror_mirror_last_error_timestamp_seconds")) > 0.0);
    let down = format!("logmirror_mirror_state{{mirror=\"{mirror}\",state=\"down\"}}");
    assert_eq!(metrics.value(&down), 1.0);

    // `logmirror sync` with stderr not a terminal prints whole progress lines.
    let mut sync_cmd = Command::new("sh");
    sync_cmd.args([
        "-c",
        "exec \"$0\" sync \"$1\" --timeout 120s --progress-interval 100ms 2>&1",
        path_str(common::bin()),
        path_str(mount.mnt()),
    ]);
    let sync = Helper::spawn(sync_cmd, "logmirror sync with progress");
    let expected_line = format!(
        "mirror {mirror}: down, confirmed seq {confirmed_before} of {head}, {lag_records} records behind"
    );
    for _ in 0..2 {
        let line = sync.read_line(common::COMMAND_TIMEOUT);
        assert!(line.starts_with("sync: "), "{line:?}");
        assert!(
            line.ends_with(&expected_line),
            "{line:?} does not end with {expected_line:?}"
        );
        assert!(!line.contains('\r'), "{line:?}");
    }
    bind.remove();
    let (exit, rest) = sync.finish(common::COMMAND_TIMEOUT);
    assert!(
        exit.success(),
        "sync after the outage: {exit}; output {rest:?}"
    );
    let last = rest.last().expect("sync printed its result");
    assert_eq!(
        last,
        &format!("all mirrors confirmed every write up to seq {head}")
    );
    assert!(rest.iter().all(|l| !l.contains('\r')), "{rest:?}");

    let after = status_json(mount.mnt());
    assert_eq!(field_u64(&after, &["mirrors", "0", "confirmed_seq"]), head);
    assert_eq!(field_u64(&after, &["mirrors", "0", "lag_records"]), 0);
    let metrics = scrape(&address);
    assert_eq!(metrics.value(&series("logmirror_mirror_lag_records")), 0.0);
    assert_eq!(
        metrics.value(&series("logmirror_mirror_confirmed_seq")),
        head as f64
    );

    // One line for the change to down with its cause, one for the way back, and the
    // mirror ends ok in the log (from down, or from lagging after it).
    wait_for_log(&mount, &mirror, " -> ok: ");
    let to_down = log_lines(&mount.log_file, &mirror, " -> down: ");
    assert_eq!(to_down.len(), 1, "{to_down:?}");
    assert!(to_down[0].contains(" WARN "), "{}", to_down[0]);
    assert!(
        to_down[0].contains("Read-only file system"),
        "{}",
        to_down[0]
    );
    let from_down = log_lines(&mount.log_file, &mirror, "down -> ");
    assert_eq!(from_down.len(), 1, "{from_down:?}");
    // No line carries file contents.
    let log_text = fs::read_to_string(&mount.log_file).expect("read the daemon log");
    assert!(
        !log_text.contains(CONTENT_MARKER),
        "file contents in the log:\n{log_text}"
    );
    mount.unmount();
}

#[test]
fn metrics_over_unix_socket() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let socket = dirs.root.join("metrics.sock");
    let mut options = dirs.options(Mode::Sync);
    options.push(format!("metrics={}", socket.display()));
    let mount = Mount::with_options(&dirs, &options);
    assert_eq!(metrics_address(mount.mnt()), path_str(&socket));
    let mode = fs::metadata(&socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let written = write_lines(&dirs.mnt.join("app.log"), 0, LINES);
    let status = status_json(mount.mnt());
    let head = field_u64(&status, &["head_seq"]);
    let metrics = scrape(path_str(&socket));
    let mirror = format!("dir:{}", dirs.mirrors[0].display());
    assert_eq!(metrics.value("logmirror_up"), 1.0);
    assert_eq!(metrics.value("logmirror_writes_total"), LINES as f64);
    assert_eq!(
        metrics.value("logmirror_written_bytes_total"),
        written as f64
    );
    // Sync mode: every write returned after the mirror confirmed it.
    let confirmed = mirror_series("logmirror_mirror_confirmed_seq", &mirror);
    assert_eq!(metrics.value(&confirmed), head as f64);
    let info = metrics
        .series
        .keys()
        .find(|s| s.starts_with("logmirror_info{"))
        .expect("logmirror_info in the scrape");
    assert!(info.contains("mode=\"sync\""), "{info}");
    assert!(
        info.contains(&format!("mountpoint=\"{}\"", dirs.mnt.display())),
        "{info}"
    );

    mount.unmount();
    assert!(!socket.exists(), "the daemon left {socket:?} behind");
}

#[test]
fn writes_blocked_shown() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let (mount, address) = mount_with_metrics(&dirs, Mode::Sync, &[]);
    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);

    // A sync-mode write waits for the mirror, which cannot confirm it.
    let path = dirs.mnt.join("blocked.log");
    let writer = thread::spawn(move || write_lines(&path, 0, 1));
    let status = wait_until(
        Duration::from_secs(60),
        "status to show one write waiting for mirrors",
        || {
            let status = status_json(mount.mnt());
            match status["writes_blocked"]["mirrors"].as_u64() {
                Some(1) => Ok(status),
                _ => Err(status.to_string()),
            }
        },
    );
    assert_eq!(field_u64(&status, &["writes_blocked", "backlog"]), 0);
    let metrics = scrape(&address);
    assert_eq!(
        metrics.value("logmirror_writes_blocked{reason=\"mirrors\"}"),
        1.0
    );
    assert_eq!(
        metrics.value("logmirror_writes_blocked{reason=\"backlog\"}"),
        0.0
    );

    bind.remove();
    let written = writer.join().expect("writer thread");
    assert!(written > 0);
    let status = status_json(mount.mnt());
    assert_eq!(field_u64(&status, &["writes_blocked", "mirrors"]), 0);
    mount.unmount();
}

#[test]
fn backlog_wait_shown() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let options = ["max_backlog=1M", "when_full=block"];
    let (mount, address) = mount_with_metrics(&dirs, Mode::Async, &options);
    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);

    // Twice max_backlog from one writer: it waits once the backlog is full.
    let path = dirs.mnt.join("big.log");
    let chunk = vec![b'x'; 64 << 10];
    let writer = thread::spawn(move || {
        let mut file = fs::File::create(&path).expect("create big.log");
        for _ in 0..32 {
            file.write_all(&chunk).expect("write big.log");
        }
    });
    let status = wait_until(
        Duration::from_secs(60),
        "status to show one write waiting for backlog room",
        || {
            let status = status_json(mount.mnt());
            match status["writes_blocked"]["backlog"].as_u64() {
                Some(1) => Ok(status),
                _ => Err(status.to_string()),
            }
        },
    );
    let backlog = field_u64(&status, &["backlog_bytes"]);
    assert!(
        backlog >= 1 << 20,
        "backlog {backlog} below max_backlog: {status}"
    );
    let metrics = scrape(&address);
    assert_eq!(
        metrics.value("logmirror_writes_blocked{reason=\"backlog\"}"),
        1.0
    );
    assert_eq!(metrics.value("logmirror_backlog_bytes"), backlog as f64);

    bind.remove();
    writer.join().expect("writer thread");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the outage");
    let status = status_json(mount.mnt());
    assert_eq!(field_u64(&status, &["writes_blocked", "backlog"]), 0);
    assert_eq!(field_u64(&status, &["appended", "written_bytes"]), 32 << 16);
    mount.unmount();
}

#[test]
fn bad_metrics_values_rejected() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount_with = |metrics: &str| {
        let mirror = format!("mirror=dir:{}", dirs.mirrors[0].display());
        let metrics = format!("metrics={metrics}");
        let out = common::logmirror(&[
            "mount",
            path_str(&dirs.backing),
            path_str(&dirs.mnt),
            "-o",
            &mirror,
            "-o",
            &metrics,
        ]);
        assert!(
            !common::is_mounted(&dirs.mnt),
            "mounted with {metrics}: {out}"
        );
        out
    };

    for value in [
        "example.net:9100",
        "9100",
        "metrics.sock",
        "127.0.0.1:99999",
    ] {
        let out = mount_with(value);
        assert_eq!(out.code(), common::EXIT_USAGE, "{value}: {out}");
        assert!(
            out.stderr.contains(&format!(
                "invalid value {value:?} for metrics: expected IP:PORT"
            )),
            "{value}: {out}"
        );
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("local address").port();
    let out = mount_with(&format!("127.0.0.1:{port}"));
    assert_eq!(out.code(), common::EXIT_RUNTIME, "{out}");
    assert!(
        out.stderr
            .contains(&format!("metrics=127.0.0.1:{port}: cannot listen there")),
        "{out}"
    );
    assert!(out.stderr.contains("Address already in use"), "{out}");
    drop(taken);

    let file = dirs.root.join("not-a-socket");
    fs::write(&file, "x").expect("write a regular file");
    let out = mount_with(path_str(&file));
    assert_eq!(out.code(), common::EXIT_RUNTIME, "{out}");
    assert!(
        out.stderr.contains("the path exists and is not a socket"),
        "{out}"
    );
    assert_eq!(fs::read_to_string(&file).expect("file kept"), "x");
}

/// Returns the lines of the daemon log at `path` that are about `mirror` and contain
/// `fragment`.
fn log_lines(path: &Path, mirror: &str, fragment: &str) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let prefix = format!("mirror {mirror}: ");
    text.lines()
        .filter(|l| l.contains(&prefix) && l.contains(fragment))
        .map(str::to_string)
        .collect()
}

/// Waits until the daemon log has a line about `mirror` containing `fragment`, and returns
/// every such line.
fn wait_for_log(mount: &Mount, mirror: &str, fragment: &str) -> Vec<String> {
    wait_until(
        Duration::from_secs(60),
        &format!("the daemon log to show {fragment:?} for mirror {mirror}"),
        || {
            let lines = log_lines(&mount.log_file, mirror, fragment);
            match lines.is_empty() {
                false => Ok(lines),
                true => Err(mount.log_tail(2000)),
            }
        },
    )
}

#[test]
fn lagging_logged_and_shown() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    // The mirror confirms only when the journal goes idle or after a minute, so a writer
    // that never pauses keeps it more than a second behind without an error.
    let (mount, address) = mount_with_metrics(&dirs, Mode::Async, &["flush_interval=1m"]);
    let mirror = format!("dir:{}", dirs.mirrors[0].display());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let path = dirs.mnt.join("busy.log");
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut lines = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write_lines(&path, lines, 10);
                lines += 10;
            }
            lines
        })
    };
    let to_lagging = wait_for_log(&mount, &mirror, "ok -> lagging: ");
    assert_eq!(to_lagging.len(), 1, "{to_lagging:?}");
    assert!(to_lagging[0].contains(" WARN "), "{}", to_lagging[0]);
    assert!(
        to_lagging[0].contains(" records unconfirmed, the oldest "),
        "{}",
        to_lagging[0]
    );
    let status = status_json(mount.mnt());
    assert_eq!(status["mirrors"][0]["state"], "lagging", "{status}");
    let metrics = scrape(&address);
    let lagging = format!("logmirror_mirror_state{{mirror=\"{mirror}\",state=\"lagging\"}}");
    assert_eq!(metrics.value(&lagging), 1.0);
    assert!(metrics.value(&mirror_series("logmirror_mirror_lag_seconds", &mirror)) >= 1.0);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let lines = writer.join().expect("writer thread");
    assert!(lines > 0);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after the writer stopped");
    // The next line may wait for the log's rate limit of one line per 10 s per mirror.
    let to_ok = wait_for_log(&mount, &mirror, "lagging -> ok: caught up");
    assert_eq!(to_ok.len(), 1, "{to_ok:?}");
    assert!(to_ok[0].contains(" INFO "), "{}", to_ok[0]);
    assert!(log_lines(&mount.log_file, &mirror, " -> down").is_empty());
    mount.unmount();
}

#[test]
fn sync_progress_redrawn_on_terminal() {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, Mode::Async);
    let mut bind = ReadOnlyBind::new(&dirs.mirrors[0]);
    write_lines(&dirs.mnt.join("outage.log"), 0, 1);
    wait_until(Duration::from_secs(60), "the mirror to be down", || {
        let status = status_json(mount.mnt());
        match status["mirrors"][0]["state"].as_str() {
            Some("down") => Ok(()),
            _ => Err(status.to_string()),
        }
    });

    // script(1) gives the command a terminal and copies what it draws into `typescript`.
    let typescript = dirs.root.join("typescript");
    let command = format!(
        "{} sync {} --timeout 120s",
        path_str(common::bin()),
        path_str(mount.mnt())
    );
    let mut script = Command::new("script");
    script.args(["-q", "-f", "-e", "-c", &command, path_str(&typescript)]);
    let sync = Helper::spawn(script, "logmirror sync on a terminal");
    let redraw = "\r\x1b[Ksync: ";
    wait_until(Duration::from_secs(60), "a redrawn progress line", || {
        let text = fs::read_to_string(&typescript).unwrap_or_default();
        match text.matches(redraw).count() {
            0 | 1 => Err(format!("{text:?}")),
            _ => Ok(()),
        }
    });
    bind.remove();
    let (exit, _) = sync.finish(common::COMMAND_TIMEOUT);
    assert!(exit.success(), "sync on a terminal: {exit}");

    let text = fs::read_to_string(&typescript).expect("read the typescript");
    let progress = text
        .split(redraw)
        .last()
        .expect("a redrawn line")
        .to_string();
    // The last redraw ends its line before the result, so the result starts on its own.
    let (last_line, rest) = progress
        .split_once("\r\n")
        .unwrap_or_else(|| panic!("progress line not ended: {text:?}"));
    assert!(last_line.contains(" records behind"), "{text:?}");
    assert!(
        rest.starts_with("all mirrors confirmed every write up to seq "),
        "{text:?}"
    );
    mount.unmount();
}
