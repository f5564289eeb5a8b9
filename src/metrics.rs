//! Prometheus metrics: with `metrics=ADDRESS`, the daemon serves the values of `logmirror
//! status` on `GET /metrics`, over TCP or a Unix socket, in the Prometheus text exposition
//! format 0.0.4. A small HTTP/1.1 responder runs on threads of its own. It reads the status
//! that the control socket builds and changes nothing.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::control;
use crate::status::{MirrorStatus, Status};

/// Maximum size of a request head; a scrape sends a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long a connection may take to send its request and read the response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more get 503 at once, so a stuck client cannot pile up
/// threads.
const MAX_CONNECTIONS: usize = 8;
/// Maximum length of a Unix socket path: `sun_path` has room for 108 bytes including the
/// terminating NUL.
const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Address of the metrics endpoint: `metrics=IP:PORT` or `metrics=/absolute/path.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// An IP address and port; port 0 takes a free port, shown in `logmirror status`.
    Tcp(SocketAddr),
    /// A Unix socket path, created by the daemon with mode 0600.
    Unix(PathBuf),
}

impl Address {
    /// Parses `IP:PORT` (`[IPV6]:PORT` for IPv6, `localhost:PORT` for 127.0.0.1) or an
    /// absolute socket path. Returns what was expected when the value is invalid.
    pub fn parse(value: &str) -> Result<Address, String> {
        const EXPECTED: &str = "expected IP:PORT, as in 127.0.0.1:9100 or [::1]:9100, or the \
                                absolute path of a Unix socket, as in /run/logmirror-metrics.sock";
        if value.starts_with('/') {
            if value.len() > MAX_SOCKET_PATH_BYTES {
                return Err(format!(
                    "a Unix socket path has at most {MAX_SOCKET_PATH_BYTES} bytes, and this \
                     one has {}; use a shorter path",
                    value.len()
                ));
            }
            if value.ends_with('/') {
                return Err(format!("{EXPECTED}; this path names a directory"));
            }
            return Ok(Address::Unix(PathBuf::from(value)));
        }
        let value = match value.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => value.to_string(),
        };
        value
            .parse::<SocketAddr>()
            .map(Address::Tcp)
            .map_err(|_| EXPECTED.to_string())
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(address) => write!(f, "{address}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "metrics={address}: cannot listen there; choose a free port or another socket path, \
         or stop the program that uses it"
    )]
    Bind {
        address: Address,
        #[source]
        source: io::Error,
    },
    #[error(
        "metrics={path}: the path exists and is not a socket; remove it or choose another path"
    )]
    NotSocket { path: String },
    #[error("metrics={path}: another process serves this socket; choose another path")]
    SocketInUse { path: String },
}

/// A bound metrics listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// The endpoint while the daemon runs; dropping it removes the Unix socket file.
pub struct Endpoint {
    /// The address as bound, with the port the system chose for port 0.
    pub address: String,
    socket_path: Option<PathBuf>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Binds the listener of `address`. A Unix socket file left by a daemon that died is
/// replaced; one that another process serves is not.
pub fn bind(address: &Address) -> Result<(Listener, Endpoint), Error> {
    let bind_error = |source| Error::Bind {
        address: address.clone(),
        source,
    };
    match address {
        Address::Tcp(socket_address) => {
            let listener = TcpListener::bind(socket_address).map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            // NOTE: the endpoint has no TLS and no authentication.
            if !bound.ip().is_loopback() {
                log::warn!(
                    "metrics endpoint listens on {bound}, which is not a loopback address; \
                     anyone who reaches it can read the metrics, which carry no file contents"
                );
            }
            let endpoint = Endpoint {
                address: bound.to_string(),
                socket_path: None,
            };
            Ok((Listener::Tcp(listener), endpoint))
        }
        Address::Unix(path) => {
            let shown = path.display().to_string();
            match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_socket() => {
                    return Err(Error::NotSocket { path: shown });
                }
                Ok(_) if UnixStream::connect(path).is_ok() => {
                    return Err(Error::SocketInUse { path: shown });
                }
                Ok(_) => std::fs::remove_file(path).map_err(bind_error)?,
                Err(_) => {}
            }
            let listener = UnixListener::bind(path).map_err(bind_error)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(bind_error)?;
            let endpoint = Endpoint {
                address: shown,
                socket_path: Some(path.clone()),
            };
            Ok((Listener::Unix(listener), endpoint))
        }
    }
}

/// Serves scrapes on `listener` until the process exits, each connection on a thread of its
/// own.
pub fn serve(listener: Listener, source: Arc<control::Server>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted: io::Result<Box<dyn Connection>> = match &listener {
            Listener::Tcp(listener) => listener
                .accept()
                .map(|(stream, _)| Box::new(stream) as Box<dyn Connection>),
            Listener::Unix(listener) => listener
                .accept()
                .map(|(stream, _)| Box::new(stream) as Box<dyn Connection>),
        };
        let mut stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                log::warn!("metrics endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_timeouts(IO_TIMEOUT);
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let response = Response::plain("503 Service Unavailable", "", "busy\n");
            let _ = send(&mut stream, &response, true);
            continue;
        }
        let (source, finished) = (source.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                handle(stream, &source);
                finished.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("metrics endpoint: cannot start a thread: {e}");
        }
    }
}

/// A TCP or Unix stream.
trait Connection: Read + Write + Send {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()>;
}

impl Connection for TcpStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

impl Connection for UnixStream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// A response: status line, extra header lines, content type and body.
struct Response {
    status: &'static str,
    headers: &'static str,
    content_type: &'static str,
    body: String,
}

impl Response {
    fn plain(status: &'static str, headers: &'static str, body: &str) -> Response {
        Response {
            status,
            headers,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
        }
    }
}

/// Reads one request and sends its response. The connection closes after it.
fn handle(mut stream: Box<dyn Connection>, source: &control::Server) {
    let Some(head) = read_head(&mut stream) else {
        let response = Response::plain("400 Bad Request", "", "bad request\n");
        let _ = send(&mut stream, &response, true);
        return;
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match (method, path) {
        ("GET" | "HEAD", "/metrics") => Response {
            status: "200 OK",
            headers: "",
            content_type: CONTENT_TYPE,
            body: render(&source.status()),
        },
        ("GET" | "HEAD", _) => Response::plain(
            "404 Not Found",
            "",
            "not found; the metrics are at /metrics\n",
        ),
        _ => Response::plain(
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "only GET and HEAD are served\n",
        ),
    };
    if let Err(e) = send(&mut stream, &response, method != "HEAD") {
        log::debug!("metrics endpoint: sending the response failed: {e}");
    }
}

/// Reads the request line and headers, up to the blank line; `None` when the client sent
/// no complete head within the size and time limits.
fn read_head(stream: &mut Box<dyn Connection>) -> Option<String> {
    // The read timeout bounds each read, and this deadline bounds the whole head. A client
    // that sends a byte now and then thus cannot hold a connection slot.
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    while buffer.len() < MAX_REQUEST_BYTES {
        if Instant::now() >= deadline {
            return None;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.windows(4).any(|w| w == b"\r\n\r\n") || buffer.windows(2).any(|w| w == b"\n\n") {
            return String::from_utf8(buffer).ok();
        }
    }
    None
}

/// Sends `response`; without `with_body` (HEAD) only the head, whose Content-Length still
/// gives the body's size.
fn send(stream: &mut Box<dyn Connection>, response: &Response, with_body: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        response.headers
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(response.body.as_bytes())?;
    }
    stream.flush()
}

/// The text of one scrape, built family by family.
struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric family with its `# HELP` and `# TYPE` lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, label)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(label));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// Writes a family with one unlabeled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value as the text format requires: backslash, double quote, newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a sample value; integers print without a fraction.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Renders the status as a scrape in the Prometheus text format.
pub fn render(status: &Status) -> String {
    let mut out = Exposition {
        text: String::new(),
    };
    render_mount(&mut out, status);
    render_mirrors(&mut out, &status.mirrors);
    out.text
}

