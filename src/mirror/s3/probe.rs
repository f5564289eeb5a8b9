//! The probe at mount: what the store does with preconditions and checksums, and whether it
//! supports the Object Lock and server-side encryption that the options request. Its objects go
//! below `PREFIX/.logmirror/` and are removed again unless `history=append-only` is set.

use log::{debug, info, warn};

use crate::config::{History, STATE_DIR_NAME};
use crate::mirror::Error;

use super::lease::{self, LEASE_VALIDITY, TAKEOVER_WAIT};
use super::store::{Capabilities, Store, StoreError};

/// Measures the store's handling of preconditions and checksums with probe objects below
/// the prefix, checks that it supports the Object Lock and encryption that the options request,
/// and logs the result. With `history=append-only` the probe objects stay in the bucket.
pub fn probe(
    store: &mut Store,
    prefix: &str,
    name: &str,
    history: History,
) -> Result<Capabilities, Error> {
    let token = lease::random_hex(8).map_err(|e| Error::Setup {
        mirror: name.to_string(),
        reason: format!("cannot create a probe key: {e}"),
    })?;
    let key = if prefix.is_empty() {
        format!("{STATE_DIR_NAME}/probe-{token}")
    } else {
        format!("{prefix}/{STATE_DIR_NAME}/probe-{token}")
    };

    let remove = history == History::Managed;
    let history_dir = key.rsplit_once('/').map_or("", |(dir, _)| dir);
    let probe_error = |key: &str, source| probe_error(name, key, history_dir, remove, source);
    let capabilities = store
        .probe(&key, remove)
        .map_err(|source| probe_error(&key, source))?;
    if !remove {
        // NOTE: with history=append-only every mount leaves its probe objects behind.
        debug!("mirror {name}: history=append-only, so the probe objects {key}* stay");
    }
    check_protection(store, &key, name, remove).map_err(|e| match e {
        Protection::Store { key, source } => probe_error(&key, source),
        Protection::Missing(e) => e,
    })?;

    info!(
        "mirror {name}: endpoint={} conditional_writes={} checksums={}",
        store.endpoint(),
        if capabilities.conditional_writes {
            "yes"
        } else {
            "no"
        },
        checksums_text(capabilities)
    );
    if !capabilities.conditional_writes {
        warn!(
            "mirror {name}: the store ignores If-None-Match, so it cannot refuse a second \
             writer by itself; falling back to a read-after-write lease, read again after a \
             pause when taken and confirmed every {}s; a takeover while an upload of the old \
             owner hangs for more than {}s can let both store an object",
            LEASE_VALIDITY.as_secs(),
            (TAKEOVER_WAIT - LEASE_VALIDITY).as_secs()
        );
    }
    if !capabilities.checksums_verified {
        warn!(
            "mirror {name}: the store ignores x-amz-checksum-crc32c; an object damaged on the \
             way is found only when verify or restore checks its records"
        );
    }
    Ok(capabilities)
}

/// Returns how the store treats `x-amz-checksum-crc32c`, as status shows it.
pub fn checksums_text(capabilities: Capabilities) -> &'static str {
    if capabilities.checksums_verified {
        "verified"
    } else {
        "ignored"
    }
}

/// Failure of [`check_protection`].
enum Protection {
    /// A request failed.
    Store { key: String, source: StoreError },
    /// The store lacks a feature that an option requires.
    Missing(Error),
}

/// Checks that the store provides the Object Lock of `retention_lock=` and confirms the
/// encryption of `sse=`, the latter with a probe object at `key` + `.sse`.
fn check_protection(store: &Store, key: &str, name: &str, remove: bool) -> Result<(), Protection> {
    if let Some(lock) = store.retention_lock() {
        let supported = store
            .check_object_lock()
            .map_err(|source| Protection::Store {
                key: key.to_string(),
                source,
            })?;
        if let Err(reason) = supported {
            return Err(Protection::Missing(Error::Setup {
                mirror: name.to_string(),
                reason: format!(
                    "retention_lock={} needs S3 Object Lock, which the store at {} does not \
                     provide: {reason}. Use a bucket created with Object Lock enabled, or \
                     remove retention_lock",
                    lock.days,
                    store.endpoint()
                ),
            }));
        }
    }
    let sse_key = format!("{key}.sse");
    let confirmed =
        store
            .check_encryption(&sse_key, remove)
            .map_err(|source| Protection::Store {
                key: sse_key.clone(),
                source,
            })?;
    if let Err(reason) = confirmed {
        return Err(Protection::Missing(Error::Setup {
            mirror: name.to_string(),
            reason: format!(
                "{reason} (store at {}). Remove the sse option, or use a store that \
                 supports it",
                store.endpoint()
            ),
        }));
    }
    Ok(())
}

/// Turns a failed probe request into the mount's error. An AccessDenied names the rights a
/// mount needs, and with `history=managed` the option for a key that may not delete.
fn probe_error(
    name: &str,
    key: &str,
    history_dir: &str,
    remove: bool,
    source: StoreError,
) -> Error {
    if source.code.as_deref() != Some("AccessDenied") {
        return Error::Store {
            mirror: name.to_string(),
            action: "probe with",
            key: key.to_string(),
            source: Box::new(source),
        };
    }
    let hint = match remove {
        true => "; with a key that may create but not delete objects, set history=append-only",
        false => "",
    };
    Error::Setup {
        mirror: name.to_string(),
        reason: format!(
            "the store refused the probe with {key}: {source}. A mount needs rights to list, \
             read and create objects below {history_dir}/{hint}; the least privilege per use \
             is in docs/SECURITY.md"
        ),
    }
}
