//! An in-process bucket for unit tests of the history requests (list, get, put, delete),
//! which enforces the rules of an append-only bucket policy and of S3 Object Lock.
//!
//! The append-only rules are those of the policy in `docs/SECURITY.md`: below
//! `PREFIX/.logmirror/`, except the lease object, a PUT must carry `If-None-Match: *` and a
//! DELETE is refused, both with `AccessDenied`. The Object Lock rules are S3's: a PUT with a
//! retention needs a bucket with Object Lock and a date in the future, and a DELETE of an
//! object before its date is refused, as S3 refuses deleting a locked version. The bucket
//! keeps no versions, so it does not model S3's delete markers. Never used outside
//! `#[cfg(test)]`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::LockMode;

use super::{Condition, Encryption, Fetched, ObjectInfo, PutRequest, PutResponse, StoreError};

/// The requests a [`super::Store`] sends for the history, served in place of the SDK.
pub trait Requests: Send + Sync {
    fn put(
        &self,
        request: &PutRequest<'_>,
        encryption: Option<&Encryption>,
    ) -> Result<PutResponse, StoreError>;
    /// Returns the object, or its first bytes for `range` as in `bytes=0-N`.
    fn get(&self, key: &str, range: Option<&str>) -> Result<Fetched, StoreError>;
    fn delete(&self, key: &str, condition: Condition<'_>) -> Result<(), StoreError>;
    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>, StoreError>;
    fn object_lock_enabled(&self) -> Result<bool, StoreError>;
}

/// One stored object.
#[derive(Clone, Debug)]
pub struct FakeObject {
    pub bytes: Vec<u8>,
    pub etag: String,
    pub modified: SystemTime,
    /// Object Lock mode and retain-until date sent with the PUT.
    pub lock: Option<(LockMode, SystemTime)>,
    /// `Encryption::option_text` of the encryption sent with the PUT.
    pub encryption: Option<&'static str>,
}

/// Rules the fake bucket enforces.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Enforce the append-only policy below `PREFIX/.logmirror/` for this prefix.
    pub append_only: Option<String>,
    /// The bucket was created with Object Lock.
    pub object_lock: bool,
    /// Responses confirm the requested encryption, as AWS does.
    pub confirms_encryption: bool,
    /// PUTs ignore `If-None-Match` and `If-Match`, as Garage 2.5.0 does; the append-only
    /// rule still checks that the header was sent.
    pub ignores_conditions: bool,
}

/// An in-process bucket.
#[derive(Debug, Default)]
pub struct FakeBucket {
    pub rules: Rules,
    pub objects: Mutex<BTreeMap<String, FakeObject>>,
    /// Requests refused, as `METHOD key: code`.
    pub refused: Mutex<Vec<String>>,
    /// Number of ETags handed out, for unique ETags.
    etags: Mutex<u64>,
}

impl FakeBucket {
    pub fn new(rules: Rules) -> FakeBucket {
        FakeBucket {
            rules,
            ..FakeBucket::default()
        }
    }

    /// Moves every object's upload time and lock date `by` into the past, as if that much
    /// time had passed.
    pub fn age(&self, by: Duration) {
        for object in self.objects.lock().unwrap().values_mut() {
            object.modified -= by;
            if let Some((_, until)) = &mut object.lock {
                *until -= by;
            }
        }
    }

    /// Returns the keys below `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let objects = self.objects.lock().unwrap();
        objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Returns true when `key` lies in the append-only part of the bucket.
    fn is_append_only(&self, key: &str) -> bool {
        let Some(prefix) = &self.rules.append_only else {
            return false;
        };
        let history = match prefix.is_empty() {
            true => ".logmirror/".to_string(),
            false => format!("{prefix}/.logmirror/"),
        };
        key.starts_with(&history) && key != format!("{history}lease.json")
    }

    fn refuse(&self, method: &str, key: &str, status: u16, code: &str) -> StoreError {
        self.refused
            .lock()
            .unwrap()
            .push(format!("{method} {key}: {code}"));
        StoreError {
            code: Some(code.to_string()),
            status: Some(status),
            is_retryable: false,
            detail: format!("{code} (HTTP {status}): refused by the fake bucket"),
        }
    }
}