fn render_mount(out: &mut Exposition, status: &Status) {
    out.single(
        "logmirror_up",
        "gauge",
        "1 while the daemon serves the mount.",
        1.0,
    );
    out.family(
        "logmirror_info",
        "gauge",
        "Mount facts as labels; the value is always 1.",
    );
    out.sample(
        "logmirror_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("mountpoint", &status.mountpoint),
            ("backing", &status.backing),
            ("mode", &status.mode),
            ("on_mirror_failure", &status.policy.on_mirror_failure),
            ("when_full", &status.policy.when_full),
        ],
        1.0,
    );
    let counts = &status.appended;
    let mount_values = [
        (
            "logmirror_start_time_seconds",
            "gauge",
            "Start time of the daemon, in seconds since the Unix epoch.",
            seconds(status.started_at_ns),
        ),
        (
            "logmirror_degraded",
            "gauge",
            "1 while sync mode runs as async after on_mirror_failure=degrade applied.",
            f64::from(u8::from(status.degraded)),
        ),
        (
            "logmirror_journal_head_seq",
            "gauge",
            "Seq of the newest journal record.",
            status.head_seq as f64,
        ),
        (
            "logmirror_journal_bytes",
            "gauge",
            "Size of the journal's segment files on disk.",
            status.journal_bytes as f64,
        ),
        (
            "logmirror_journal_memory_bytes",
            "gauge",
            "Write data journaled by reference and held in memory until every mirror has it.",
            status.journal_memory_bytes as f64,
        ),
        (
            "logmirror_journal_records_total",
            "counter",
            "Journal records appended since the daemon started.",
            counts.records as f64,
        ),
        (
            "logmirror_journal_appended_bytes_total",
            "counter",
            "Journal bytes appended since the daemon started, framing included.",
            counts.bytes as f64,
        ),
        (
            "logmirror_writes_total",
            "counter",
            "Writes through the mount since the daemon started.",
            counts.writes as f64,
        ),
        (
            "logmirror_written_bytes_total",
            "counter",
            "Data bytes of the writes through the mount since the daemon started.",
            counts.written_bytes as f64,
        ),
        (
            "logmirror_backlog_bytes",
            "gauge",
            "Journal bytes not yet confirmed by every mirror.",
            status.backlog_bytes as f64,
        ),
        (
            "logmirror_backlog_max_bytes",
            "gauge",
            "The max_backlog option: backlog at which async writers wait or fail.",
            status.policy.max_backlog_bytes as f64,
        ),
    ];
    for (name, kind, help, value) in mount_values {
        out.single(name, kind, help, value);
    }
    out.family(
        "logmirror_writes_blocked",
        "gauge",
        "Writes whose reply waits now, for backlog room (async) or for mirrors (sync).",
    );
    let blocked = &status.writes_blocked;
    out.sample(
        "logmirror_writes_blocked",
        &[("reason", "backlog")],
        blocked.backlog as f64,
    );
    out.sample(
        "logmirror_writes_blocked",
        &[("reason", "mirrors")],
        blocked.mirrors as f64,
    );
}

