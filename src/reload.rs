//! Reloading the configuration on SIGHUP, beside the data path. The daemon reads the config
//! file and the `-o` options again and applies the keys that can change while mounted. It
//! names the others at warn level, and they keep their old values until the next mount.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{self, MountConfig};

/// Origin of the configuration (config file and `-o` options), kept to build it again.
#[derive(Clone, Debug)]
pub struct Source {
    pub config_file: Option<PathBuf>,
    pub options: Vec<String>,
}

/// Keys that a reload applies to the running daemon.
pub const LIVE_KEYS: &[&str] = &["drain_timeout"];

/// Settings of the running daemon that a reload changes.
pub struct Live {
    drain_timeout: Mutex<Duration>,
}

impl Live {
    pub fn new(config: &MountConfig) -> Live {
        Live {
            drain_timeout: Mutex::new(config.drain_timeout),
        }
    }

    pub fn drain_timeout(&self) -> Duration {
        *self.drain_timeout.lock().expect("drain_timeout lock")
    }
}

/// Returns the keys whose values differ between `old` and `new`, with both values as text.
/// Backing directory and mount point come from the command line and cannot differ.
pub fn changed_keys(old: &MountConfig, new: &MountConfig) -> Vec<(&'static str, String, String)> {
    // NOTE: sync_timeout, flush_interval, when_full, verify_interval and repair are read once
    // at mount by the acks, the filesystem and the periodic thread, so they need a remount.
    let fields: [(&'static str, String, String); 20] = [
        (
            "mirror",
            debug(&(&old.mirrors, &old.mirror_names)),
            debug(&(&new.mirrors, &new.mirror_names)),
        ),
        ("rule", debug(&old.rules), debug(&new.rules)),
        (crate::config::S3_KEYS, debug(&old.s3), debug(&new.s3)),
        ("mode", debug(&old.mode), debug(&new.mode)),
        ("ack", debug(&old.ack), debug(&new.ack)),
        ("state", debug(&old.state_dir), debug(&new.state_dir)),
        (
            "max_backlog",
            debug(&old.max_backlog_bytes),
            debug(&new.max_backlog_bytes),
        ),
        ("when_full", debug(&old.when_full), debug(&new.when_full)),
        (
            "on_mirror_failure",
            debug(&old.on_mirror_failure),
            debug(&new.on_mirror_failure),
        ),
        (
            "sync_timeout",
            debug(&old.sync_timeout),
            debug(&new.sync_timeout),
        ),
        (
            "drain_timeout",
            debug(&old.drain_timeout),
            debug(&new.drain_timeout),
        ),
        (
            "flush_interval",
            debug(&old.flush_interval),
            debug(&new.flush_interval),
        ),
        (
            "segment_size",
            debug(&old.segment_size_bytes),
            debug(&new.segment_size_bytes),
        ),
        ("log_file", debug(&old.log_file), debug(&new.log_file)),
        ("threads", debug(&old.threads), debug(&new.threads)),
        (
            "kernel flags",
            debug(&old.kernel_options),
            debug(&new.kernel_options),
        ),
        ("retention", debug(&old.retention), debug(&new.retention)),
        (
            "verify_interval, repair",
            debug(&(old.verify_interval, old.repair)),
            debug(&(new.verify_interval, new.repair)),
        ),
        ("metrics", debug(&old.metrics), debug(&new.metrics)),
        (
            "passthrough",
            debug(&old.passthrough),
            debug(&new.passthrough),
        ),
    ];
    fields
        .into_iter()
        .filter(|(_, before, after)| before != after)
        .collect()
}

fn debug(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}")
}

/// Builds the configuration again from `source`, applies the live keys to `live`, and logs
/// what changed. Returns the configuration now in effect, which becomes the base of the next
/// reload; on an invalid file it logs the error and keeps `current`.
pub fn reload(current: &MountConfig, source: &Source, live: &Live) -> MountConfig {
    let built = config::build(
        &current.backing,
        &current.mountpoint,
        source.config_file.as_deref(),
        &source.options,
    );
    let new = match built {
        Ok(new) => new,
        Err(e) => {
            log::error!(
                "SIGHUP: configuration not reloaded, keeping the current one: {}",
                crate::mirror::worker::error_chain(&e)
            );
            return current.clone();
        }
    };
    let changes = changed_keys(current, &new);
    if changes.is_empty() {
        log::info!("SIGHUP: configuration reloaded, nothing changed");
        return current.clone();
    }

    let mut in_effect = current.clone();
    let mut ignored = Vec::new();
    for (key, before, after) in changes {
        if LIVE_KEYS.contains(&key) {
            log::info!("SIGHUP: {key} changed from {before} to {after}");
        } else {
            ignored.push(key);
        }
    }
    if new.drain_timeout != current.drain_timeout {
        *live.drain_timeout.lock().expect("drain_timeout lock") = new.drain_timeout;
        in_effect.drain_timeout = new.drain_timeout;
    }
    if !ignored.is_empty() {
        log::warn!(
            "SIGHUP: {} changed but cannot change while mounted; the old values stay until the next mount",
            ignored.join(", ")
        );
    }
    in_effect
}
