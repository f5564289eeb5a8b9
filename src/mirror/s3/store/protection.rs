//! Server-side encryption and Object Lock settings of the store's requests.
//!
//! [`Encryption`] turns the `sse=` options into the headers each request needs: SSE-S3 and
//! SSE-KMS on uploads only, SSE-C on every request that reads or writes an object's bytes,
//! the source of a copy included. [`Store::put_new`](super::Store::put_new) adds the
//! retention of [`RetentionLock`] to each journal object and snapshot. The SSE-C key is kept
//! here and never logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};

use crate::config::{self, LockMode, RetentionLock, S3Options, SseKind};

use super::StoreError;

/// Server-side encryption requested on every request that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Encryption {
    pub kind: SseKind,
    /// KMS key for [`SseKind::Kms`]; `None` uses the account's AWS managed key.
    pub kms_key_id: Option<String>,
    /// Base64 of the SSE-C key and of its MD5, for [`SseKind::Customer`].
    customer: Option<(String, String)>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryption")
            .field("kind", &self.kind)
            .field("kms_key_id", &self.kms_key_id)
            .field("customer_key", &self.customer.as_ref().map(|_| "hidden"))
            .finish()
    }
}

impl Encryption {
    /// Builds the settings of `sse=`, reading the SSE-C key file. Returns `None` without
    /// `sse=`.
    pub fn from_options(options: &S3Options) -> Result<Option<Encryption>, StoreError> {
        let Some(kind) = options.sse else {
            return Ok(None);
        };
        let customer = match (kind, &options.sse_c_key) {
            (SseKind::Customer, Some(path)) => {
                let key =
                    config::read_sse_c_key(path).map_err(|e| StoreError::local(e.to_string()))?;
                Some(customer_headers(&key.0))
            }
            (SseKind::Customer, None) => {
                return Err(StoreError::local(
                    "sse=c needs sse_c_key=/path, a file with the 256-bit key".into(),
                ));
            }
            _ => None,
        };
        Ok(Some(Encryption {
            kind,
            kms_key_id: options.sse_kms_key_id.clone(),
            customer,
        }))
    }

    /// Returns base64 of the SSE-C key and of its MD5, for [`SseKind::Customer`].
    pub fn customer_key(&self) -> Option<(&str, &str)> {
        self.customer
            .as_ref()
            .map(|(k, m)| (k.as_str(), m.as_str()))
    }

    /// Returns the value of `x-amz-server-side-encryption` (SSE-S3, SSE-KMS) or of
    /// `x-amz-server-side-encryption-customer-algorithm` (SSE-C) that a store which applied
    /// the encryption sends back.
    pub fn expected_echo(&self) -> &'static str {
        match self.kind {
            SseKind::Aes256 | SseKind::Customer => "AES256",
            SseKind::Kms => "aws:kms",
        }
    }

    /// Returns the option value, as in messages.
    pub fn option_text(&self) -> &'static str {
        match self.kind {
            SseKind::Aes256 => "sse=aes256",
            SseKind::Kms => "sse=aws:kms",
            SseKind::Customer => "sse=c",
        }
    }
}

/// Returns base64 of `key` and base64 of its MD5, as the SSE-C headers carry them.
fn customer_headers(key: &[u8; 32]) -> (String, String) {
    (aws_smithy_types::base64::encode(key), content_md5(key))
}

/// Returns the value of a `Content-MD5` header for `body`: base64 of its MD5.
pub fn content_md5(body: &[u8]) -> String {
    aws_smithy_types::base64::encode(Md5::digest(body).as_slice())
}

/// Returns the date until which an object uploaded at `now` stays locked.
pub fn retain_until(lock: RetentionLock, now: SystemTime) -> SystemTime {
    now + Duration::from_secs(u64::from(lock.days) * 86_400)
}

/// Returns the `x-amz-object-lock-mode` value of `mode`.
pub fn lock_mode_header(mode: LockMode) -> aws_sdk_s3::types::ObjectLockMode {
    match mode {
        LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
        LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
    }
}

