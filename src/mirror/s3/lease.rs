//! Ownership of an S3 mirror's prefix, so that one daemon at a time stores journal objects in
//! it.
//!
//! The lease is a small JSON object at `PREFIX/.logmirror/lease.json` that names its owner
//! (host, pid, mount time, state directory, journal id) and a random token. The mirror takes
//! it at open, checks that the token there is still its own at least every
//! [`LEASE_VALIDITY`] while it stores journal objects, and removes it at a clean stop.
//! Nothing here reads or writes journal objects.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::store::{Condition, Store, StoreError};

/// Name of the lease object below the mirror's prefix.
const LEASE_NAME: &str = ".logmirror/lease.json";

/// Version written into new lease objects.
const LEASE_VERSION: u32 = 1;

/// How long a successful check of the lease lets the owner store journal objects without
/// another one, counted from the start of the check request.
pub const LEASE_VALIDITY: Duration = Duration::from_secs(5);

/// How long a new lease is left alone before it is read again, on a store without
/// conditional writes. A daemon that read "no lease" at the same moment writes its own lease
/// within this time, so the second read shows which of the two leases stayed.
pub const NEW_LEASE_WAIT: Duration = Duration::from_secs(1);

/// How long a takeover waits after writing its lease before the new owner stores anything:
/// the old owner starts no upload after its lease validity ran out, and this leaves as long
/// again for an upload it started just before.
pub const TAKEOVER_WAIT: Duration = Duration::from_secs(2 * LEASE_VALIDITY.as_secs());

/// Returns the key of the lease object of the mirror at `prefix`.
pub fn lease_key(prefix: &str) -> String {
    if prefix.is_empty() {
        LEASE_NAME.to_string()
    } else {
        format!("{prefix}/{LEASE_NAME}")
    }
}

/// Content of the lease object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub version: u32,
    /// Host name of the owner, from gethostname(2).
    pub host: String,
    pub pid: u32,
    /// Mount time in seconds since the Unix epoch.
    pub mounted_at_unix: u64,
    /// The mount time as RFC 3339 in UTC, for a person reading the object.
    pub mounted_at: String,
    pub state_dir: String,
    /// Id of the owner's local journal.
    pub journal_id: u64,
    /// Random value that distinguishes this owner's lease from any other.
    pub token: String,
}

impl LeaseRecord {
    /// Describes the owner of this process: host, pid, now, `state_dir` and `journal_id`,
    /// with a new random token.
    pub fn for_this_process(state_dir: &Path, journal_id: u64) -> std::io::Result<LeaseRecord> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(LeaseRecord {
            version: LEASE_VERSION,
            host: hostname(),
            pid: std::process::id(),
            mounted_at_unix: now,
            mounted_at: format_utc(now),
            state_dir: state_dir.display().to_string(),
            journal_id,
            token: random_hex(16)?,
        })
    }

    /// Returns the owner as shown in messages.
    pub fn describe(&self) -> String {
        format!(
            "host {} (pid {}, mounted at {}, state directory {}, journal id {:016x})",
            self.host, self.pid, self.mounted_at, self.state_dir, self.journal_id
        )
    }

    /// Returns true when `other` comes from the same state directory and journal on the same
    /// host. The state directory's lock file then proves that `other`'s daemon has stopped.
    fn is_same_owner(&self, other: &LeaseRecord) -> bool {
        self.host == other.host
            && self.state_dir == other.state_dir
            && self.journal_id == other.journal_id
    }
}

/// Way in which [`Lease::acquire`] got the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// No lease object existed.
    New,
    /// The lease was left by an earlier daemon of the same state directory and journal.
    Reclaimed { previous: String },
    /// Another owner's lease was replaced because of `takeover=true`.
    TakenOver { previous: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the prefix is owned by {owner}")]
    Held { owner: String },
    #[error("the lease object now names {owner}")]
    Lost { owner: String },
    #[error("request for lease object {key} failed")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot create a lease token: {0}")]
    Token(std::io::Error),
}

/// The lease this mirror holds on its prefix.
pub struct Lease {
    key: String,
    record: LeaseRecord,
    /// Start of the last check that found this lease's token, if any.
    confirmed_at: Option<Instant>,
}

impl Lease {
    /// Takes the lease of `prefix` for `owner`.
    ///
    /// A lease of another owner is an error unless `takeover` is set. A lease left by the
    /// same state directory and journal on this host is reclaimed without `takeover`. The
    /// lease is written with `If-None-Match: *` or `If-Match`, which only some stores honor,
    /// and then read back, so that of two daemons racing for it, the one that wrote first
    /// learns that it lost.
    pub fn acquire(
        store: &Store,
        prefix: &str,
        owner: LeaseRecord,
        takeover: bool,
    ) -> Result<(Lease, Acquired), LeaseError> {
        let key = lease_key(prefix);
        let store_error = |source| LeaseError::Store {
            key: key.clone(),
            source,
        };
        // NOTE: a lease never expires, so a crashed owner's lease moves only with takeover.
        let existing = store.get_if_exists(&key).map_err(store_error)?;
        let (condition_etag, acquired) = match &existing {
            None => (None, Acquired::New),
            Some(fetched) => {
                let previous = parse(&fetched.bytes);
                let acquired = match &previous {
                    Ok(record) if record.is_same_owner(&owner) => Acquired::Reclaimed {
                        previous: record.describe(),
                    },
                    Ok(record) if takeover => Acquired::TakenOver {
                        previous: record.describe(),
                    },
                    Ok(record) => {
                        return Err(LeaseError::Held {
                            owner: record.describe(),
                        });
                    }
                    Err(reason) if takeover => Acquired::TakenOver {
                        previous: format!("an unreadable lease object ({reason})"),
                    },
                    Err(reason) => {
                        return Err(LeaseError::Held {
                            owner: format!("an unknown owner (unreadable lease object: {reason})"),
                        });
                    }
                };
                (Some(fetched.etag.clone().unwrap_or_default()), acquired)
            }
        };

        let condition = match &condition_etag {
            None => Condition::Absent,
            Some(etag) if etag.is_empty() => Condition::Always,
            Some(etag) => Condition::Matches(etag),
        };
        let body = serde_json::to_vec_pretty(&owner).expect("a lease record serializes");
        match store.put(&key, &body, condition) {
            Ok(_) => {}
            // The lease changed between the read and the write: another daemon took it.
            Err(e) if e.status == Some(412) || e.status == Some(409) => {
                return Err(LeaseError::Held {
                    owner: current_owner(store, &key)?,
                });
            }
            Err(e) => return Err(store_error(e)),
        }

        let mut lease = Lease {
            key,
            record: owner,
            confirmed_at: None,
        };
        lease.check(store).map_err(|e| match e {
            LeaseError::Lost { owner } => LeaseError::Held { owner },
            other => other,
        })?;
        Ok((lease, acquired))
    }

