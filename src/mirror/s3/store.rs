//! Requests to the S3-compatible store, on aws-sdk-s3, for the S3 mirror and `restore`.
//!
//! The store owns a small tokio runtime and blocks on it, so its callers (the mirror worker,
//! verify, restore) stay plain threads. Timeouts, 5xx responses, SlowDown and connection
//! failures are retried here with capped backoff, a few attempts in all. Every other failure
//! is returned at once as a [`StoreError`] carrying the store's error code. Credentials come
//! from the standard AWS chain and are never logged. Plain http goes only to a loopback
//! host unless `allow_http=true`, and https is checked against `ca_file` or the system roots.

mod direct;
#[cfg(test)]
pub mod fake;
mod protection;
mod requests;

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region, RequestChecksumCalculation, SharedHttpClient};
use aws_sdk_s3::config::{ResponseChecksumValidation, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{RetentionLock, S3Options};

use direct::DirectPut;
use protection::{content_md5, lock_mode_header, to_date_time, with_sse, with_sse_c};

pub use protection::{Encryption, retain_until};
pub use requests::{ByteRange, ObjectInfo};

/// Attempts per request before the failure goes to the caller (whose own backoff follows).
const ATTEMPTS: u32 = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Minimum time between two runs of [`Store::tend_connections`].
const CONNECTION_TENDING_INTERVAL: Duration = Duration::from_secs(1);
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

    /// Adds the endpoint and, after retries, the number of attempts to the message.
    fn finish(mut self, attempts: u32, endpoint: &str) -> StoreError {
        self.detail = if attempts > 1 {
            format!(
                "{} (endpoint {endpoint}, after {attempts} attempts)",
                self.detail
            )
        } else {
            format!("{} (endpoint {endpoint})", self.detail)
        };
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
        // A certificate the trust store rejects stays rejected, however often it is retried.
        SdkError::DispatchFailure(_) if is_certificate_error(&err) => (false, None),
        SdkError::DispatchFailure(failure) => (!failure.is_user(), None),
        _ => (false, None),
    };
    let code = err.code().map(str::to_owned);
    let detail = match status {
        Some(status) => response_detail(code.as_deref(), status, err.message()),
        None => match &err {
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

/// Returns the message of an error response: `Code (HTTP status): Message`, or, for a
/// response without an error document (such as the response to a HEAD request), the status.
fn response_detail(code: Option<&str>, status: u16, message: Option<&str>) -> String {
    match code {
        Some(code) => format!(
            "{code} (HTTP {status}): {}",
            message.unwrap_or("no message")
        ),
        None => format!("HTTP {status} without an error code"),
    }
}

/// Returns true when a TLS certificate check failed somewhere in the error's sources.
///
/// The connector layers between the SDK and rustls box their causes, so rustls's error
/// cannot be reached by downcasting. Its message is matched instead: rustls 0.23 prints
/// `Error::InvalidCertificate` as "invalid peer certificate: REASON".
fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    error_chain(err).contains("invalid peer certificate")
}

/// Returns true for a response that a later attempt may turn into a success: a server
/// error, throttling, or a timeout the store reports.
fn is_retryable_response(status: u16, code: &str) -> bool {
    // 501 Not Implemented names a request the store does not support, which stays so.
    (status >= 500 && status != 501) || status == 429 || RETRYABLE_CODES.contains(&code)
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

/// Stored bytes of an object, its ETag and the CRC32C the store keeps for it, if any.
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// Base64 of the big-endian CRC32C, as in the `x-amz-checksum-crc32c` header.
    pub crc32c: Option<String>,
    /// ETag of the version downloaded, for a later `If-Match`.
    pub etag: Option<String>,
}

/// Precondition sent with a PUT or DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition<'a> {
    /// No precondition.
    Always,
    /// Only when the key does not exist: `If-None-Match: *`.
    Absent,
    /// Only when the object there has this ETag: `If-Match`.
    Matches(&'a str),
}

/// Outcome of [`Store::put_new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object is stored, by this call or by an earlier attempt whose response was lost.
    Stored,
    /// The key already contains an object with other content; nothing was stored.
    Taken,
}

/// Store behavior toward preconditions and checksums, as measured by [`Store::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// A second PUT with `If-None-Match: *` to an existing key failed with 412.
    pub conditional_writes: bool,
    /// A PUT whose `x-amz-checksum-crc32c` did not match its body was rejected.
    pub checksums_verified: bool,
}

/// Body of the probe objects.
const PROBE_BODY: &[u8] = b"logmirror probe object; safe to delete\n";