/// Name, type, help text and value of a per-mirror metric; a mirror without a value (no
/// verify yet, not an S3 mirror) has no sample.
type MirrorMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&MirrorStatus) -> Option<f64>,
);

const MIRROR_METRICS: [MirrorMetric; 12] = [
    (
        "logmirror_mirror_confirmed_seq",
        "gauge",
        "Seq of the newest record the mirror confirmed.",
        |m| Some(m.confirmed_seq as f64),
    ),
    (
        "logmirror_mirror_lag_records",
        "gauge",
        "Records the mirror has not confirmed.",
        |m| Some(m.lag_records as f64),
    ),
    (
        "logmirror_mirror_lag_bytes",
        "gauge",
        "Journal bytes the mirror has not confirmed.",
        |m| Some(m.lag_bytes as f64),
    ),
    (
        "logmirror_mirror_lag_seconds",
        "gauge",
        "Age of the oldest record the mirror has not confirmed.",
        |m| Some(m.lag_seconds),
    ),
    (
        "logmirror_mirror_throughput_records_per_second",
        "gauge",
        "Records the mirror confirmed per second over the last minute.",
        |m| Some(m.throughput.records_per_second),
    ),
    (
        "logmirror_mirror_errors_total",
        "counter",
        "Failed attempts to write to the mirror since the daemon started.",
        |m| Some(m.errors_total as f64),
    ),
    (
        "logmirror_mirror_resync_pending",
        "gauge",
        "1 while a resync of the mirror from the backing tree is pending.",
        |m| Some(f64::from(u8::from(m.resync_pending))),
    ),
    (
        "logmirror_mirror_last_error_timestamp_seconds",
        "gauge",
        "Time of the mirror's latest failed attempt, in seconds since the Unix epoch.",
        |m| m.last_error_at_ns.map(seconds),
    ),
    (
        "logmirror_mirror_last_verify_timestamp_seconds",
        "gauge",
        "Time of the mirror's latest verify, in seconds since the Unix epoch.",
        |m| m.last_verify.as_ref().map(|v| seconds(v.at_ns)),
    ),
    (
        "logmirror_mirror_last_verify_differences",
        "gauge",
        "Differences the mirror's latest verify found.",
        |m| m.last_verify.as_ref().map(|v| v.differences as f64),
    ),
    (
        "logmirror_mirror_last_verify_failed",
        "gauge",
        "1 when the mirror's latest verify could not compare the trees.",
        |m| {
            m.last_verify
                .as_ref()
                .map(|v| f64::from(u8::from(v.error.is_some())))
        },
    ),
    (
        "logmirror_mirror_uploaded_bytes_total",
        "counter",
        "S3 mirrors: request body bytes sent to the store since the daemon started.",
        |m| m.bytes_uploaded.map(|b| b as f64),
    ),
];

