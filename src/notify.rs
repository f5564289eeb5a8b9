//! Readiness and watchdog messages to systemd (the `sd_notify` protocol), sent by the daemon
//! beside the data path: `READY=1` once the mount serves, `WATCHDOG=1` while it runs, and
//! `STOPPING=1` when the mount is gone and the mirrors drain.
//!
//! The protocol is one datagram per message, sent to the Unix socket named in
//! `$NOTIFY_SOCKET`: a path, or an abstract socket name when it starts with `@`. Without the
//! variable (not started by systemd with `Type=notify`) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use crate::mirror::worker::Stop;

/// Environment variable that names the socket systemd listens on.
pub const NOTIFY_SOCKET_VAR: &str = "NOTIFY_SOCKET";

/// A connection to systemd's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// Opens a socket for the address in `$NOTIFY_SOCKET`. Returns `None` when the variable is
    /// unset or empty, and logs a warning when it cannot be used.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os(NOTIFY_SOCKET_VAR)?;
        if value.is_empty() {
            return None;
        }
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(value.as_os_str());
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(std::path::Path::new(&value)),
        };
        let opened = address.and_then(|address| Ok((UnixDatagram::unbound()?, address)));
        match opened {
            Ok((socket, address)) => Some(Notifier { socket, address }),
            Err(e) => {
                log::warn!(
                    "{NOTIFY_SOCKET_VAR}={value:?} cannot be used: {e}; systemd is not told about readiness"
                );
                None
            }
        }
    }

    /// Sends one message of `KEY=VALUE` lines. A failure is logged, not returned: the
    /// mount serves whether or not systemd hears about it.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.address) {
            log::warn!("failed to send {message:?} to systemd's notification socket: {e}");
        }
    }
}

/// Returns the interval at which to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as systemd
/// recommends. Returns `None` when the variable is unset or invalid, or when `$WATCHDOG_PID`
/// names another process.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

/// Starts a thread that sends `WATCHDOG=1` every `interval` until `stop` is set.
pub fn spawn_watchdog(notifier: Arc<Notifier>, interval: Duration, stop: Arc<Stop>) {
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            notifier.send("WATCHDOG=1");
            while !stop.sleep(interval) {
                notifier.send("WATCHDOG=1");
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the watchdog thread: {e}; systemd will restart the service");
    }
}