/// A bucket in an S3-compatible store.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    client: Client,
    /// PUTs sent without the SDK's pipeline, when the store has an explicit endpoint.
    direct: Option<DirectPut>,
    /// When [`Store::tend_connections`] last ran.
    connections_tended: std::sync::Mutex<Instant>,
    bucket: String,
    /// Endpoint the requests go to, as shown in messages.
    endpoint: String,
    /// Whether PUTs carry `If-None-Match` and `If-Match`. Cleared when the probe finds a
    /// store that rejects requests with those headers.
    sends_conditions: bool,
    /// Whether uploads carry the SHA-256 of their body in the signature. Cleared when the
    /// probe finds that the store checks `x-amz-checksum-crc32c`, which then protects the
    /// body instead, without hashing it a second time.
    signs_payload: bool,
    /// Bytes of request bodies sent, retries included.
    bytes_uploaded: AtomicU64,
    /// Server-side encryption of `sse=`, sent with every request that needs it.
    encryption: Option<Encryption>,
    /// Object Lock retention of `retention_lock=`, put on objects stored with `put_new`.
    lock: Option<RetentionLock>,
    /// In unit tests, an in-process bucket that serves the history requests (list, get,
    /// put, delete) in place of the SDK client.
    #[cfg(test)]
    fake: Option<std::sync::Arc<dyn fake::Requests>>,
}

impl Store {
    /// Builds a client for `bucket` and checks the transport of its endpoint. Makes no
    /// request.
    pub fn connect(options: &S3Options, bucket: &str) -> Result<Store, StoreError> {
        // A current-thread runtime: the calling thread drives the connection itself, which
        // saves two thread hand-offs per request over a runtime with its own worker.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::local(format!("cannot start the S3 client runtime: {e}")))?;

        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &options.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(path) = &options.ca_file {
            loader = loader.http_client(https_client(path)?);
        }
        let shared = runtime.block_on(loader.load());
        // A region from the environment or a profile file is not checked like `region=`, and
        // a control character in it makes the signer panic.
        if let Some(region) = shared.region()
            && !crate::config::is_valid_region(region.as_ref())
        {
            return Err(StoreError::local(format!(
                "the AWS region {:?} from AWS_REGION or the profile is invalid: {}; fix it or \
                 give region=",
                region.as_ref(),
                crate::config::REGION_FORM
            )));
        }

        // The endpoint may come from the option, the environment or a profile file. One from
        // the environment or a profile gets the checks of `endpoint=` here, so that a password
        // in it is never shown and never sent in the Host header.
        let from_environment = match std::env::var("AWS_ENDPOINT_URL_S3") {
            Ok(url) => Some(("AWS_ENDPOINT_URL_S3", url)),
            Err(_) => shared.endpoint_url().map(|url| {
                (
                    "AWS_ENDPOINT_URL or the profile's endpoint_url",
                    url.to_owned(),
                )
            }),
        };
        let endpoint = match (&options.endpoint, from_environment) {
            (Some(url), _) => Some(url.clone()),
            (None, Some((source, url))) => {
                Some(crate::config::check_endpoint(&url).map_err(|e| {
                    StoreError::local(format!("the endpoint from {source} is invalid: {e}"))
                })?)
            }
            (None, None) => None,
        };
        if let Some(url) = &endpoint {
            crate::config::check_endpoint_transport(url, options.allow_http)
                .map_err(|e| StoreError::local(e.to_string()))?;
        }

        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        // Both request paths take the checked provider, so that a malformed key is an error
        // and not a panic in the signer.
        let credentials = shared
            .credentials_provider()
            .map(|provider| SharedCredentialsProvider::new(CheckedCredentials(provider)));
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        config.set_credentials_provider(credentials.clone());
        let path_style = options.path_style.unwrap_or_else(|| has_endpoint(options));
        let mut config = config
            .force_path_style(path_style)
            // Retries happen in `Store::retrying`, which logs them and bounds the total.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            // The mirror sets the CRC32C of each object itself and checks downloads itself,
            // so that a mismatch names the object.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .stalled_stream_protection(StalledStreamProtectionConfig::enabled().build());
        // NOTE: every request goes to this one endpoint, with no failover to other nodes.
        let request_endpoint = endpoint.as_deref().map(with_path_slash);
        if let Some(url) = &request_endpoint {
            config = config.endpoint_url(url);
        }
        let direct = match (&request_endpoint, shared.region(), credentials) {
            (Some(url), Some(region), Some(provider)) => {
                let address = BucketAddress {
                    endpoint: url,
                    bucket,
                    path_style,
                    region: region.as_ref(),
                    use_fips: shared.use_fips().unwrap_or(false),
                    use_dual_stack: shared.use_dual_stack().unwrap_or(false),
                };
                let (bucket_url, signing_region) = runtime.block_on(address.resolve())?;
                Some(DirectPut::new(
                    &bucket_url,
                    signing_region,
                    provider,
                    tls_config(options.ca_file.as_deref())?,
                )?)
            }
            _ => None,
        };
        let shown_endpoint = endpoint.unwrap_or_else(|| {
            let region = shared.region().map_or("(no region)", |r| r.as_ref());
            format!("AWS's endpoint for region {region}")
        });
        Ok(Store {
            runtime,
            client: Client::from_conf(config.build()),
            direct,
            connections_tended: std::sync::Mutex::new(Instant::now()),
            bucket: bucket.to_string(),
            endpoint: shown_endpoint,
            sends_conditions: true,
            signs_payload: true,
            bytes_uploaded: AtomicU64::new(0),
            encryption: Encryption::from_options(options)?,
            lock: options.retention_lock(),
            #[cfg(test)]
            fake: None,
        })
    }

