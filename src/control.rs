//! The control socket: `status`, `sync` and `verify` talk to the running daemon over a Unix
//! socket in the state directory, found through a link named after the mount point in the
//! runtime directory. One JSON request line, one JSON response line.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::mirror::worker::{Context, MirrorSlot, VerifyTrigger};
use crate::monitor::Monitor;
use crate::status::{self, MountInfo, Status};
use crate::verify::{self, VerifyReport};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    Sync { timeout_ms: u64 },
    Verify { timeout_ms: u64, repair: bool },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Synced {
        seq: u64,
    },
    /// The mirrors did not confirm in time; `missing` lists what each one lacks.
    Timeout {
        seq: u64,
        missing: Vec<String>,
    },
    Verified(VerifyReport),
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no logmirror daemon serves {mountpoint:?} for this user (no control socket at \
         {link:?}); check the path and that `logmirror mount` runs"
    )]
    NotMounted {
        mountpoint: PathBuf,
        link: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("lost the connection to the daemon of {mountpoint:?}")]
    Connection {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon of {mountpoint:?} sent an invalid response: {message}")]
    Protocol {
        mountpoint: PathBuf,
        message: String,
    },
}

/// Returns the directory holding one link per mount, named after the mount point.
fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/logmirror");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("logmirror"),
        _ => PathBuf::from(format!("/tmp/logmirror-{uid}")),
    }
}

/// Returns the link to the control socket of the mount at `mountpoint` (an absolute,
/// normalized path).
pub fn link_path(mountpoint: &Path) -> PathBuf {
    let bytes = mountpoint.as_os_str().as_bytes();
    let mut name: String = bytes
        .iter()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'_' | b'-' => {
                (*b as char).to_string()
            }
            b'/' => "+".to_string(),
            other => format!("%{other:02x}"),
        })
        .collect();
    if name.len() > 180 {
        name.truncate(180);
    }
    name.push_str(&format!("-{:08x}.sock", crc32c::crc32c(bytes)));
    runtime_dir().join(name)
}

/// Makes `path` absolute and normal without touching the mount itself, which may hang.
pub fn normalize_mountpoint(path: &Path) -> io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return Ok(absolute);
    };
    Ok(parent.canonicalize()?.join(name))
}

/// The daemon side: serves requests until the process exits.
pub struct Server {
    pub info: MountInfo,
    pub ctx: Arc<Context>,
    pub slots: Vec<Arc<MirrorSlot>>,
    pub monitor: Arc<Monitor>,
}

impl Server {
    /// Builds the status from the live state, for `logmirror status` and the metrics.
    pub fn status(&self) -> Status {
        status::collect(&self.info, &self.ctx, &self.slots, &self.monitor)
    }

    /// Binds the socket in the state directory and links it from the runtime directory.
    pub fn bind(state_dir: &Path, mountpoint: &Path) -> io::Result<(UnixListener, PathBuf)> {
        let socket = state_dir.join("control.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let link = link_path(mountpoint);
        crate::daemon::create_private_dir(link.parent().expect("link has a parent"))?;
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&socket, &link)?;
        Ok((listener, link))
    }

    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let server = self.clone();
            let spawned = std::thread::Builder::new()
                .name("control".into())
                .spawn(move || server.handle(stream));
            if let Err(e) = spawned {
                log::warn!("control socket: cannot start a thread: {e}");
            }
        }
    }

    fn handle(&self, stream: UnixStream) {
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() {
            return;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => self.answer(request),
            Err(e) => Response::Error {
                message: format!("invalid request: {e}"),
            },
        };
        let mut text = serde_json::to_string(&response).expect("response serializes");
        text.push('\n');
        let _ = (&stream).write_all(text.as_bytes());
    }

    fn answer(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::Status(Box::new(self.status())),
            Request::Sync { timeout_ms } => self.sync(Duration::from_millis(timeout_ms)),
            Request::Verify { timeout_ms, repair } => Response::Verified(verify::run(
                &self.ctx,
                &self.slots,
                Duration::from_millis(timeout_ms),
                repair,
                VerifyTrigger::Command,
            )),
        }
    }

    /// Waits until no mirror has a resync pending (one scheduled by `verify --repair`, or
    /// one that waits for the mirror to come back).
    fn wait_resyncs(&self, deadline: Instant) -> bool {
        loop {
            if self.slots.iter().all(|slot| !slot.progress().needs_resync) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn sync(&self, timeout: Duration) -> Response {
        let seq = self.ctx.journal.head().0;
        let deadline = Instant::now() + timeout;
        if self.ctx.acks.wait_all_confirmed(seq, deadline) && self.wait_resyncs(deadline) {
            return Response::Synced { seq: seq.0 };
        }
        let missing = self
            .slots
            .iter()
            .filter_map(|slot| {
                let progress = slot.progress();
                let confirmed = progress.confirmed.0;
                if progress.needs_resync && confirmed >= seq {
                    let name = &slot.name;
                    return Some(format!(
                        "mirror {name}: resync from the backing tree still pending"
                    ));
                }
                (confirmed < seq).then(|| {
                    let error = progress
                        .last_error
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default();
                    format!(
                        "mirror {} confirmed seq {confirmed} of {seq}: {} records missing{error}",
                        slot.name,
                        seq.0 - confirmed.0
                    )
                })
            })
            .collect();
        Response::Timeout {
            seq: seq.0,
            missing,
        }
    }
}

/// Sends one request to the daemon of `mountpoint` and returns its response.
pub fn request(mountpoint: &Path, request: &Request, timeout: Duration) -> Result<Response, Error> {
    let mountpoint = normalize_mountpoint(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let link = link_path(&mountpoint);
    let stream = UnixStream::connect(&link).map_err(|source| Error::NotMounted {
        mountpoint: mountpoint.clone(),
        link: link.clone(),
        source,
    })?;
    let connection = |source| Error::Connection {
        mountpoint: mountpoint.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(connection)?;
    let mut text = serde_json::to_string(request).expect("request serializes");
    text.push('\n');
    (&stream).write_all(text.as_bytes()).map_err(connection)?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(connection)?;
    serde_json::from_str(&line).map_err(|e| Error::Protocol {
        mountpoint: mountpoint.clone(),
        message: e.to_string(),
    })
}