/// Converts a time to the SDK's date type, whole seconds since the Unix epoch.
pub fn to_date_time(time: SystemTime) -> aws_smithy_types::DateTime {
    let seconds = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    aws_smithy_types::DateTime::from_secs(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// Adds the encryption headers of an upload (PutObject, CreateMultipartUpload, CopyObject
/// target) to a request builder.
macro_rules! with_sse {
    ($request:expr, $encryption:expr) => {{
        let mut request = $request;
        if let Some(encryption) = $encryption {
            use aws_sdk_s3::types::ServerSideEncryption;
            use $crate::config::SseKind;
            request = match encryption.kind {
                SseKind::Aes256 => request.server_side_encryption(ServerSideEncryption::Aes256),
                SseKind::Kms => request
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .set_ssekms_key_id(encryption.kms_key_id.clone()),
                SseKind::Customer => request,
            };
            if let Some((key, md5)) = encryption.customer_key() {
                request = request
                    .sse_customer_algorithm("AES256")
                    .sse_customer_key(key)
                    .sse_customer_key_md5(md5);
            }
        }
        request
    }};
}

/// Adds the SSE-C headers to a request that reads an object or uploads a part; SSE-S3 and
/// SSE-KMS need nothing there.
macro_rules! with_sse_c {
    ($request:expr, $encryption:expr) => {{
        let mut request = $request;
        if let Some((key, md5)) = $encryption.and_then(|e| e.customer_key()) {
            request = request
                .sse_customer_algorithm("AES256")
                .sse_customer_key(key)
                .sse_customer_key_md5(md5);
        }
        request
    }};
}

/// Adds the SSE-C headers of a copy's source object to a CopyObject or UploadPartCopy.
macro_rules! with_sse_c_source {
    ($request:expr, $encryption:expr) => {{
        let mut request = $request;
        if let Some((key, md5)) = $encryption.and_then(|e| e.customer_key()) {
            request = request
                .copy_source_sse_customer_algorithm("AES256")
                .copy_source_sse_customer_key(key)
                .copy_source_sse_customer_key_md5(md5);
        }
        request
    }};
}

pub(crate) use {with_sse, with_sse_c, with_sse_c_source};

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::super::{Condition, Store};
    use super::*;

    /// Request line and lowercased headers of one request the capture server received.
    type Captured = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

    /// Starts an HTTP server on loopback that records each request and answers 200, with
    /// the encryption headers of the request sent back as a store that applies them does,
    /// unless `echo` is false. Returns its endpoint and what it received.
    fn capture_server(echo: bool) -> (String, Captured) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let captured: Captured = Arc::default();
        let record = captured.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let record = record.clone();
                std::thread::spawn(move || serve(stream, &record, echo));
            }
        });
        (endpoint, captured)
    }

    fn serve(stream: std::net::TcpStream, record: &Captured, echo: bool) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut writer = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header line");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("header with a colon");
                headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
            }
            let length = headers
                .iter()
                .find(|(name, _)| name == "content-length")
                .map_or(0, |(_, value)| value.parse::<usize>().expect("length"));
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("request body");
            let mut response = String::from("HTTP/1.1 200 OK\r\nETag: \"e1\"\r\n");
            for (name, value) in &headers {
                let sent_back = name == "x-amz-server-side-encryption"
                    || name == "x-amz-server-side-encryption-customer-algorithm";
                if echo && sent_back {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
            }
            let reply_body = if request_line.starts_with("GET") {
                "x"
            } else {
                ""
            };
            response.push_str(&format!(
                "Content-Length: {}\r\n\r\n{reply_body}",
                reply_body.len()
            ));
            record
                .lock()
                .unwrap()
                .push((request_line.trim_end().to_string(), headers));
            writer.write_all(response.as_bytes()).expect("response");
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn last_request(captured: &Captured) -> (String, Vec<(String, String)>) {
        captured.lock().unwrap().last().cloned().expect("a request")
    }

    /// Returns a store for `endpoint` whose PUTs take the direct path, and one whose PUTs go
    /// through the SDK, as without an explicit endpoint.
    fn both_put_paths(endpoint: &str, options: &S3Options) -> [Store; 2] {
        let direct = Store::for_tests(endpoint, options).unwrap();
        let sdk = Store::for_tests(endpoint, options)
            .unwrap()
            .without_direct_puts();
        [direct, sdk]
    }

    #[test]
    fn sse_s3_headers_on_put() {
        let (endpoint, captured) = capture_server(true);
        let options = S3Options {
            sse: Some(SseKind::Aes256),
            ..S3Options::default()
        };
        for store in both_put_paths(&endpoint, &options) {
            store.put("k", b"body", Condition::Always).expect("put");
            let (line, headers) = last_request(&captured);
            assert!(line.starts_with("PUT /test-bucket/k"), "{line}");
            assert_eq!(
                header(&headers, "x-amz-server-side-encryption"),
                Some("AES256")
            );
            assert_eq!(
                header(&headers, "x-amz-server-side-encryption-customer-key"),
                None
            );
            assert_eq!(store.check_encryption("probe", false).unwrap(), Ok(()));
        }
    }

    #[test]
    fn sse_kms_headers_on_put() {
        let (endpoint, captured) = capture_server(true);
        let options = S3Options {
            sse: Some(SseKind::Kms),
            sse_kms_key_id: Some("alias/logs".into()),
            ..S3Options::default()
        };
        for store in both_put_paths(&endpoint, &options) {
            store.put("k", b"body", Condition::Always).expect("put");
            let (_, headers) = last_request(&captured);
            assert_eq!(
                header(&headers, "x-amz-server-side-encryption"),
                Some("aws:kms")
            );
            assert_eq!(
                header(&headers, "x-amz-server-side-encryption-aws-kms-key-id"),
                Some("alias/logs")
            );
        }
    }

    #[test]
    fn sse_c_headers_on_put_get_head() {
        let (endpoint, captured) = capture_server(true);
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("sse.key");
        std::fs::write(&key_file, [0u8; 32]).unwrap();
        std::fs::set_permissions(
            &key_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let options = S3Options {
            sse: Some(SseKind::Customer),
            sse_c_key: Some(key_file),
            ..S3Options::default()
        };
        let (key, md5) = customer_headers(&[0; 32]);
        for store in both_put_paths(&endpoint, &options) {
            store.put("k", b"body", Condition::Always).expect("put");
            store.get("k").expect("get");
            store.head("k").expect("head");
        }
        let requests = captured.lock().unwrap().clone();
        let methods: Vec<&str> = requests.iter().map(|(l, _)| &l[..4]).collect();
        assert_eq!(methods, ["PUT ", "GET ", "HEAD", "PUT ", "GET ", "HEAD"]);
        for (line, headers) in &requests {
            let algorithm = header(headers, "x-amz-server-side-encryption-customer-algorithm");
            assert_eq!(algorithm, Some("AES256"), "{line}");
            let sent_key = header(headers, "x-amz-server-side-encryption-customer-key");
            assert_eq!(sent_key, Some(key.as_str()), "{line}");
            let sent_md5 = header(headers, "x-amz-server-side-encryption-customer-key-md5");
            assert_eq!(sent_md5, Some(md5.as_str()), "{line}");
            assert_eq!(
                header(headers, "x-amz-server-side-encryption"),
                None,
                "{line}"
            );
        }
    }

    #[test]
    fn sse_unconfirmed_detected() {
        let (endpoint, _captured) = capture_server(false);
        let options = S3Options {
            sse: Some(SseKind::Aes256),
            ..S3Options::default()
        };
        let store = Store::for_tests(&endpoint, &options).unwrap();
        let reason = store.check_encryption("probe", false).unwrap().unwrap_err();
        assert!(reason.contains("did not confirm"), "{reason}");
    }

    #[test]
    fn lock_headers_on_put_new() {
        let (endpoint, captured) = capture_server(true);
        let options = S3Options {
            retention_lock_days: Some(400),
            retention_lock_mode: Some(LockMode::Governance),
            ..S3Options::default()
        };
        for store in both_put_paths(&endpoint, &options) {
            check_lock_headers(&store, &captured);
        }
    }

    /// Stores a journal object and a lease with `store` and checks the Object Lock headers
    /// of the requests `captured` received.
    fn check_lock_headers(store: &Store, captured: &Captured) {
        let before = SystemTime::now();
        store.put_new("journal/1", b"body").expect("put_new");
        let (_, headers) = last_request(captured);
        assert_eq!(
            header(&headers, "x-amz-object-lock-mode"),
            Some("GOVERNANCE")
        );
        let until = header(&headers, "x-amz-object-lock-retain-until-date").expect("date");
        let until: jiff::Timestamp = until.parse().expect("RFC 3339 date");
        let expected = before.duration_since(UNIX_EPOCH).unwrap().as_secs() + 400 * 86_400;
        let sent = until.as_second() as u64;
        assert!((expected..=expected + 60).contains(&sent), "{until}");
        assert_eq!(header(&headers, "if-none-match"), Some("*"));
        assert!(header(&headers, "x-amz-checksum-crc32c").is_some());
        // MD5 of "body" is 841a2d689ad86bd1611447453c22c6fc.
        assert_eq!(
            header(&headers, "content-md5"),
            Some("hBotaJrYa9FhFEdFPCLG/A==")
        );

        // A lease or probe write carries no retention.
        store.put("lease", b"body", Condition::Always).expect("put");
        let (_, headers) = last_request(captured);
        assert_eq!(header(&headers, "x-amz-object-lock-mode"), None);
    }

    #[test]
    fn customer_headers_known_key() {
        // MD5 of 32 zero bytes is 70bc8f4b72a86921468bf8e8441dce51.
        let (key, md5) = customer_headers(&[0; 32]);
        assert_eq!(key, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(md5, "cLyPS3KoaSFGi/joRB3OUQ==");
    }

    #[test]
    fn retain_until_adds_days() {
        let lock = RetentionLock {
            days: 2,
            mode: LockMode::Compliance,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            retain_until(lock, now),
            UNIX_EPOCH + Duration::from_secs(1_000 + 2 * 86_400)
        );
    }

    #[test]
    fn debug_hides_customer_key() {
        let encryption = Encryption {
            kind: SseKind::Customer,
            kms_key_id: None,
            customer: Some(customer_headers(&[7; 32])),
        };
        let shown = format!("{encryption:?}");
        assert!(!shown.contains(&customer_headers(&[7; 32]).0), "{shown}");
        assert!(shown.contains("hidden"), "{shown}");
    }
}