    /// Builds a store whose history requests go to `fake`, with the encryption and Object
    /// Lock settings of `options`. Only the SDK client of the readable copies stays unused.
    #[cfg(test)]
    pub fn with_fake(
        fake: std::sync::Arc<dyn fake::Requests>,
        options: &S3Options,
    ) -> Result<Store, StoreError> {
        let mut store = Store::for_tests("http://127.0.0.1:9", options)?;
        store.fake = Some(fake);
        Ok(store)
    }

    /// Returns the store with its PUTs sent through the SDK, as for AWS's own endpoint.
    #[cfg(test)]
    pub fn without_direct_puts(mut self) -> Store {
        self.direct = None;
        self
    }

    /// Builds a store for the plain http `endpoint` on loopback with fixed test
    /// credentials and the settings of `options`. Reads no AWS configuration, so no request
    /// goes anywhere else.
    #[cfg(test)]
    pub fn for_tests(endpoint: &str, options: &S3Options) -> Result<Store, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::local(e.to_string()))?;
        let credentials =
            aws_sdk_s3::config::Credentials::new("test-key", "test-secret", None, None, "tests");
        let address = BucketAddress {
            endpoint,
            bucket: "test-bucket",
            path_style: true,
            region: "test",
            use_fips: false,
            use_dual_stack: false,
        };
        let (bucket_url, signing_region) = runtime.block_on(address.resolve())?;
        let direct = DirectPut::new(
            &bucket_url,
            signing_region,
            aws_credential_types::provider::SharedCredentialsProvider::new(credentials.clone()),
            tls_config(None)?,
        )?;
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("test"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            .retry_config(RetryConfig::disabled())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Store {
            runtime,
            client: Client::from_conf(config),
            direct: Some(direct),
            connections_tended: std::sync::Mutex::new(Instant::now()),
            bucket: "test-bucket".into(),
            endpoint: endpoint.into(),
            sends_conditions: true,
            signs_payload: true,
            bytes_uploaded: AtomicU64::new(0),
            encryption: Encryption::from_options(options)?,
            lock: options.retention_lock(),
            fake: None,
        })
    }

    /// Returns the server-side encryption sent with the requests, if any.
    pub fn encryption(&self) -> Option<&Encryption> {
        self.encryption.as_ref()
    }

    /// Returns the Object Lock retention put on journal objects and snapshots, if any.
    pub fn retention_lock(&self) -> Option<RetentionLock> {
        self.lock
    }

    /// Returns the endpoint the requests go to, for messages and status.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Lists every key below `prefix`, in the store's (ascending) order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.list_after(prefix, None, None)
    }

    /// Lists the keys below `prefix` that sort after `start_after`, in ascending order,
    /// stopping after `limit` keys when a limit is given.
    pub fn list_after(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<String>, StoreError> {
        let objects = self.list_infos(prefix, start_after, limit)?;
        Ok(objects.into_iter().map(|object| object.key).collect())
    }

    /// Lists the objects below `prefix` after `start_after`, in key order, with size and
    /// ETag, stopping after `limit` objects when a limit is given.
    fn list_infos(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            let mut objects = fake.list(prefix, start_after)?;
            objects.truncate(limit.unwrap_or(usize::MAX));
            return Ok(objects);
        }
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page_size = limit.map(|n| i32::try_from(n - objects.len()).unwrap_or(i32::MAX));
            let page = self.retrying("list", prefix, || {
                let request = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(prefix)
                    .set_start_after(start_after.map(str::to_owned))
                    .set_max_keys(page_size)
                    .set_continuation_token(token.clone());
                async move { request.send().await.map_err(store_error) }
            })?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                objects.push(ObjectInfo {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: object.e_tag().unwrap_or_default().to_string(),
                    crc32c: None,
                    modified_unix: object.last_modified().map(|t| t.secs()),
                });
            }
            if let Some(limit) = limit.filter(|n| objects.len() >= *n) {
                objects.truncate(limit);
                return Ok(objects);
            }
            token = page.next_continuation_token().map(str::to_owned);
            if token.is_none() || page.is_truncated() != Some(true) {
                return Ok(objects);
            }
        }
    }

    /// Downloads a whole object.
    pub fn get(&self, key: &str) -> Result<Fetched, StoreError> {
        self.get_object(key, None)
    }

    /// Downloads the first `len` bytes of an object (fewer when it is shorter).
    pub fn get_start(&self, key: &str, len: usize) -> Result<Vec<u8>, StoreError> {
        let range = format!("bytes=0-{}", len.saturating_sub(1));
        Ok(self.get_object(key, Some(range))?.bytes)
    }

    /// Downloads an object, or `None` when the key does not exist. A missing bucket is an
    /// error.
    pub fn get_if_exists(&self, key: &str) -> Result<Option<Fetched>, StoreError> {
        match self.get(key) {
            Ok(fetched) => Ok(Some(fetched)),
            Err(e) if is_missing_key(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get_object(&self, key: &str, range: Option<String>) -> Result<Fetched, StoreError> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return fake.get(key, range.as_deref());
        }
        self.retrying("download", key, || {
            let request = self.client.get_object().bucket(&self.bucket).key(key);
            let mut request = with_sse_c!(request, self.encryption.as_ref());
            // A checksum covers the whole object, so a range is downloaded without one.
            request = match &range {
                Some(range) => request.range(range),
                None => request.checksum_mode(ChecksumMode::Enabled),
            };
            async move {
                let output = request.send().await.map_err(store_error)?;
                let crc32c = output.checksum_crc32_c().map(str::to_owned);
                let etag = output.e_tag().map(str::to_owned);
                let body = output.body.collect().await.map_err(|e| StoreError {
                    code: None,
                    status: None,
                    is_retryable: true,
                    detail: format!("reading the response body failed: {e}"),
                })?;
                Ok(Fetched {
                    bytes: body.into_bytes().to_vec(),
                    crc32c,
                    etag,
                })
            }
        })
    }

    /// Runs the kept-alive connections for a moment, at most once per
    /// [`CONNECTION_TENDING_INTERVAL`], so that they notice when the store closed them. On
    /// the current-thread runtime they run only while a request is in flight. Without this,
    /// the first request after a long pause could go out on a connection the store had
    /// closed and wait for a retry.
    pub fn tend_connections(&self) {
        {
            let mut last = self.connections_tended.lock().expect("tending lock");
            if last.elapsed() < CONNECTION_TENDING_INTERVAL {
                return;
            }
            *last = Instant::now();
        }
        // The timer must be made inside the runtime, so inside the async block.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(1)).await });
    }

    /// Stores `body` under `key` with its CRC32C and the precondition `condition`, which is
    /// left out when the store rejects preconditions. Returns the new ETag, if the store
    /// sent one. A precondition that fails is an error with status 412.
    pub fn put(
        &self,
        key: &str,
        body: &[u8],
        condition: Condition<'_>,
    ) -> Result<Option<String>, StoreError> {
        self.put_checked(key, body, condition, None)
    }

    /// Stores `body` under `key` with its CRC32C, `condition` and the Object Lock `lock`.
    fn put_checked(
        &self,
        key: &str,
        body: &[u8],
        condition: Condition<'_>,
        lock: Option<(crate::config::LockMode, SystemTime)>,
    ) -> Result<Option<String>, StoreError> {
        let crc = checksum_header(body);
        let request = PutRequest {
            key,
            body,
            crc: &crc,
            condition,
            lock,
        };
        Ok(self.put_request(&request)?.etag)
    }

    /// Sends a PUT, leaving out its precondition when the store rejects preconditions.
    fn put_request(&self, put: &PutRequest<'_>) -> Result<PutResponse, StoreError> {
        let PutRequest {
            key,
            body,
            crc,
            condition,
            lock,
        } = *put;
        let condition = if self.sends_conditions {
            condition
        } else {
            Condition::Always
        };
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            let request = PutRequest { condition, ..*put };
            return fake.put(&request, self.encryption.as_ref());
        }
        if let Some(direct) = &self.direct {
            return self.retrying("upload", key, || {
                self.count_upload(body.len());
                async move {
                    let encryption = self.encryption.as_ref();
                    let sent = direct
                        .put(put, condition, encryption, self.signs_payload)
                        .await;
                    if sent.as_ref().is_err_and(|e| e.status == Some(403)) {
                        direct.forget_credentials();
                    }
                    sent
                }
            });
        }
        let output = self.retrying("upload", key, || {
            self.count_upload(body.len());
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from(body.to_vec()))
                .checksum_crc32_c(crc);
            request = with_sse!(request, self.encryption.as_ref());
            // S3 requires Content-MD5 (or an SDK checksum algorithm header) on a PUT with a
            // retention; Content-MD5 is the form every S3 version with Object Lock accepts.
            if let Some((mode, until)) = lock {
                request = request
                    .object_lock_mode(lock_mode_header(mode))
                    .object_lock_retain_until_date(to_date_time(until))
                    .content_md5(content_md5(body));
            }
            request = match condition {
                Condition::Always => request,
                Condition::Absent => request.if_none_match("*"),
                Condition::Matches(etag) => request.if_match(etag),
            };
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
        let sse_echo = output
            .sse_customer_algorithm()
            .map(str::to_owned)
            .or_else(|| {
                output
                    .server_side_encryption()
                    .map(|s| s.as_str().to_owned())
            });
        Ok(PutResponse {
            etag: output.e_tag().map(str::to_owned),
            sse_echo,
        })
    }

    /// Stores `body` under `key` unless the key exists, sending its CRC32C for the store to
    /// check. A key that already contains exactly `body` (an earlier attempt whose response
    /// was lost) counts as stored.
    ///
    /// `If-None-Match: *` makes a store that honors it refuse an existing key. On a store that
    /// ignores it, the caller must check that the key is free before calling.
    ///
    /// With `retention_lock=`, the object is locked until that many days from now.
    pub fn put_new(&self, key: &str, body: &[u8]) -> Result<PutOutcome, StoreError> {
        match self.put_history(key, body, Condition::Absent) {
            Ok(_) => Ok(PutOutcome::Stored),
            Err(e) if e.status == Some(412) => {
                let existing = self.get(key)?;
                if existing.bytes == body {
                    log::debug!(
                        "object {key} already contained the uploaded bytes; counted as stored"
                    );
                    return Ok(PutOutcome::Stored);
                }
                Ok(PutOutcome::Taken)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores the history object `body` under `key` with its CRC32C and `condition`, and
    /// with `retention_lock=`, locked until that many days from now. Returns the new ETag.
    pub fn put_history(
        &self,
        key: &str,
        body: &[u8],
        condition: Condition<'_>,
    ) -> Result<Option<String>, StoreError> {
        let lock = self
            .lock
            .map(|lock| (lock.mode, retain_until(lock, SystemTime::now())));
        self.put_checked(key, body, condition, lock)
    }

    /// Deletes `key` under the precondition `condition` (left out when the store rejects
    /// preconditions). A missing key counts as deleted.
    pub fn delete(&self, key: &str, condition: Condition<'_>) -> Result<(), StoreError> {
        let condition = if self.sends_conditions {
            condition
        } else {
            Condition::Always
        };
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return fake.delete(key, condition);
        }
        let result = self.retrying("delete", key, || {
            let mut request = self.client.delete_object().bucket(&self.bucket).key(key);
            if let Condition::Matches(etag) = condition {
                request = request.if_match(etag);
            }
            async move { request.send().await.map_err(store_error) }
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_missing_key(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Measures whether the store honors `If-None-Match: *` and checks `x-amz-checksum-crc32c`,
    /// with two probe objects at `key` and `key` + `.crc`. With `remove`, it deletes them
    /// again; without, they stay, for credentials that may not delete.
    ///
    /// A store that rejects a PUT with `If-None-Match` outright (HTTP 501) counts as without
    /// conditional writes, and later PUTs leave the header out.
    pub fn probe(&mut self, key: &str, remove: bool) -> Result<Capabilities, StoreError> {
        let conditional_writes = self.probe_conditional(key);
        let removed = match remove {
            true => self.delete(key, Condition::Always),
            false => Ok(()),
        };
        let conditional_writes = conditional_writes?;
        removed?;

        let crc_key = format!("{key}.crc");
        let wrong_crc = checksum_header(b"not the probe body");
        // If-None-Match keeps this a creation, which an append-only policy allows.
        let request = PutRequest {
            key: &crc_key,
            body: PROBE_BODY,
            crc: &wrong_crc,
            condition: Condition::Absent,
            lock: None,
        };
        let checksums_verified = match self.put_request(&request) {
            Ok(_) => {
                if remove {
                    self.delete(&crc_key, Condition::Always)?;
                }
                false
            }
            Err(e) if e.status == Some(400) => true,
            Err(e) => return Err(e),
        };
        self.signs_payload = !checksums_verified;
        Ok(Capabilities {
            conditional_writes,
            checksums_verified,
        })
    }

    /// Checks that the bucket has Object Lock enabled, as `retention_lock=` needs. Returns
    /// the reason when it does not.
    pub fn check_object_lock(&self) -> Result<Result<(), String>, StoreError> {
        #[cfg(test)]
        if let Some(fake) = &self.fake {
            return Ok(match fake.object_lock_enabled()? {
                true => Ok(()),
                false => Err("the bucket has no Object Lock configuration".into()),
            });
        }
        let result = self.retrying("Object Lock configuration of", &self.bucket, || {
            let request = self
                .client
                .get_object_lock_configuration()
                .bucket(&self.bucket);
            async move { request.send().await.map_err(store_error) }
        });
        let output = match result {
            Ok(output) => output,
            Err(e) if e.status == Some(501) || e.code.as_deref() == Some("NotImplemented") => {
                return Ok(Err(format!(
                    "the store does not implement Object Lock: {e}"
                )));
            }
            Err(e) if e.code.as_deref() == Some("ObjectLockConfigurationNotFoundError") => {
                return Ok(Err(format!(
                    "the bucket was created without Object Lock: {e}"
                )));
            }
            Err(e) => return Err(e),
        };
        let enabled = output
            .object_lock_configuration()
            .and_then(|c| c.object_lock_enabled())
            .is_some_and(|e| e.as_str() == "Enabled");
        Ok(match enabled {
            true => Ok(()),
            false => Err("the bucket's Object Lock configuration is not enabled".into()),
        })
    }

    /// Stores a probe object at `key` with the requested encryption and checks that the
    /// store confirms it in its response. Returns the reason when it does not. With
    /// `remove`, the probe object is deleted again.
    pub fn check_encryption(
        &self,
        key: &str,
        remove: bool,
    ) -> Result<Result<(), String>, StoreError> {
        let Some(encryption) = &self.encryption else {
            return Ok(Ok(()));
        };
        let crc = checksum_header(PROBE_BODY);
        let request = PutRequest {
            key,
            body: PROBE_BODY,
            crc: &crc,
            condition: Condition::Absent,
            lock: None,
        };
        let response = self.put_request(&request)?;
        if remove {
            self.delete(key, Condition::Always)?;
        }
        let expected = encryption.expected_echo();
        Ok(match response.sse_echo.as_deref() {
            Some(echo) if echo == expected => Ok(()),
            Some(echo) => Err(format!(
                "the store answered an upload with {} by applying {echo:?}, not {expected:?}",
                encryption.option_text()
            )),
            None => Err(format!(
                "the store accepted an upload with {} but did not confirm the encryption in \
                 its response, so it most likely ignored it",
                encryption.option_text()
            )),
        })
    }

    fn probe_conditional(&mut self, key: &str) -> Result<bool, StoreError> {
        match self.put(key, PROBE_BODY, Condition::Absent) {
            Ok(_) => {}
            Err(e) if e.status == Some(501) || e.code.as_deref() == Some("NotImplemented") => {
                log::debug!("the store rejects If-None-Match ({e}); PUTs leave it out");
                self.sends_conditions = false;
                self.put(key, PROBE_BODY, Condition::Always)?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        match self.put(key, PROBE_BODY, Condition::Absent) {
            Ok(_) => Ok(false),
            // S3 returns 409 for a conditional PUT that races another one on the key.
            Err(e) if e.status == Some(412) || e.status == Some(409) => Ok(true),
            Err(e) => Err(e),
        }
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
                             failure: {first} bucket={} endpoint={}",
                            self.bucket,
                            self.endpoint
                        );
                    }
                    return Ok(value);
                }
                Err(e) => e,
            };
            if !error.is_retryable || attempt >= ATTEMPTS {
                return Err(error.finish(attempt, &self.endpoint));
            }
            // Debug only: the caller logs a request that fails for good, and the line above
            // one that succeeds after a retry.
            log::debug!(
                "S3 {action} of {key} failed after {:.1?}: {error}; retrying in {backoff:?} \
                 (attempt {attempt} of {ATTEMPTS}) bucket={} endpoint={}",
                started.elapsed(),
                self.bucket,
                self.endpoint
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

/// One PUT of [`Store::put_request`].
#[derive(Clone, Copy, Debug)]
pub struct PutRequest<'a> {
    pub key: &'a str,
    pub body: &'a [u8],
    /// Value of `x-amz-checksum-crc32c`.
    pub crc: &'a str,
    pub condition: Condition<'a>,
    /// Object Lock mode and retain-until date, if the object is locked.
    pub lock: Option<(crate::config::LockMode, SystemTime)>,
}

/// What [`Store::put_request`] reads from the response.
#[derive(Clone, Debug, Default)]
pub struct PutResponse {
    pub etag: Option<String>,
    /// `x-amz-server-side-encryption-customer-algorithm` or, without it,
    /// `x-amz-server-side-encryption`.
    pub sse_echo: Option<String>,
}

/// Returns true for a 404 about the key, not about the bucket.
fn is_missing_key(error: &StoreError) -> bool {
    error.status == Some(404) && matches!(error.code.as_deref(), None | Some("NoSuchKey"))
}

/// Builds an HTTPS client that trusts only the certificate authorities in the PEM file
/// `path`.
fn https_client(path: &Path) -> Result<SharedHttpClient, StoreError> {
    let pem = read_ca_file(path).map_err(|reason| {
        StoreError::local(format!("ca_file {path:?} cannot be used: {reason}"))
    })?;
    let trust = TrustStore::empty().with_pem_certificate(pem);
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| StoreError::local(format!("ca_file {path:?} cannot be used: {e}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// Returns the endpoint `url` with a `/` at the end of its path, if it has a path. The SDK's
/// endpoint rules (aws-sdk-s3 1.96) append the bucket to the path as given, so that
/// `http://proxy/s3` would address bucket `s3logs` in place of `s3/logs`.
fn with_path_slash(url: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let has_path = url[authority_start..].contains('/');
    if has_path && !url.ends_with('/') {
        format!("{url}/")
    } else {
        url.to_owned()
    }
}

/// A credentials provider that rejects credentials the signer cannot put in a header.
///
/// The access key ID goes into the `Authorization` header and a session token into
/// `x-amz-security-token`. A control character in either, such as the carriage return that a
/// credentials file with Windows line endings leaves at the end, makes the signer of both
/// request paths panic (aws-sigv4 1.3 and aws-runtime 1.5 unwrap the header value).
#[derive(Debug)]
struct CheckedCredentials(SharedCredentialsProvider);

impl ProvideCredentials for CheckedCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let credentials = self.0.provide_credentials().await?;
            let fields = [
                ("access key ID", Some(credentials.access_key_id())),
                ("session token", credentials.session_token()),
            ];
            for (name, value) in fields {
                let Some(value) = value else { continue };
                if let Some((at, byte)) = value
                    .bytes()
                    .enumerate()
                    .find(|&(_, b)| (b < 0x20 && b != b'\t') || b == 0x7f)
                {
                    return Err(provider::error::CredentialsError::invalid_configuration(
                        format!(
                            "the AWS {name} contains the control character 0x{byte:02X} at \
                             byte {at}, often a carriage return left by a file with Windows \
                             line endings; remove it from the environment or credentials file"
                        ),
                    ));
                }
            }
            Ok(credentials)
        })
    }
}

/// What decides the URL of a bucket: the inputs of the SDK's endpoint rules that apply to a
/// store at an explicit endpoint.
struct BucketAddress<'a> {
    endpoint: &'a str,
    bucket: &'a str,
    path_style: bool,
    region: &'a str,
    use_fips: bool,
    use_dual_stack: bool,
}

impl BucketAddress<'_> {
    /// Returns the URL of the bucket and the region to sign for, as the SDK's endpoint
    /// rules give them, so that [`DirectPut`] sends its PUTs where the SDK sends the other
    /// requests. The rules keep the bucket in the path, even with `path_style=false`, for an
    /// endpoint that is an IP address and for a bucket name that is not a valid host name.
    async fn resolve(&self) -> Result<(String, String), StoreError> {
        use aws_sdk_s3::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};

        let failed = |reason: String| {
            StoreError::local(format!(
                "cannot build the URL of bucket {} at endpoint {:?}: {reason}; \
                 check endpoint=, path_style=, AWS_USE_FIPS_ENDPOINT and \
                 AWS_USE_DUALSTACK_ENDPOINT",
                self.bucket, self.endpoint
            ))
        };
        let params = Params::builder()
            .bucket(self.bucket)
            .region(self.region)
            .endpoint(self.endpoint)
            .force_path_style(self.path_style)
            .use_fips(self.use_fips)
            .use_dual_stack(self.use_dual_stack)
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let resolved = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .map_err(|e| failed(error_chain(e.as_ref())))?;
        // The rules name the region to sign for; it differs from the configured one only for
        // AWS's global endpoint.
        let signing_region = resolved
            .properties()
            .get("authSchemes")
            .and_then(|schemes| schemes.as_array())
            .and_then(|schemes| schemes.first())
            .and_then(|scheme| scheme.as_object())
            .and_then(|scheme| scheme.get("signingRegion"))
            .and_then(|region| region.as_string())
            .unwrap_or(self.region);
        Ok((resolved.url().to_owned(), signing_region.to_owned()))
    }
}

/// Builds the TLS settings of [`DirectPut`]: trust in the certificate authorities of the
/// PEM file `ca_file`, or else in the system's.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = read_ca_file(path).map_err(|reason| {
                StoreError::local(format!("ca_file {path:?} cannot be used: {reason}"))
            })?;
            for certificate in CertificateDer::pem_slice_iter(&pem).flatten() {
                roots.add(certificate).map_err(|e| {
                    StoreError::local(format!("ca_file {path:?} cannot be used: {e}"))
                })?;
            }
        }
        None => {
            // Unreadable system certificates are skipped, as the SDK's client does.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::local(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Reads a PEM file of CA certificates and checks that it contains at least one, and that each
/// can serve as a trust anchor.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("no CERTIFICATE block found; give a PEM file of CA certificates".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in certificates.into_iter().enumerate() {
        roots
            .add(certificate)
            .map_err(|e| format!("certificate {} is not usable as a CA: {e}", index + 1))?;
    }
    Ok(pem)
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

    /// Returns the bucket URL and signing region of `bucket` at `endpoint`.
    fn resolved(endpoint: &str, bucket: &str, path_style: bool) -> (String, String) {
        let address = BucketAddress {
            endpoint,
            bucket,
            path_style,
            region: "garage",
            use_fips: false,
            use_dual_stack: false,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(address.resolve()).expect("resolved")
    }

    #[test]
    fn bucket_address_as_the_sdk_gives_it() {
        let cases = [
            (
                "http://127.0.0.1:3900",
                "logs",
                true,
                "http://127.0.0.1:3900/logs",
            ),
            (
                "http://127.0.0.1:3900/",
                "logs",
                true,
                "http://127.0.0.1:3900/logs",
            ),
            // An IP address has no subdomains, so the bucket stays in the path.
            (
                "http://127.0.0.1:3900",
                "logs",
                false,
                "http://127.0.0.1:3900/logs",
            ),
            ("http://[::1]:3900", "logs", false, "http://[::1]:3900/logs"),
            (
                "https://s3.example.com",
                "logs",
                false,
                "https://logs.s3.example.com",
            ),
            (
                "https://s3.example.com",
                "logs",
                true,
                "https://s3.example.com/logs",
            ),
            // A path before the bucket stays a path segment of its own.
            (
                "http://127.0.0.1:3900/s3",
                "logs",
                true,
                "http://127.0.0.1:3900/s3/logs",
            ),
            (
                "http://127.0.0.1:3900/s3/",
                "logs",
                true,
                "http://127.0.0.1:3900/s3/logs",
            ),
            // A name that is not a host name label also stays in the path.
            (
                "https://s3.example.com",
                "my.logs",
                false,
                "https://s3.example.com/my.logs",
            ),
        ];
        for (endpoint, bucket, path_style, url) in cases {
            let (got, region) = resolved(&with_path_slash(endpoint), bucket, path_style);
            assert_eq!(got, url, "{endpoint} {bucket} path_style={path_style}");
            assert_eq!(region, "garage");
        }
    }

    #[test]
    fn retryable_responses() {
        let cases = [
            (500, "InternalError", true),
            (503, "SlowDown", true),
            (503, "", true),
            (501, "NotImplemented", false),
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
    fn certificate_errors_found_in_chain() {
        let rejected = std::io::Error::other(Wrapper(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        )));
        assert!(is_certificate_error(&rejected));
        let refused = std::io::Error::other(Wrapper(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert!(!is_certificate_error(&refused));
    }

    #[test]
    fn checksum_header_known_values() {
        // CRC32C of "123456789" is 0xe3069283, the check value of the algorithm.
        assert_eq!(checksum_header(b"123456789"), "4waSgw==");
        assert_eq!(checksum_header(b""), "AAAAAA==");
    }
}
