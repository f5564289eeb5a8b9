//! Requests for the readable copies: HEAD, listing with sizes, PUT with metadata, multipart
//! uploads with parts copied from an existing object, server-side copy and DELETE.
//!
//! Each request is retried as [`Store::retrying`] does. Every request body sent, retries
//! included, is added to the store's count of bytes uploaded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::protection::{with_sse, with_sse_c, with_sse_c_source};
use super::{Store, StoreError, checksum_header, store_error};

/// Name of the user metadata that contains the CRC32C of a copy's content, as 8 lowercase hex
/// digits. S3 sends it as the `x-amz-meta-crc32c` header.
pub const CRC_METADATA: &str = "crc32c";

/// Time for one attempt of a server-side copy, which may move up to 5 GiB inside the store.
const COPY_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// Size, ETag and metadata of an object, as a HEAD request or a listing returns them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// The object's ETag, quotes included, as conditional requests take it.
    pub etag: String,
    /// The CRC32C from the object's `crc32c` metadata; `None` when absent or not 8 hex
    /// digits. Listings leave it `None`, because they carry no metadata.
    pub crc32c: Option<u32>,
    /// Last-Modified in seconds since the Unix epoch, from a listing; `None` from HEAD.
    pub modified_unix: Option<i64>,
}

/// Returns the value of the `crc32c` metadata for a CRC32C.
pub fn crc_metadata(crc: u32) -> String {
    format!("{crc:08x}")
}

/// Parses the value of the `crc32c` metadata.
pub fn parse_crc_metadata(value: &str) -> Option<u32> {
    let is_hex = value.len() == 8 && value.bytes().all(|b| b.is_ascii_hexdigit());
    is_hex
        .then(|| u32::from_str_radix(value, 16).ok())
        .flatten()
}

/// Returns the `x-amz-copy-source` value for `key` in `bucket`: the key is percent-encoded
/// except for unreserved characters and `/`, as the header requires.
pub fn copy_source(bucket: &str, key: &str) -> String {
    format!("{bucket}/{}", encode_key(key))
}