    /// Checks the lease unless a check that started less than `max_age` ago found it.
    pub fn check_if_older(&mut self, store: &Store, max_age: Duration) -> Result<(), LeaseError> {
        match self.confirmed_at {
            Some(at) if at.elapsed() < max_age => Ok(()),
            _ => self.check(store),
        }
    }

    /// Checks that the lease object still carries this lease's token.
    pub fn check(&mut self, store: &Store) -> Result<(), LeaseError> {
        let started = Instant::now();
        let fetched = store
            .get_if_exists(&self.key)
            .map_err(|source| LeaseError::Store {
                key: self.key.clone(),
                source,
            })?;
        let Some(fetched) = fetched else {
            return Err(LeaseError::Lost {
                owner: "nobody (the lease object was removed)".into(),
            });
        };
        match parse(&fetched.bytes) {
            Ok(record) if record.token == self.record.token => {
                self.confirmed_at = Some(started);
                Ok(())
            }
            Ok(record) => Err(LeaseError::Lost {
                owner: record.describe(),
            }),
            Err(reason) => Err(LeaseError::Lost {
                owner: format!("an unknown owner (unreadable lease object: {reason})"),
            }),
        }
    }

    /// Removes the lease object if it still carries this lease's token. Returns false when
    /// another owner holds the lease now, which is then left alone.
    pub fn release(&self, store: &Store) -> Result<bool, LeaseError> {
        let store_error = |source| LeaseError::Store {
            key: self.key.clone(),
            source,
        };
        let Some(fetched) = store.get_if_exists(&self.key).map_err(store_error)? else {
            return Ok(false);
        };
        if parse(&fetched.bytes).map(|r| r.token) != Ok(self.record.token.clone()) {
            return Ok(false);
        }
        let condition = match &fetched.etag {
            Some(etag) => Condition::Matches(etag),
            None => Condition::Always,
        };
        store.delete(&self.key, condition).map_err(store_error)?;
        Ok(true)
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Reads the lease object again and describes its owner, for a lease lost in a race.
fn current_owner(store: &Store, key: &str) -> Result<String, LeaseError> {
    let fetched = store
        .get_if_exists(key)
        .map_err(|source| LeaseError::Store {
            key: key.to_string(),
            source,
        })?;
    Ok(match fetched.map(|f| parse(&f.bytes)) {
        Some(Ok(record)) => record.describe(),
        Some(Err(reason)) => format!("an unknown owner (unreadable lease object: {reason})"),
        None => "another daemon, which removed the lease again".into(),
    })
}

fn parse(bytes: &[u8]) -> Result<LeaseRecord, String> {
    let record: LeaseRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.version != LEASE_VERSION {
        return Err(format!(
            "lease version {}, expected {LEASE_VERSION}",
            record.version
        ));
    }
    Ok(record)
}

/// Returns this host's name, or `unknown` when gethostname fails.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Returns `bytes` random bytes from the kernel as lowercase hex.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Formats seconds since the Unix epoch as RFC 3339 in UTC, as in `2024-05-01T12:00:00Z`.
pub fn format_utc(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let seconds_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), counting in
/// 400-year eras of 146097 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_utc_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn lease_key_under_prefix() {
        assert_eq!(lease_key("web1"), "web1/.logmirror/lease.json");
        assert_eq!(lease_key(""), ".logmirror/lease.json");
    }

    #[test]
    fn record_round_trip_and_owner() {
        let record = LeaseRecord::for_this_process(Path::new("/var/state"), 7).unwrap();
        assert_eq!(record.token.len(), 32);
        let bytes = serde_json::to_vec(&record).unwrap();
        assert_eq!(parse(&bytes), Ok(record.clone()));

        let mut restarted = LeaseRecord::for_this_process(Path::new("/var/state"), 7).unwrap();
        restarted.pid += 1;
        assert!(record.is_same_owner(&restarted));
        assert_ne!(record.token, restarted.token);
        let other_state = LeaseRecord::for_this_process(Path::new("/other"), 7).unwrap();
        assert!(!record.is_same_owner(&other_state));
        let other_journal = LeaseRecord::for_this_process(Path::new("/var/state"), 8).unwrap();
        assert!(!record.is_same_owner(&other_journal));

        let described = record.describe();
        assert!(
            described.contains(&format!("pid {}", record.pid)),
            "{described}"
        );
        assert!(described.contains(&record.mounted_at), "{described}");
        assert!(parse(b"{\"version\": 1}").is_err());
    }
}