fn render_mirrors(out: &mut Exposition, mirrors: &[MirrorStatus]) {
    out.family(
        "logmirror_mirror_state",
        "gauge",
        "1 for the state the mirror is in (ok, lagging or down), 0 for the others.",
    );
    for mirror in mirrors {
        for state in ["ok", "lagging", "down"] {
            let value = f64::from(u8::from(mirror.state == state));
            out.sample(
                "logmirror_mirror_state",
                &[("mirror", &mirror.name), ("state", state)],
                value,
            );
        }
    }

    for (name, kind, help, value) in MIRROR_METRICS {
        out.family(name, kind, help);
        for mirror in mirrors {
            if let Some(value) = value(mirror) {
                out.sample(name, &[("mirror", &mirror.name)], value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_parses() {
        let cases = [
            (
                "127.0.0.1:9100",
                Address::Tcp("127.0.0.1:9100".parse().unwrap()),
            ),
            ("localhost:0", Address::Tcp("127.0.0.1:0".parse().unwrap())),
            ("[::1]:9100", Address::Tcp("[::1]:9100".parse().unwrap())),
            (
                "0.0.0.0:9100",
                Address::Tcp("0.0.0.0:9100".parse().unwrap()),
            ),
            ("/run/m.sock", Address::Unix(PathBuf::from("/run/m.sock"))),
        ];
        for (text, expected) in cases {
            assert_eq!(Address::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn address_rejects_invalid() {
        let long = format!("/{}", "a".repeat(200));
        for text in [
            "",
            "9100",
            "example.net:9100",
            "127.0.0.1",
            "127.0.0.1:99999",
            "run/m.sock",
            "/run/",
            &long,
        ] {
            assert!(Address::parse(text).is_err(), "{text:?} was accepted");
        }
    }

    #[test]
    fn label_values_escaped() {
        assert_eq!(escape_label("dir:/a\"b\\c\nd"), "dir:/a\\\"b\\\\c\\nd");
    }

    #[test]
    fn values_formatted() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
    }
}