/// Percent-encodes `key` for a URL path or header: every byte except unreserved characters
/// and `/`.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A byte range of an object, end excluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl Store {
    /// Returns the bytes of request bodies sent to the store so far, retries included.
    pub fn bytes_uploaded(&self) -> u64 {
        self.bytes_uploaded.load(Ordering::Relaxed)
    }

    pub(super) fn count_upload(&self, bytes: usize) {
        self.bytes_uploaded
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Returns size, ETag and `crc32c` metadata of the object at `key`, or `None` when
    /// there is none.
    pub fn head(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let result = self.retrying("HEAD", key, || {
            let request = self.client.head_object().bucket(&self.bucket).key(key);
            let request = with_sse_c!(request, self.encryption.as_ref());
            async move { request.send().await.map_err(store_error) }
        });
        let output = match result {
            Ok(output) => output,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let crc32c = output
            .metadata()
            .and_then(|m| m.get(CRC_METADATA))
            .and_then(|value| parse_crc_metadata(value));
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: output.content_length().unwrap_or(0).max(0) as u64,
            etag: output.e_tag().unwrap_or_default().to_string(),
            crc32c,
            modified_unix: None,
        }))
    }

    /// Lists every object below `prefix` with its size and ETag, in key order.
    pub fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.list_infos(prefix, None, None)
    }

    /// Stores `body` at `key`, replacing any object there, with `crc` as its `crc32c`
    /// metadata and as the checksum the store verifies. Returns the new ETag.
    pub fn put_copy(&self, key: &str, body: &[u8], crc: u32) -> Result<String, StoreError> {
        let checksum = checksum_header(body);
        let output = self.retrying("upload", key, || {
            self.count_upload(body.len());
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .checksum_crc32_c(&checksum)
                .metadata(CRC_METADATA, crc_metadata(crc));
            let request = with_sse!(request, self.encryption.as_ref());
            async move { request.send().await.map_err(store_error) }
        })?;
        Ok(output.e_tag().unwrap_or_default().to_string())
    }

    /// Starts a multipart upload to `key` whose object gets `crc`, if given, as its `crc32c`
    /// metadata. Returns the upload id.
    pub fn create_multipart(&self, key: &str, crc: Option<u32>) -> Result<String, StoreError> {
        let output = self.retrying("multipart start of", key, || {
            let mut request = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key);
            if let Some(crc) = crc {
                request = request.metadata(CRC_METADATA, crc_metadata(crc));
            }
            let request = with_sse!(request, self.encryption.as_ref());
            async move { request.send().await.map_err(store_error) }
        })?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::local(format!("no upload id for {key} in the response")))
    }

    /// Uploads part `number` of a multipart upload from `body`. Returns the part's ETag.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: &[u8],
    ) -> Result<String, StoreError> {
        let output = self.retrying("part upload of", key, || {
            self.count_upload(body.len());
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body.to_vec()));
            let request = with_sse_c!(request, self.encryption.as_ref());
            let signs_payload = self.signs_payload;
            async move {
                let sent = if signs_payload {
                    request.send().await
                } else {
                    request.customize().disable_payload_signing().send().await
                };
                sent.map_err(store_error)
            }
        })?;
        Ok(output.e_tag().unwrap_or_default().to_string())
    }

    /// Makes `range` of the object at `source` part `number` of a multipart upload, inside
    /// the store, provided the source still has ETag `source_etag`. Returns the part's ETag.
    pub fn upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        source: &str,
        source_etag: &str,
        range: ByteRange,
    ) -> Result<String, StoreError> {
        let copy_source = copy_source(&self.bucket, source);
        let range_header = format!("bytes={}-{}", range.start, range.end - 1);
        let output = self.retrying("part copy of", key, || {
            let request = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .copy_source(&copy_source)
                .copy_source_if_match(source_etag)
                .copy_source_range(&range_header);
            let request = with_sse_c!(request, self.encryption.as_ref());
            let request = with_sse_c_source!(request, self.encryption.as_ref())
                .customize()
                .config_override(long_attempts());
            async move { request.send().await.map_err(store_error) }
        })?;
        let etag = output.copy_part_result().and_then(|r| r.e_tag());
        Ok(etag.unwrap_or_default().to_string())
    }

    /// Completes a multipart upload from its parts' numbers and ETags. Returns the ETag of
    /// the new object.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<String, StoreError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(number, etag)| {
                        CompletedPart::builder()
                            .part_number(*number)
                            .e_tag(etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let output = self.retrying("multipart completion of", key, || {
            let request = self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(completed.clone());
            let request = with_sse_c!(request, self.encryption.as_ref())
                .customize()
                .config_override(long_attempts());
            async move { request.send().await.map_err(store_error) }
        })?;
        Ok(output.e_tag().unwrap_or_default().to_string())
    }

    /// Abandons a multipart upload, so the store drops its parts.
    pub fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.retrying("multipart abort of", key, || {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id);
            async move { request.send().await.map_err(store_error) }
        })?;
        Ok(())
    }

    /// Copies the object at `source` (of at most 5 GiB) to `key` inside the store, metadata
    /// included. Returns the new ETag.
    pub fn copy_object(&self, source: &str, key: &str) -> Result<String, StoreError> {
        let copy_source = copy_source(&self.bucket, source);
        let output = self.retrying("copy to", key, || {
            let request = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(key)
                .copy_source(&copy_source);
            let request = with_sse!(request, self.encryption.as_ref());
            let request = with_sse_c_source!(request, self.encryption.as_ref())
                .customize()
                .config_override(long_attempts());
            async move { request.send().await.map_err(store_error) }
        })?;
        let etag = output.copy_object_result().and_then(|r| r.e_tag());
        Ok(etag.unwrap_or_default().to_string())
    }
}

/// Returns a configuration change that allows [`COPY_ATTEMPT_TIMEOUT`] per attempt.
fn long_attempts() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .operation_attempt_timeout(COPY_ATTEMPT_TIMEOUT)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_encodes_key() {
        assert_eq!(
            copy_source("logs", "host1/a b+%#\u{e9}/x~y_z-1.log"),
            "logs/host1/a%20b%2B%25%23%C3%A9/x~y_z-1.log"
        );
    }

    #[test]
    fn crc_metadata_round_trip() {
        assert_eq!(crc_metadata(0xe306_9283), "e3069283");
        assert_eq!(crc_metadata(1), "00000001");
        assert_eq!(parse_crc_metadata("e3069283"), Some(0xe306_9283));
        assert_eq!(parse_crc_metadata("E3069283"), Some(0xe306_9283));
        assert_eq!(parse_crc_metadata("e306928"), None);
        assert_eq!(parse_crc_metadata("+3069283"), None);
        assert_eq!(parse_crc_metadata("e3069283 "), None);
    }
}
