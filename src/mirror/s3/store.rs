//! Requests to the S3-compatible store, on aws-sdk-s3, for the S3 mirror and `restore`.
//!
//! The store owns a small tokio runtime and blocks on it, so its callers (the mirror worker,
//! verify, restore) stay plain threads. Timeouts, 5xx responses, SlowDown and connection
//! failures are retried here with capped backoff, a few attempts in all. Every other failure
//! is returned at once as a [`StoreError`] carrying the store's error code. Credentials come
//! from the standard AWS chain and are never logged.

mod requests;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation};
use aws_sdk_s3::config::{ResponseChecksumValidation, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;

use crate::config::S3Options;

pub use requests::{ByteRange, ObjectInfo};

/// Attempts per request before the failure goes to the caller (whose own backoff follows).
const ATTEMPTS: u32 = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Time to open a connection to the store.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one attempt of one request, body included. A journal object is at most a few
/// MiB, so this allows a slow link.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Error codes that S3 and compatible stores return for a transient condition.
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
];

/// A failed request to the store.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct StoreError {
    /// The store's error code, such as `NoSuchBucket` or `AccessDenied`.
    pub code: Option<String>,
    /// HTTP status of the response, if one came.
    pub status: Option<u16>,
    /// True for timeouts, connection failures, 5xx responses and throttling.
    pub is_retryable: bool,
    detail: String,
}

impl StoreError {
    /// Builds an error found by the mirror itself, not reported by the store.
    pub fn local(detail: String) -> StoreError {
        StoreError {
            code: None,
            status: None,
            is_retryable: false,
            detail,
        }
    }

    fn after_attempts(mut self, attempts: u32) -> StoreError {
        if attempts > 1 {
            self.detail = format!("{} (after {attempts} attempts)", self.detail);
        }
        self
    }
}

/// Turns an SDK error into a [`StoreError`], deciding whether a retry can help.
fn store_error<E>(err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (is_retryable, status) = match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let retryable = is_retryable_response(status, err.code().unwrap_or(""));
            (retryable, Some(status))
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => (true, None),
        SdkError::DispatchFailure(failure) => (!failure.is_user(), None),
        _ => (false, None),
    };
    let code = err.code().map(str::to_owned);
    let detail = match (&code, status) {
        (Some(code), Some(status)) => {
            let message = err.message().unwrap_or("no message");
            format!("{code} (HTTP {status}): {message}")
        }
        // A response without a body, such as the response to a HEAD request.
        (None, Some(status)) => format!("HTTP {status} without an error code"),
        _ => match &err {
            SdkError::TimeoutError(_) => format!("timed out after {ATTEMPT_TIMEOUT:?}"),
            _ => error_chain(&err),
        },
    };
    StoreError {
        code,
        status,
        is_retryable,
        detail,
    }
}

/// Returns true for a response that a later attempt may turn into a success: a server
/// error, throttling, or a timeout the store reports.
fn is_retryable_response(status: u16, code: &str) -> bool {
    status >= 500 || status == 429 || RETRYABLE_CODES.contains(&code)
}

/// Joins the messages of an error and its sources, leaving out a message that repeats the
/// one before it.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != last {
            text.push_str(": ");
            text.push_str(&message);
            last = message;
        }
        source = cause.source();
    }
    text
}

/// Stored bytes of an object and the CRC32C the store keeps for it, if any.
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// Base64 of the big-endian CRC32C, as in the `x-amz-checksum-crc32c` header.
    pub crc32c: Option<String>,
}

/// A bucket in an S3-compatible store.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    client: Client,
    bucket: String,
    /// Bytes of request bodies sent, retries included.
    bytes_uploaded: AtomicU64,
}