impl Requests for FakeBucket {
    fn put(
        &self,
        request: &PutRequest<'_>,
        encryption: Option<&Encryption>,
    ) -> Result<PutResponse, StoreError> {
        let key = request.key;
        if self.is_append_only(key) && request.condition != Condition::Absent {
            return Err(self.refuse("PUT", key, 403, "AccessDenied"));
        }
        if super::checksum_header(request.body) != request.crc {
            return Err(self.refuse("PUT", key, 400, "BadDigest"));
        }
        if let Some((_, until)) = request.lock {
            if !self.rules.object_lock {
                return Err(self.refuse("PUT", key, 400, "InvalidRequest"));
            }
            if until <= SystemTime::now() {
                return Err(self.refuse("PUT", key, 400, "InvalidArgument"));
            }
        }
        let mut objects = self.objects.lock().unwrap();
        let existing = objects.get(key);
        let condition = match self.rules.ignores_conditions {
            true => Condition::Always,
            false => request.condition,
        };
        match (condition, existing) {
            (Condition::Absent, Some(_)) => {
                return Err(self.refuse("PUT", key, 412, "PreconditionFailed"));
            }
            (Condition::Matches(etag), Some(object)) if object.etag != etag => {
                return Err(self.refuse("PUT", key, 412, "PreconditionFailed"));
            }
            (Condition::Matches(_), None) => {
                return Err(self.refuse("PUT", key, 404, "NoSuchKey"));
            }
            _ => {}
        }
        let etag = {
            let mut count = self.etags.lock().unwrap();
            *count += 1;
            format!("\"{:08x}{:08x}\"", crc32c::crc32c(request.body), *count)
        };
        objects.insert(
            key.to_string(),
            FakeObject {
                bytes: request.body.to_vec(),
                etag: etag.clone(),
                modified: SystemTime::now(),
                lock: request.lock,
                encryption: encryption.map(Encryption::option_text),
            },
        );
        let sse_echo = encryption
            .filter(|_| self.rules.confirms_encryption)
            .map(|e| e.expected_echo().to_string());
        Ok(PutResponse {
            etag: Some(etag),
            sse_echo,
        })
    }

    fn get(&self, key: &str, range: Option<&str>) -> Result<Fetched, StoreError> {
        let objects = self.objects.lock().unwrap();
        let Some(object) = objects.get(key) else {
            return Err(self.refuse("GET", key, 404, "NoSuchKey"));
        };
        let end = range
            .and_then(|r| r.strip_prefix("bytes=0-"))
            .and_then(|last| last.parse::<usize>().ok())
            .map_or(object.bytes.len(), |last| {
                (last + 1).min(object.bytes.len())
            });
        Ok(Fetched {
            bytes: object.bytes[..end].to_vec(),
            crc32c: range
                .is_none()
                .then(|| super::checksum_header(&object.bytes)),
            etag: Some(object.etag.clone()),
        })
    }

    fn delete(&self, key: &str, condition: Condition<'_>) -> Result<(), StoreError> {
        if self.is_append_only(key) {
            return Err(self.refuse("DELETE", key, 403, "AccessDenied"));
        }
        let mut objects = self.objects.lock().unwrap();
        let Some(object) = objects.get(key) else {
            return Ok(());
        };
        if let Condition::Matches(etag) = condition
            && object.etag != etag
        {
            return Err(self.refuse("DELETE", key, 412, "PreconditionFailed"));
        }
        if object
            .lock
            .is_some_and(|(_, until)| until > SystemTime::now())
        {
            return Err(self.refuse("DELETE", key, 403, "AccessDenied"));
        }
        objects.remove(key);
        Ok(())
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>, StoreError> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|after| k.as_str() > after))
            .map(|(key, object)| ObjectInfo {
                key: key.clone(),
                size: object.bytes.len() as u64,
                etag: object.etag.clone(),
                crc32c: None,
                modified_unix: object
                    .modified
                    .duration_since(UNIX_EPOCH)
                    .ok()
                    .and_then(|d| i64::try_from(d.as_secs()).ok()),
            })
            .collect())
    }

    fn object_lock_enabled(&self) -> Result<bool, StoreError> {
        Ok(self.rules.object_lock)
    }
}