impl Store {
    /// Builds a client for `bucket`. Makes no request.
    pub fn connect(options: &S3Options, bucket: &str) -> Result<Store, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3-mirror")
            .enable_all()
            .build()
            .map_err(|e| StoreError::local(format!("cannot start the S3 client runtime: {e}")))?;

        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &options.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = runtime.block_on(loader.load());

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(options.path_style.unwrap_or_else(|| has_endpoint(options)))
            // Retries happen in `Store::retrying`, which logs them and bounds the total.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // The mirror sets the CRC32C of each object itself and checks downloads itself,
            // so that a mismatch names the object.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::enabled().build())
            .build();
        Ok(Store {
            runtime,
            client: Client::from_conf(config),
            bucket: bucket.to_string(),
            bytes_uploaded: AtomicU64::new(0),
        })
    }

    /// Lists every key below `prefix`, in the store's (ascending) order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self.retrying("list", prefix, || {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_continuation_token(token.clone());
                async move { request.send().await.map_err(store_error) }
            })?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|object| object.key().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() || page.is_truncated() != Some(true) {
                return Ok(keys);
            }
        }
    }

    /// Downloads a whole object.
    pub fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        let output = self.retrying("download", key, || {
            let request = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled);
            async move {
                let output = request.send().await.map_err(store_error)?;
                let crc32c = output.checksum_crc32_c().map(str::to_owned);
                let body = output.body.collect().await.map_err(|e| StoreError {
                    code: None,
                    status: None,
                    is_retryable: true,
                    detail: format!("reading the response body failed: {e}"),
                })?;
                Ok(Fetched {
                    bytes: body.into_bytes().to_vec(),
                    crc32c,
                })
            }
        })?;
        Ok(output)
    }

    /// Stores `body` under `key` unless the key exists, sending its CRC32C for the store to
    /// check. A key that already contains exactly `body` (an earlier attempt whose response was
    /// lost) counts as stored.
    pub fn put_new(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let crc = checksum_header(body);
        let result = self.retrying("upload", key, || {
            self.count_upload(body.len());
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .checksum_crc32_c(&crc)
                .if_none_match("*");
            async move { request.send().await.map_err(store_error) }
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(412) => self.check_existing(key, body, &crc, e),
            Err(e) => Err(e),
        }
    }

    /// Decides whether an existing object at `key` is the one `put_new` meant to store.
    fn check_existing(
        &self,
        key: &str,
        body: &[u8],
        crc: &str,
        refused: StoreError,
    ) -> Result<(), StoreError> {
        let existing = self.get(key)?;
        if existing.bytes == body {
            log::debug!("object {key} already contained the uploaded bytes; counted as stored");
            return Ok(());
        }
        Err(StoreError {
            detail: format!(
                "{refused}; the object there has other content (crc32c {}, ours {crc}); \
                 is another host writing to this prefix?",
                existing.crc32c.as_deref().unwrap_or("not stored")
            ),
            ..refused
        })
    }

    /// Runs `request` until it succeeds, fails with an error a retry cannot fix, or has made
    /// [`ATTEMPTS`] attempts.
    fn retrying<T, F, Fut>(&self, action: &str, key: &str, mut request: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 1;
        let mut first_error = None;
        loop {
            let started = Instant::now();
            let error = match self.runtime.block_on(request()) {
                Ok(value) => {
                    if let Some(first) = first_error {
                        log::warn!(
                            "S3 {action} of {key} succeeded at attempt {attempt} after a \
                             failure: {first} bucket={}",
                            self.bucket
                        );
                    }
                    return Ok(value);
                }
                Err(e) => e,
            };
            if !error.is_retryable || attempt >= ATTEMPTS {
                return Err(error.after_attempts(attempt));
            }
            // Debug only: the caller logs a request that fails for good, and the line above
            // one that succeeds after a retry.
            log::debug!(
                "S3 {action} of {key} failed after {:.1?}: {error}; retrying in {backoff:?} \
                 (attempt {attempt} of {ATTEMPTS}) bucket={}",
                started.elapsed(),
                self.bucket
            );
            first_error.get_or_insert_with(|| error.to_string());
            // A plain sleep is the backoff: the caller is a worker thread with nothing else
            // to do until the store responds.
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
            attempt += 1;
        }
    }
}

/// Returns true when requests go to an endpoint other than AWS's, given as an option or in
/// the environment variables the SDK reads.
fn has_endpoint(options: &S3Options) -> bool {
    options.endpoint.is_some()
        || std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
}

/// Returns the value of an `x-amz-checksum-crc32c` header for `body`: base64 of the
/// big-endian CRC32C.
pub fn checksum_header(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(crc32c::crc32c(body).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_responses() {
        let cases = [
            (500, "InternalError", true),
            (503, "SlowDown", true),
            (503, "", true),
            (429, "", true),
            (400, "RequestTimeout", true),
            (403, "RequestTimeTooSkewed", false),
            (403, "AccessDenied", false),
            (403, "InvalidAccessKeyId", false),
            (404, "NoSuchBucket", false),
            (400, "InvalidDigest", false),
            (412, "PreconditionFailed", false),
        ];
        for (status, code, expected) in cases {
            assert_eq!(
                is_retryable_response(status, code),
                expected,
                "{status} {code}"
            );
        }
    }

    #[test]
    fn error_chain_skips_repeats() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(Wrapper(inner));
        assert_eq!(error_chain(&outer), "wrapper: refused");
    }

    /// An error whose message is fixed and whose source is an inner error.
    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapper")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn checksum_header_known_values() {
        // CRC32C of "123456789" is 0xe3069283, the check value of the algorithm.
        assert_eq!(checksum_header(b"123456789"), "4waSgw==");
        assert_eq!(checksum_header(b""), "AAAAAA==");
    }
}
