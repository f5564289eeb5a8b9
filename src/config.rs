//! Mount configuration: `-o key=value` options and the TOML config file merged into one
//! validated [`MountConfig`]. Every key states its unit, default and allowed values here, so
//! that help text and error messages can quote them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod path_rules;

pub use path_rules::PathRule;

/// Directory name, at the backing root, of the default state directory. The mount hides it.
pub const STATE_DIR_NAME: &str = ".logmirror";

/// Default of `materialize_interval`.
pub const DEFAULT_MATERIALIZE_INTERVAL: Duration = Duration::from_secs(10);

/// Allowed range of `materialize_interval`.
const MATERIALIZE_INTERVAL_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown option {key:?}; valid keys: mirror, mode, ack, state, max_backlog, when_full, \
         on_mirror_failure, sync_timeout, drain_timeout, flush_interval, segment_size, log_file, \
         threads, endpoint, region, path_style, ca_file, allow_http, encrypt_key, compression, \
         takeover, retention, verify_interval, repair, materialize_interval, metrics, history, \
         retention_lock, retention_lock_mode, sse, sse_kms_key_id, sse_c_key, passthrough"
    )]
    UnknownKey { key: String },
    #[error(
        "rejected option {key:?}: S3 credentials come only from the standard AWS chain \
         (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or an instance role)"
    )]
    Credential { key: String },
    #[error(
        "invalid value for endpoint: it contains a user name or password, which is not \
         accepted; give S3 credentials through the standard AWS chain"
    )]
    EndpointUserInfo,
    #[error("unknown option {key:?} for restore or fold; valid keys: {valid}")]
    NotValidHere { key: String, valid: &'static str },
    #[error("missing value for option {key:?}; write {key}=VALUE")]
    MissingValue { key: String },
    #[error("invalid value {value:?} for {key}: {expected}")]
    InvalidValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error("failed to read config file {path:?}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path:?}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error(
        "endpoint {endpoint} uses plain http to a host that is not loopback, so requests and \
         their data would cross the network unencrypted; use an https:// endpoint, or set \
         allow_http=true to accept plain http"
    )]
    PlainHttp { endpoint: String },
    #[error(
        "missing option mirror: no mirror given; add at least one, as in -o mirror=dir:/mnt/copy"
    )]
    NoMirror,
    #[error("conflicting options: {0}")]
    Conflict(String),
    #[error("rule {number} (path {path:?}): {reason}")]
    Rule {
        /// Position of the `[[rule]]` in the file, from 1.
        number: usize,
        path: String,
        reason: String,
    },
}

/// Location of one mirror.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MirrorSpec {
    /// A directory on another disk or a network mount, written as `dir:/path`.
    Dir(PathBuf),
    /// A bucket and key prefix in an S3-compatible store, written as `s3://BUCKET/PREFIX`.
    /// The prefix has no leading or trailing slash and is empty for the bucket's root.
    S3 { bucket: String, prefix: String },
}

/// Maximum length of a key prefix, in bytes. An S3 key has at most 1024 bytes, and the
/// mirror's own object names take about 60 of them.
pub const MAX_S3_PREFIX_BYTES: usize = 512;

impl MirrorSpec {
    /// Parses `dir:/absolute/path` or `s3://BUCKET/PREFIX`.
    pub fn parse(value: &str) -> Result<MirrorSpec, Error> {
        let invalid = |expected: String| Error::InvalidValue {
            key: "mirror".into(),
            value: value.into(),
            expected,
        };
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket_name(bucket).map_err(|reason| invalid(format!("bucket {reason}")))?;
            let prefix = prefix.trim_end_matches('/');
            check_s3_prefix(prefix).map_err(|reason| invalid(format!("prefix {reason}")))?;
            return Ok(MirrorSpec::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        match value.split_once(':') {
            Some(("dir", path)) if path.starts_with('/') => {
                Ok(MirrorSpec::Dir(PathBuf::from(path)))
            }
            Some(("dir", _)) => Err(invalid(
                "a directory mirror needs an absolute path, as in dir:/mnt/copy".into(),
            )),
            _ => Err(invalid(
                "expected dir:/absolute/path or s3://BUCKET/PREFIX".into(),
            )),
        }
    }

    /// Returns the name shown in status and logs.
    pub fn name(&self) -> String {
        match self {
            MirrorSpec::Dir(path) => format!("dir:{}", path.display()),
            MirrorSpec::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            MirrorSpec::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Returns true for an S3 mirror.
    pub fn is_s3(&self) -> bool {
        matches!(self, MirrorSpec::S3 { .. })
    }
}

/// Checks a bucket name against the S3 naming rules for general purpose buckets, returning
/// what is wrong with it.
fn check_bucket_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty; write s3://BUCKET/PREFIX".into());
    }
    if !(3..=63).contains(&name.len()) {
        return Err(format!(
            "name {name:?} has {} characters; it needs 3 to 63",
            name.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-';
    if let Some(c) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "name {name:?} contains {c:?}; use lowercase letters, digits, '.' and '-'"
        ));
    }
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge(name.chars().next()) || !edge(name.chars().last()) {
        return Err(format!(
            "name {name:?} must start and end with a lowercase letter or a digit"
        ));
    }
    if name.contains("..") {
        return Err(format!("name {name:?} contains two adjacent periods"));
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!("name {name:?} is formatted as an IP address"));
    }
    Ok(())
}

/// Checks a key prefix (already without trailing slashes), returning what is wrong with it.
fn check_s3_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > MAX_S3_PREFIX_BYTES {
        return Err(format!(
            "{prefix:?} has {} bytes; the maximum is {MAX_S3_PREFIX_BYTES}",
            prefix.len()
        ));
    }
    if prefix.chars().any(char::is_control) {
        return Err(format!("{prefix:?} contains a control character"));
    }
    for part in prefix.split('/') {
        match part {
            "" => {
                return Err(format!(
                    "{prefix:?} has an empty path component (// or a leading /)"
                ));
            }
            "." | ".." => return Err(format!("{prefix:?} has a {part:?} component")),
            _ => {}
        }
    }
    Ok(())
}

/// Connection settings shared by the S3 mirrors of a mount. Credentials are deliberately not
/// here: they come from the standard AWS chain only, so they never appear in options, logs
/// or status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    /// `endpoint=URL`: the S3 API endpoint, as in `http://127.0.0.1:3900`. Default: the
    /// `AWS_ENDPOINT_URL` environment variable, else AWS's endpoint for the region.
    pub endpoint: Option<String>,
    /// `region=NAME`. Default: `AWS_REGION` or the region of the AWS profile.
    pub region: Option<String>,
    /// `path_style=true|false`: put the bucket in the URL path instead of the host name.
    /// Default: true when an endpoint is given (option or `AWS_ENDPOINT_URL`), else false.
    pub path_style: Option<bool>,
    /// `ca_file=/path`: PEM file with the certificate authorities that an https endpoint's
    /// certificate must chain to. They replace the system's root certificates. Default: none,
    /// so the system's root certificates apply.
    pub ca_file: Option<PathBuf>,
    /// `allow_http=true|false`: accept a plain `http://` endpoint on a host other than
    /// loopback (127.0.0.0/8, ::1, localhost). Default false.
    pub allow_http: bool,
    /// `encrypt_key=/path`: file with the 256-bit key (64 hex digits) that encrypts journal
    /// objects and snapshots before they leave the host, and turns the readable copies off.
    /// It must not be readable by group or others. Default: none, objects are stored plain.
    pub encrypt_key: Option<PathBuf>,
    /// `compression=zstd:LEVEL|none`: compression of journal objects and snapshot parts
    /// before encryption. Default zstd at level 3; levels 1 to 19.
    pub compression: Compression,
    /// `history=managed|append-only`: whether the mount may delete or overwrite objects
    /// under `PREFIX/.logmirror/` other than its lease. Default managed.
    pub history: History,
    /// `retention_lock=DAYS`: S3 Object Lock retention put on every journal object and
    /// snapshot, from 1 to 36500 days. Default: none.
    pub retention_lock_days: Option<u32>,
    /// `retention_lock_mode=compliance|governance`. Default compliance.
    pub retention_lock_mode: Option<LockMode>,
    /// `sse=aes256|aws:kms|c`: server-side encryption requested on every upload. Default:
    /// none, the bucket's default applies.
    pub sse: Option<SseKind>,
    /// `sse_kms_key_id=ID`: the KMS key for `sse=aws:kms`. Default: the account's AWS
    /// managed key.
    pub sse_kms_key_id: Option<String>,
    /// `sse_c_key=/path`: file of mode 0600 or stricter with the 256-bit key for `sse=c`,
    /// as 32 raw bytes or their base64. The key itself is read when the store connects.
    pub sse_c_key: Option<PathBuf>,
}

/// Compression of the S3 mirror's journal objects and snapshot parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zstd at this level (1 to 19).
    Zstd(i32),
}

impl Default for Compression {
    fn default() -> Compression {
        Compression::Zstd(DEFAULT_ZSTD_LEVEL)
    }
}

/// Default zstd level of `compression`, a fast level. The ratio it reaches on an access log
/// is measured in docs/BENCHMARKS.md.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Allowed zstd levels of `compression`. The zstd 1.5 CLI unlocks 20 to 22 only with
/// `--ultra`, because they need more memory.
const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

impl Compression {
    fn parse(value: &str) -> Option<Compression> {
        if value == "none" {
            return Some(Compression::None);
        }
        let level: i32 = value.strip_prefix("zstd:")?.parse().ok()?;
        ZSTD_LEVELS
            .contains(&level)
            .then_some(Compression::Zstd(level))
    }
}

/// Rights the mount uses on the history objects under `PREFIX/.logmirror/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum History {
    /// Probe objects are removed and `retention=` folds remove old journal objects.
    #[default]
    Managed,
    /// Nothing under `.logmirror/` is deleted or overwritten except the lease object, so
    /// credentials without those rights suffice. Folds run only from `logmirror fold`.
    AppendOnly,
}

/// Object Lock mode of a retention, as S3 names it in `x-amz-object-lock-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// No user, root account included, can delete the object before its date.
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can delete the object early.
    Governance,
}

/// S3 Object Lock retention for journal objects and snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionLock {
    /// Days from the upload until the object may be deleted.
    pub days: u32,
    pub mode: LockMode,
}

/// Kind of server-side encryption requested with `sse=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SseKind {
    /// `aes256`: keys managed by the store (SSE-S3).
    Aes256,
    /// `aws:kms`: keys in AWS KMS (SSE-KMS).
    Kms,
    /// `c`: a key that logmirror sends with every request (SSE-C).
    Customer,
}

/// Largest `retention_lock`, in days: 100 years.
const MAX_RETENTION_LOCK_DAYS: u32 = 36_500;

impl S3Options {
    /// Returns true when no option is set.
    pub fn is_empty(&self) -> bool {
        self == &S3Options::default()
    }

    /// Applies one `endpoint`, `region`, `path_style`, `ca_file`, `allow_http`,
    /// `encrypt_key` or `compression` option. An `encrypt_key` file is read and checked here.
    /// Returns false for any other key.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<bool, Error> {
        let invalid = |expected: &str| Error::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        };
        match key {
            "endpoint" => self.endpoint = Some(check_endpoint(value)?),
            "region" => {
                if !is_valid_region(value) {
                    return Err(invalid(REGION_FORM));
                }
                self.region = Some(value.to_string());
            }
            "path_style" => self.path_style = Some(parse_flag(key, value)?),
            "ca_file" => self.ca_file = Some(absolute_path(key, value)?),
            "allow_http" => self.allow_http = parse_flag(key, value)?,
            "history" => {
                self.history = match value {
                    "managed" => History::Managed,
                    "append-only" => History::AppendOnly,
                    _ => return Err(invalid("expected managed or append-only")),
                }
            }
            "retention_lock" => {
                let days = value
                    .parse::<u32>()
                    .ok()
                    .filter(|d| (1..=MAX_RETENTION_LOCK_DAYS).contains(d))
                    .ok_or_else(|| {
                        invalid("expected a number of days from 1 to 36500, as in 400")
                    })?;
                self.retention_lock_days = Some(days);
            }
            "retention_lock_mode" => {
                self.retention_lock_mode = Some(match value {
                    "compliance" => LockMode::Compliance,
                    "governance" => LockMode::Governance,
                    _ => return Err(invalid("expected compliance or governance")),
                })
            }
            "sse" => {
                self.sse = Some(match value {
                    "aes256" => SseKind::Aes256,
                    "aws:kms" => SseKind::Kms,
                    "c" => SseKind::Customer,
                    _ => return Err(invalid("expected aes256, aws:kms or c")),
                })
            }
            "sse_kms_key_id" => {
                if value.is_empty() || value.chars().any(|c| c.is_control() || c == ' ') {
                    return Err(invalid(
                        "expected a KMS key id, alias or ARN without spaces, as in \
                         alias/logs or arn:aws:kms:us-east-1:111122223333:key/ID",
                    ));
                }
                self.sse_kms_key_id = Some(value.to_string());
            }
            "sse_c_key" => self.sse_c_key = Some(absolute_path(key, value)?),
            "encrypt_key" => self.set_encrypt_key(Path::new(value))?,
            "compression" => {
                self.compression = Compression::parse(value)
                    .ok_or_else(|| invalid("expected zstd:LEVEL with LEVEL 1 to 19, or none"))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Returns the Object Lock retention to put on history objects, if any.
    pub fn retention_lock(&self) -> Option<RetentionLock> {
        self.retention_lock_days.map(|days| RetentionLock {
            days,
            mode: self.retention_lock_mode.unwrap_or(LockMode::Compliance),
        })
    }

    /// Checks that the Object Lock and encryption options fit together, and that the
    /// `sse_c_key` file contains a usable key and can be read by its owner only.
    pub fn check_security(&self) -> Result<(), Error> {
        if self.retention_lock_mode.is_some() && self.retention_lock_days.is_none() {
            return Err(Error::Conflict(
                "retention_lock_mode applies to retention_lock=DAYS, which is not set; add \
                 retention_lock or remove retention_lock_mode"
                    .into(),
            ));
        }
        if self.sse_kms_key_id.is_some() && self.sse != Some(SseKind::Kms) {
            return Err(Error::Conflict(
                "sse_kms_key_id applies to sse=aws:kms; add sse=aws:kms or remove \
                 sse_kms_key_id"
                    .into(),
            ));
        }
        match (self.sse, &self.sse_c_key) {
            (Some(SseKind::Customer), None) => Err(Error::Conflict(
                "sse=c needs sse_c_key=/path, a file with the 256-bit key".into(),
            )),
            (Some(SseKind::Customer), Some(path)) => read_sse_c_key(path).map(drop),
            (_, Some(_)) => Err(Error::Conflict(
                "sse_c_key applies to sse=c; add sse=c or remove sse_c_key".into(),
            )),
            (_, None) => Ok(()),
        }
    }

    /// Sets `encrypt_key` to the key file at `path`, which is read and checked now, so that
    /// a missing, readable or malformed key file is an invalid value, not a start-up failure.
    pub fn set_encrypt_key(&mut self, path: &Path) -> Result<(), Error> {
        let invalid = |expected: String| Error::InvalidValue {
            key: "encrypt_key".to_string(),
            value: path.display().to_string(),
            expected,
        };
        let path = std::path::absolute(path).map_err(|e| invalid(e.to_string()))?;
        crate::mirror::s3::seal::read_key_file(&path).map_err(|e| invalid(e.to_string()))?;
        self.encrypt_key = Some(path);
        Ok(())
    }

    /// Checks that the endpoint option, if any, may be used: https, or plain http to a
    /// loopback host or with `allow_http=true`. Makes no connection.
    pub fn check_transport(&self) -> Result<(), Error> {
        match &self.endpoint {
            Some(endpoint) => check_endpoint_transport(endpoint, self.allow_http),
            None => Ok(()),
        }
    }
}

/// A 256-bit SSE-C key. `Debug` leaves the key out, so that no log shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SseCustomerKey(pub [u8; 32]);

impl std::fmt::Debug for SseCustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SseCustomerKey(hidden)")
    }
}

/// Reads the SSE-C key file at `path`: 32 raw bytes, or their base64 on one line. The file
/// must not be readable or writable by group or others.
pub fn read_sse_c_key(path: &Path) -> Result<SseCustomerKey, Error> {
    use std::os::unix::fs::PermissionsExt as _;

    let invalid = |expected: String| Error::InvalidValue {
        key: "sse_c_key".into(),
        value: path.display().to_string(),
        expected,
    };
    let metadata = std::fs::metadata(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "the key file has mode {mode:04o}, so other users may read the key; run chmod \
             600 on it"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(SseCustomerKey(key));
    }
    let text = String::from_utf8_lossy(&bytes);
    let decoded = aws_smithy_types::base64::decode(text.trim()).unwrap_or_default();
    match <[u8; 32]>::try_from(decoded.as_slice()) {
        Ok(key) => Ok(SseCustomerKey(key)),
        Err(_) => Err(invalid(format!(
            "expected a file of 32 bytes, or their base64 (44 characters), with {} bytes; \
             create one with: head -c 32 /dev/urandom > FILE && chmod 600 FILE",
            bytes.len()
        ))),
    }
}

/// Checks that requests to `endpoint` are encrypted, go to the local host, or that plain
/// http was allowed with `allow_http=true`.
pub fn check_endpoint_transport(endpoint: &str, allow_http: bool) -> Result<(), Error> {
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return Ok(());
    };
    if allow_http || is_loopback_host(url_host(rest)) {
        return Ok(());
    }
    Err(Error::PlainHttp {
        endpoint: endpoint.to_string(),
    })
}

/// Returns the host of a URL without its scheme: the text before the port, path or query,
/// without the brackets of an IPv6 address.
fn url_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or("");
    }
    authority.split(':').next().unwrap_or("")
}

/// Returns true for `localhost` and for addresses in 127.0.0.0/8 or `::1`.
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

fn parse_flag(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "expected true or false".to_string(),
        }),
    }
}

/// Checks an endpoint URL: http or https, a host, and no user name, password, query or
/// fragment.
pub(crate) fn check_endpoint(value: &str) -> Result<String, Error> {
    // Text before an '@' may be a password, so it is never repeated in a message.
    if value.contains('@') {
        return Err(Error::EndpointUserInfo);
    }
    let invalid = |expected: &str| Error::InvalidValue {
        key: "endpoint".into(),
        value: value.into(),
        expected: expected.into(),
    };
    let rest = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid("expected an http:// or https:// URL, as in http://127.0.0.1:3900")
        })?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(invalid("expected a host after the scheme"));
    }
    if value.contains(['?', '#']) || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "expected a URL without query, fragment, spaces or control characters",
        ));
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// When a write is acknowledged to the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// After the local commit and after `ack` mirrors confirmed the record.
    Sync,
    /// After the local commit; mirrors follow.
    Async,
}

/// How many mirrors must confirm a record before a sync-mode write returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    All,
    Count(usize),
}

/// Outcome for an async-mode writer when the unconfirmed backlog reached `max_backlog`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// The write waits until mirrors confirmed enough to make room.
    Block,
    /// The write fails with ENOSPC and is not committed.
    Fail,
}

/// Outcome for a sync-mode writer when mirrors cannot confirm within `sync_timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMirrorFailure {
    /// Keep waiting, however long it takes.
    Block,
    /// Return EIO; the write stays committed locally and is still mirrored later.
    Fail,
    /// Return success and run as async until the mirrors caught up.
    Degrade,
}

/// The validated configuration of one mount.
#[derive(Clone, Debug)]
pub struct MountConfig {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    /// At least one mirror: those given as `mirror=`, then the named ones in name order.
    pub mirrors: Vec<MirrorSpec>,
    /// Name of each mirror of `mirrors` given as `[mirrors.NAME]`; `None` for `mirror=`.
    pub mirror_names: Vec<Option<String>>,
    /// The `[[rule]]` list in file order; the first rule whose glob matches a path decides
    /// which mirrors hold it. Paths no rule matches go to the `mirror=` mirrors.
    pub rules: Vec<PathRule>,
    /// Endpoint, region and addressing of the S3 mirrors.
    pub s3: S3Options,
    /// Default async.
    pub mode: Mode,
    /// Default all; a count must be between 1 and the number of `mirror=` mirrors.
    pub ack: Ack,
    /// Journal, cursors and control socket. Default `BACKING/.logmirror`.
    pub state_dir: PathBuf,
    /// Bytes of journal not yet confirmed by every mirror before `when_full` applies in async
    /// mode. Default 1 GiB, minimum 1 MiB.
    pub max_backlog_bytes: u64,
    /// Default block.
    pub when_full: WhenFull,
    /// Default block.
    pub on_mirror_failure: OnMirrorFailure,
    /// How long a sync-mode write waits for mirrors before `on_mirror_failure` applies.
    /// Default 30 s.
    pub sync_timeout: Duration,
    /// How long unmount waits for mirrors to confirm the backlog. Default 30 s.
    pub drain_timeout: Duration,
    /// Max time an async-mode mirror keeps applied records before it flushes and confirms
    /// them. Default 500 ms, at most 1 minute.
    pub flush_interval: Duration,
    /// Size at which the journal starts a new segment file. Default 64 MiB, minimum 1 MiB.
    pub segment_size_bytes: u64,
    /// Daemon log destination when running in the background. Default
    /// `STATE/daemon.log`; in the foreground the daemon logs to stderr unless this is set.
    pub log_file: Option<PathBuf>,
    /// FUSE request threads, 1 to 64. Default: the number of CPUs, from 2 to 8.
    pub threads: usize,
    /// Mount options handed to the kernel as they are (`nosuid`, `nodev`, `noexec`, `ro`).
    pub kernel_options: Vec<String>,
    /// `retention=DURATION`: journal objects of S3 mirrors whose records are older than this
    /// are folded into a snapshot and removed. Default: none, the history is kept whole.
    /// At least 1 s; only with an S3 mirror.
    pub retention: Option<Duration>,
    /// `verify_interval=DURATION`: how often the daemon compares every mirror with the
    /// backing tree, as `logmirror verify` does. Default 1 h; zero turns it off.
    pub verify_interval: Duration,
    /// `repair=true|false`: schedule a resync of each mirror that a periodic verify finds
    /// different, as `logmirror verify --repair` does. Default false.
    pub repair: bool,
    /// `takeover=true|false`: take the lease of every S3 mirror's prefix even when another
    /// daemon holds it, for a host that crashed or was replaced. Default false.
    pub takeover: bool,
    /// `materialize_interval=DURATION`: how long a changed file may wait, while it stays
    /// open, before an S3 mirror updates its readable copy. From 1 s to 24 h, and `None`
    /// when not given, which means [`DEFAULT_MATERIALIZE_INTERVAL`] (10 s).
    pub materialize_interval: Option<Duration>,
    /// `metrics=IP:PORT|/path.sock`: where the daemon serves Prometheus metrics. Default:
    /// none, no endpoint.
    pub metrics: Option<crate::metrics::Address>,
    /// `passthrough=auto|off`: read-only opens of files that no handle writes reach the
    /// backing file through the kernel, when the kernel and the daemon's privileges allow.
    /// Default auto (true).
    pub passthrough: bool,
}

impl MountConfig {
    /// Returns true when the state directory sits at the backing root and must be hidden.
    pub fn state_is_inside_backing(&self) -> bool {
        self.state_dir == self.backing.join(STATE_DIR_NAME)
    }

    /// Returns the interval of readable-copy updates of S3 mirrors.
    pub fn materialize_interval(&self) -> Duration {
        self.materialize_interval
            .unwrap_or(DEFAULT_MATERIALIZE_INTERVAL)
    }

    /// Returns how many mirrors must confirm a sync-mode write to a path no rule matches.
    pub fn ack_count(&self) -> usize {
        match self.ack {
            Ack::All => self.default_mirrors().len(),
            Ack::Count(n) => n,
        }
    }

    /// Returns the indices of the `mirror=` mirrors, which hold the paths no rule matches.
    pub fn default_mirrors(&self) -> Vec<usize> {
        (0..self.mirrors.len())
            .filter(|i| self.mirror_names.get(*i).is_none_or(Option::is_none))
            .collect()
    }
}

/// Keys as they appear in a config file; every field is optional there.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    #[serde(default)]
    mirror: Option<OneOrMany>,
    /// `[mirrors.NAME]` tables; checked by hand so that a wrong type names the key.
    mirrors: Option<toml::Value>,
    rule: Option<Vec<path_rules::RuleEntry>>,
    mode: Option<String>,
    ack: Option<NumberOrText>,
    state: Option<PathBuf>,
    max_backlog: Option<NumberOrText>,
    when_full: Option<String>,
    on_mirror_failure: Option<String>,
    sync_timeout: Option<NumberOrText>,
    drain_timeout: Option<NumberOrText>,
    flush_interval: Option<NumberOrText>,
    segment_size: Option<NumberOrText>,
    log_file: Option<PathBuf>,
    threads: Option<NumberOrText>,
    endpoint: Option<String>,
    region: Option<String>,
    path_style: Option<FlagOrText>,
    retention: Option<NumberOrText>,
    verify_interval: Option<NumberOrText>,
    repair: Option<FlagOrText>,
    ca_file: Option<PathBuf>,
    allow_http: Option<FlagOrText>,
    encrypt_key: Option<PathBuf>,
    compression: Option<String>,
    takeover: Option<FlagOrText>,
    materialize_interval: Option<NumberOrText>,
    metrics: Option<String>,
    passthrough: Option<String>,
    history: Option<String>,
    retention_lock: Option<NumberOrText>,
    retention_lock_mode: Option<String>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    sse_c_key: Option<PathBuf>,
}

/// The form of a valid S3 region name, as error messages state it.
pub const REGION_FORM: &str =
    "expected a region name of letters, digits, '-', '_' or '.', as in us-east-1 or garage";

/// Returns whether `value` is a valid S3 region name: 1 to 64 ASCII letters, digits, `-`,
/// `_` or `.`. The region goes into the `Authorization` header of every request.
pub fn is_valid_region(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A value a config file may give as a boolean or as text (`path_style = true` or
/// `path_style = "true"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FlagOrText {
    Flag(bool),
    Text(String),
}

impl FlagOrText {
    fn into_text(self) -> String {
        match self {
            FlagOrText::Flag(flag) => flag.to_string(),
            FlagOrText::Text(text) => text,
        }
    }
}

/// A value a config file may give as a number or as text (`ack = 1` or `ack = "all"`,
/// `max_backlog = 1048576` or `max_backlog = "1G"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum NumberOrText {
    Number(u64),
    Text(String),
}

impl NumberOrText {
    fn into_text(self) -> String {
        match self {
            NumberOrText::Number(n) => n.to_string(),
            NumberOrText::Text(t) => t,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// Options gathered from the file and `-o`, still as text, in the order they were given.
#[derive(Debug, Default)]
struct RawOptions {
    pairs: Vec<(String, String)>,
    flags: Vec<String>,
    /// Name and URL of each `[mirrors.NAME]` of the file.
    named_mirrors: Vec<(String, String)>,
    rules: Vec<path_rules::RuleEntry>,
}

/// Mount options that mount(8), fstab and the kernel use; accepted and handed on or ignored.
const KERNEL_FLAGS: &[&str] = &[
    "nosuid", "nodev", "noexec", "suid", "dev", "exec", "ro", "rw",
];
const IGNORED_FLAGS: &[&str] = &[
    "defaults",
    "default_permissions",
    "allow_other",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "atime",
    "noatime",
    "relatime",
    "async",
];

/// Splits an `-o` string at commas. A backslash keeps the next comma or backslash as text,
/// so that a path with a comma can be given as `mirror=dir:/logs/a\,b`.
fn split_options(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',' | '\\')) => current.extend(chars.next()),
            ',' => items.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
}

impl RawOptions {
    fn push_option_string(&mut self, text: &str) -> Result<(), Error> {
        let items = split_options(text);
        // NOTE: trimming drops whitespace at the end of a value too, such as a mirror path's.
        for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match item.split_once('=') {
                Some((key, value)) => self.pairs.push((key.to_string(), value.to_string())),
                None => self.flags.push(item.to_string()),
            }
        }
        Ok(())
    }

    fn push_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let file: FileOptions = toml::from_str(&text).map_err(|e| Error::ParseFile {
            path: path.to_path_buf(),
            message: describe_toml_error(&text, &e),
        })?;
        if let Some(value) = file.mirrors {
            self.named_mirrors =
                path_rules::named_mirrors(value).map_err(|message| Error::ParseFile {
                    path: path.to_path_buf(),
                    message,
                })?;
        }
        self.rules = file.rule.unwrap_or_default();
        let mut push = |key: &str, value: String| self.pairs.push((key.to_string(), value));
        match file.mirror {
            Some(OneOrMany::One(m)) => push("mirror", m),
            Some(OneOrMany::Many(list)) => list.into_iter().for_each(|m| push("mirror", m)),
            None => {}
        }
        if let Some(v) = file.mode {
            push("mode", v);
        }
        if let Some(v) = file.ack {
            push("ack", v.into_text());
        }
        if let Some(v) = file.state {
            push("state", v.to_string_lossy().into_owned());
        }
        if let Some(v) = file.max_backlog {
            push("max_backlog", v.into_text());
        }
        if let Some(v) = file.when_full {
            push("when_full", v);
        }
        if let Some(v) = file.on_mirror_failure {
            push("on_mirror_failure", v);
        }
        if let Some(v) = file.sync_timeout {
            push("sync_timeout", v.into_text());
        }
        if let Some(v) = file.drain_timeout {
            push("drain_timeout", v.into_text());
        }
        if let Some(v) = file.flush_interval {
            push("flush_interval", v.into_text());
        }
        if let Some(v) = file.segment_size {
            push("segment_size", v.into_text());
        }
        if let Some(v) = file.log_file {
            push("log_file", v.to_string_lossy().into_owned());
        }
        if let Some(v) = file.threads {
            push("threads", v.into_text());
        }
        if let Some(v) = file.endpoint {
            push("endpoint", v);
        }
        if let Some(v) = file.region {
            push("region", v);
        }
        if let Some(v) = file.path_style {
            push("path_style", v.into_text());
        }
        if let Some(v) = file.retention {
            push("retention", v.into_text());
        }
        if let Some(v) = file.verify_interval {
            push("verify_interval", v.into_text());
        }
        if let Some(v) = file.repair {
            push("repair", v.into_text());
        }
        if let Some(v) = file.ca_file {
            push("ca_file", v.to_string_lossy().into_owned());
        }
        if let Some(v) = file.allow_http {
            push("allow_http", v.into_text());
        }
        if let Some(v) = file.encrypt_key {
            push("encrypt_key", v.to_string_lossy().into_owned());
        }
        if let Some(v) = file.compression {
            push("compression", v);
        }
        if let Some(v) = file.takeover {
            push("takeover", v.into_text());
        }
        if let Some(v) = file.materialize_interval {
            push("materialize_interval", v.into_text());
        }
        if let Some(v) = file.metrics {
            push("metrics", v);
        }
        if let Some(v) = file.passthrough {
            push("passthrough", v);
        }
        if let Some(v) = file.history {
            push("history", v);
        }
        if let Some(v) = file.retention_lock {
            push("retention_lock", v.into_text());
        }
        if let Some(v) = file.retention_lock_mode {
            push("retention_lock_mode", v);
        }
        if let Some(v) = file.sse {
            push("sse", v);
        }
        if let Some(v) = file.sse_kms_key_id {
            push("sse_kms_key_id", v);
        }
        if let Some(v) = file.sse_c_key {
            push("sse_c_key", v.to_string_lossy().into_owned());
        }
        Ok(())
    }
}

/// Returns the message of a TOML error with the line it points at and the key on that line,
/// never the value, which might be a secret given in the wrong place.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return message.to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_number = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or("");
    match line.split_once('=') {
        Some((key, _)) => format!("line {line_number}, key {:?}: {message}", key.trim()),
        None => format!("line {line_number}: {message}"),
    }
}

/// Builds the configuration from an optional config file and `-o` option strings; `-o`
/// values override the file, and mirrors given with `-o` replace the file's list.
pub fn build(
    backing: &Path,
    mountpoint: &Path,
    config_file: Option<&Path>,
    option_strings: &[String],
) -> Result<MountConfig, Error> {
    let mut from_file = RawOptions::default();
    if let Some(path) = config_file {
        from_file.push_file(path)?;
    }
    let mut from_args = RawOptions::default();
    for text in option_strings {
        from_args.push_option_string(text)?;
    }
    let args_have_mirrors = from_args.pairs.iter().any(|(k, _)| k == "mirror");
    let mut raw = RawOptions::default();
    for (key, value) in from_file.pairs {
        if !(args_have_mirrors && key == "mirror") {
            raw.pairs.push((key, value));
        }
    }
    raw.pairs.extend(from_args.pairs);
    raw.flags.extend(from_file.flags);
    raw.flags.extend(from_args.flags);
    raw.named_mirrors = from_file.named_mirrors;
    raw.rules = from_file.rules;
    resolve(backing, mountpoint, raw)
}

/// Keys of [`S3Options`], as listed in messages.
pub(crate) const S3_KEYS: &str = "endpoint, region, path_style, ca_file, allow_http, \
                                  encrypt_key, compression, history, retention_lock, \
                                  retention_lock_mode, sse, sse_kms_key_id, sse_c_key";

/// Builds the S3 connection settings of a command that reads a mirror without mounting
/// (`restore`), from `-o` option strings that may set only the keys of [`S3Options`].
pub fn build_s3_options(option_strings: &[String]) -> Result<S3Options, Error> {
    let mut raw = RawOptions::default();
    for text in option_strings {
        raw.push_option_string(text)?;
    }
    if let Some(flag) = raw.flags.into_iter().next() {
        return Err(Error::NotValidHere {
            key: flag,
            valid: S3_KEYS,
        });
    }
    let mut options = S3Options::default();
    for (key, value) in raw.pairs {
        if options.apply(&key, &value)? {
            continue;
        }
        if is_credential_key(&key) {
            return Err(Error::Credential { key });
        }
        return Err(Error::NotValidHere {
            key,
            valid: S3_KEYS,
        });
    }
    options.check_transport()?;
    options.check_security()?;
    Ok(options)
}

fn resolve(backing: &Path, mountpoint: &Path, raw: RawOptions) -> Result<MountConfig, Error> {
    let mut config = MountConfig {
        backing: backing.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
        mirrors: Vec::new(),
        mirror_names: Vec::new(),
        rules: Vec::new(),
        s3: S3Options::default(),
        mode: Mode::Async,
        ack: Ack::All,
        state_dir: backing.join(STATE_DIR_NAME),
        max_backlog_bytes: 1 << 30,
        when_full: WhenFull::Block,
        on_mirror_failure: OnMirrorFailure::Block,
        sync_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        flush_interval: Duration::from_millis(500),
        segment_size_bytes: 64 << 20,
        log_file: None,
        threads: default_threads(),
        kernel_options: Vec::new(),
        retention: None,
        verify_interval: Duration::from_secs(3600),
        repair: false,
        takeover: false,
        materialize_interval: None,
        metrics: None,
        passthrough: false,
    };
    for flag in raw.flags {
        if KERNEL_FLAGS.contains(&flag.as_str()) {
            if flag != "rw" {
                config.kernel_options.push(flag);
            }
        } else if IGNORED_FLAGS.contains(&flag.as_str()) || flag.starts_with("x-") {
            continue;
        } else if is_known_key(&flag) {
            return Err(Error::MissingValue { key: flag });
        } else {
            return Err(Error::UnknownKey { key: flag });
        }
    }
    for (key, value) in raw.pairs {
        apply_pair(&mut config, &key, &value)?;
    }
    config.mirror_names = vec![None; config.mirrors.len()];
    path_rules::resolve(&mut config, raw.named_mirrors, raw.rules)?;
    check(&config)?;
    Ok(config)
}

/// Returns the default number of FUSE request threads: one per CPU, from 2 to 8. More
/// threads than CPUs made 4 KiB appends slower, because the threads preempt each other and
/// the writers, and no request waits long on a FUSE thread (fsync and sync-mode replies are
/// sent from other threads).
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Every key of `-o` and the config file; `logmirror mount --help` lists each with its
/// default.
pub const KEYS: &[&str] = &[
    "mirror",
    "mode",
    "ack",
    "state",
    "max_backlog",
    "when_full",
    "on_mirror_failure",
    "sync_timeout",
    "drain_timeout",
    "flush_interval",
    "segment_size",
    "log_file",
    "threads",
    "endpoint",
    "region",
    "path_style",
    "retention",
    "verify_interval",
    "repair",
    "ca_file",
    "allow_http",
    "encrypt_key",
    "compression",
    "takeover",
    "materialize_interval",
    "metrics",
    "history",
    "retention_lock",
    "retention_lock_mode",
    "sse",
    "sse_kms_key_id",
    "sse_c_key",
    "passthrough",
];

fn is_known_key(key: &str) -> bool {
    KEYS.contains(&key)
}

/// Keys under which people commonly pass S3 credentials. They get an error that names where
/// credentials go, instead of "unknown option".
fn is_credential_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let key = key.strip_prefix("aws_").unwrap_or(&key);
    matches!(
        key,
        "access_key" | "access_key_id" | "secret_key" | "session_token" | "credentials"
    ) || key.contains("secret")
        || key.contains("password")
}

fn apply_pair(config: &mut MountConfig, key: &str, value: &str) -> Result<(), Error> {
    let invalid = |expected: &str| Error::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    };
    match key {
        "mirror" => config.mirrors.push(MirrorSpec::parse(value)?),
        "mode" => {
            config.mode = match value {
                "sync" => Mode::Sync,
                "async" => Mode::Async,
                _ => return Err(invalid("expected sync or async")),
            }
        }
        "ack" => {
            config.ack = match value {
                "all" => Ack::All,
                n => match n.parse::<usize>() {
                    Ok(n) if n >= 1 => Ack::Count(n),
                    _ => return Err(invalid("expected all or a number of mirrors from 1 up")),
                },
            }
        }
        "state" => config.state_dir = absolute_path(key, value)?,
        "max_backlog" => {
            config.max_backlog_bytes = parse_size(value)
                .filter(|n| *n >= 1 << 20)
                .ok_or_else(|| invalid("expected a size of at least 1M, as in 512M or 2G"))?
        }
        "segment_size" => {
            config.segment_size_bytes = parse_size(value)
                .filter(|n| (1 << 20..=1 << 30).contains(n))
                .ok_or_else(|| invalid("expected a size from 1M to 1G, as in 64M"))?
        }
        "when_full" => {
            config.when_full = match value {
                "block" => WhenFull::Block,
                "fail" => WhenFull::Fail,
                _ => return Err(invalid("expected block or fail")),
            }
        }
        "on_mirror_failure" => {
            config.on_mirror_failure = match value {
                "block" => OnMirrorFailure::Block,
                "fail" => OnMirrorFailure::Fail,
                "degrade" => OnMirrorFailure::Degrade,
                _ => return Err(invalid("expected block, fail or degrade")),
            }
        }
        "sync_timeout" => {
            config.sync_timeout = parse_duration(value)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid("expected a duration above zero, as in 30s, 500ms or 2m"))?
        }
        "drain_timeout" => {
            config.drain_timeout = parse_duration(value)
                .ok_or_else(|| invalid("expected a duration, as in 30s, 500ms or 2m"))?
        }
        "flush_interval" => {
            config.flush_interval = parse_duration(value)
                .filter(|d| *d <= Duration::from_secs(60))
                .ok_or_else(|| invalid("expected a duration up to 1m, as in 500ms or 2s"))?
        }
        "log_file" => config.log_file = Some(absolute_path(key, value)?),
        "materialize_interval" => {
            config.materialize_interval = Some(
                parse_duration(value)
                    .filter(|d| MATERIALIZE_INTERVAL_RANGE.contains(d))
                    .ok_or_else(|| {
                        invalid("expected a duration from 1s to 24h, as in 10s, 1m or 1h")
                    })?,
            )
        }
        "retention" => {
            config.retention = Some(
                parse_duration(value)
                    .filter(|d| *d >= Duration::from_secs(1))
                    .ok_or_else(|| {
                        invalid(
                            "expected a duration of at least 1s, as in 30d, 12h or 90m; \
                             leave retention unset to keep the whole history",
                        )
                    })?,
            )
        }
        "verify_interval" => {
            config.verify_interval = parse_duration(value).ok_or_else(|| {
                invalid("expected a duration, as in 1h, 30m or 90s, or 0 to turn it off")
            })?
        }
        "repair" => {
            config.repair = match value {
                "true" => true,
                "false" => false,
                _ => return Err(invalid("expected true or false")),
            }
        }
        "endpoint"
        | "region"
        | "path_style"
        | "ca_file"
        | "allow_http"
        | "encrypt_key"
        | "compression"
        | "history"
        | "retention_lock"
        | "retention_lock_mode"
        | "sse"
        | "sse_kms_key_id"
        | "sse_c_key" => {
            config.s3.apply(key, value)?;
        }
        "takeover" => config.takeover = parse_flag(key, value)?,
        "passthrough" => {
            config.passthrough = match value {
                "auto" => true,
                "off" => false,
                _ => return Err(invalid("expected auto or off")),
            }
        }
        "metrics" => {
            config.metrics =
                Some(crate::metrics::Address::parse(value).map_err(|expected| invalid(&expected))?)
        }
        _ if is_credential_key(key) => {
            return Err(Error::Credential {
                key: key.to_string(),
            });
        }
        "threads" => {
            config.threads = value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| invalid("expected a number from 1 to 64"))?
        }
        // Values for mount(8), fstab and systemd, not for logmirror.
        "fsname" | "subtype" | "comment" => {}
        _ if key.starts_with("x-") => {}
        _ => {
            return Err(Error::UnknownKey {
                key: key.to_string(),
            });
        }
    }
    Ok(())
}

fn absolute_path(key: &str, value: &str) -> Result<PathBuf, Error> {
    let path = PathBuf::from(value);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(Error::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "expected an absolute path".to_string(),
        })
    }
}

fn check(config: &MountConfig) -> Result<(), Error> {
    if config.mirrors.is_empty() {
        return Err(Error::NoMirror);
    }
    let has_s3 = config.mirrors.iter().any(MirrorSpec::is_s3);
    if (!config.s3.is_empty() || config.takeover) && !has_s3 {
        return Err(Error::Conflict(format!(
            "{S3_KEYS} and takeover apply to s3:// mirrors, and no mirror is one; remove them \
             or add an s3://BUCKET/PREFIX mirror"
        )));
    }
    if config.retention.is_some() && !config.mirrors.iter().any(MirrorSpec::is_s3) {
        return Err(Error::Conflict(
            "retention applies to s3:// mirrors, and no mirror is one; a directory mirror \
             keeps no history to fold. Remove retention or add an s3://BUCKET/PREFIX mirror"
                .into(),
        ));
    }
    if config.repair && config.verify_interval.is_zero() {
        return Err(Error::Conflict(
            "repair=true acts on the periodic verify, which verify_interval=0 turns off; \
             set verify_interval above zero or remove repair"
                .into(),
        ));
    }
    config.s3.check_transport()?;
    config.s3.check_security()?;
    if config.retention.is_some() && config.s3.history == History::AppendOnly {
        return Err(Error::Conflict(
            "retention removes folded journal objects, which history=append-only forbids; \
             remove retention and run `logmirror fold` with a key that may delete, or use \
             history=managed"
                .into(),
        ));
    }
    if config.materialize_interval.is_some() && !config.mirrors.iter().any(MirrorSpec::is_s3) {
        return Err(Error::Conflict(
            "materialize_interval applies to the readable copies of s3:// mirrors, and no \
             mirror is one; remove it or add an s3://BUCKET/PREFIX mirror"
                .into(),
        ));
    }
    let default_mirrors = config.default_mirrors().len();
    if let Ack::Count(n) = config.ack
        && n > default_mirrors
    {
        let named = match config.rules.is_empty() {
            true => "",
            false => " given with mirror= (named mirrors take the ack of their [[rule]])",
        };
        return Err(Error::Conflict(format!(
            "ack={n} is larger than the number of mirrors{named} ({default_mirrors}); use \
             ack=all or at most {default_mirrors}"
        )));
    }
    let mut names: Vec<String> = config.mirrors.iter().map(MirrorSpec::name).collect();
    names.sort();
    if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::Conflict(format!(
            "mirror {} is given twice",
            pair[0]
        )));
    }
    Ok(())
}

/// Parses a byte size: a number with an optional K, M, G or T suffix (powers of 1024,
/// optionally followed by `iB` or `B`).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().ok()?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Parses a duration: a number with an optional `ms`, `s`, `m`, `h` or `d` suffix; a bare
/// number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits.parse().ok()?;
    match suffix {
        "ms" => Some(Duration::from_millis(number)),
        "" | "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        "h" => number.checked_mul(3600).map(Duration::from_secs),
        "d" => number.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn build_args(options: &[&str]) -> Result<MountConfig, Error> {
        let options: Vec<String> = options.iter().map(|s| s.to_string()).collect();
        build(Path::new("/b"), Path::new("/m"), None, &options)
    }

    #[test]
    fn passthrough_option() {
        let config = build_args(&["mirror=dir:/a"]).unwrap();
        assert!(!config.passthrough, "default is off");
        let config = build_args(&["mirror=dir:/a,passthrough=off"]).unwrap();
        assert!(!config.passthrough);
        let config = build_args(&["mirror=dir:/a,passthrough=auto"]).unwrap();
        assert!(config.passthrough);
        let message = build_args(&["mirror=dir:/a,passthrough=on"])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("invalid value \"on\" for passthrough")
                && message.contains("auto or off"),
            "{message}"
        );
    }

    #[test]
    fn options_defaults() {
        let config = build_args(&["mirror=dir:/a"]).unwrap();
        assert_eq!(config.mode, Mode::Async);
        assert_eq!(config.ack_count(), 1);
        assert_eq!(config.state_dir, PathBuf::from("/b/.logmirror"));
        assert_eq!(config.max_backlog_bytes, 1 << 30);
        assert!(config.state_is_inside_backing());
    }

    #[test]
    fn options_repeated_mirrors() {
        let config = build_args(&["mirror=dir:/a,mirror=dir:/b", "mode=sync,ack=1"]).unwrap();
        assert_eq!(config.flush_interval, Duration::from_millis(500));
        assert_eq!(config.mirrors.len(), 2);
        assert_eq!(config.mode, Mode::Sync);
        assert_eq!(config.ack_count(), 1);
    }

    #[test]
    fn options_escaped_comma_in_path() {
        let config = build_args(&["mirror=dir:/logs/a\\,b,mirror=dir:/logs/c\\\\"]).unwrap();
        let names: Vec<String> = config.mirrors.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["dir:/logs/a,b", "dir:/logs/c\\"]);
    }

    #[test]
    fn options_errors_name_the_value() {
        let cases: &[(&[&str], &str)] = &[
            (&["mirror=dir:/a,colour=red"], "\"colour\""),
            (&["mirror=dir:/a,mode=fast"], "\"fast\""),
            (&["mirror=dir:relative"], "\"dir:relative\""),
            (&["mirror=s4://x"], "\"s4://x\""),
            (
                &["mirror=s3://logs/a,mirror=s3://logs/a/"],
                "s3://logs/a is given twice",
            ),
            (&["mirror=dir:/a,ack=2"], "ack=2"),
            (&["mirror=dir:/a,ack=0"], "\"0\""),
            (&["mirror=dir:/a,max_backlog=lots"], "\"lots\""),
            (&["mirror=dir:/a,sync_timeout=0"], "\"0\""),
            (&["mirror=dir:/a,flush_interval=2m"], "up to 1m"),
            (&["mirror=dir:/a,mirror=dir:/a"], "dir:/a"),
            (&["mode=sync"], "no mirror"),
            (&["mirror=dir:/a,mode"], "\"mode\""),
        ];
        for (options, needle) in cases {
            let message = build_args(options).unwrap_err().to_string();
            assert!(message.contains(needle), "{options:?}: {message}");
        }
    }

    #[test]
    fn options_mount_flags_accepted() {
        let config =
            build_args(&["mirror=dir:/a,_netdev,nofail,x-systemd.after=x,nosuid"]).unwrap();
        assert_eq!(config.kernel_options, vec!["nosuid".to_string()]);
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_duration("30d"),
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(parse_duration("ten"), None);
    }

    #[test]
    fn retention_and_verify_keys() {
        let config = build_args(&["mirror=dir:/a"]).unwrap();
        assert_eq!(config.retention, None);
        assert_eq!(config.verify_interval, Duration::from_secs(3600));
        assert!(!config.repair);

        let config = build_args(&[
            "mirror=s3://logs/h,retention=30d,verify_interval=0",
            "mirror=dir:/a",
        ])
        .unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.verify_interval, Duration::ZERO);

        let config =
            build_args(&["mirror=s3://logs/h,retention=12h,verify_interval=90s,repair=true"])
                .unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(config.verify_interval, Duration::from_secs(90));
        assert!(config.repair);
    }

    #[test]
    fn retention_errors_name_the_value() {
        let cases: &[(&[&str], &str)] = &[
            (&["mirror=s3://logs/h,retention=0"], "\"0\" for retention"),
            (&["mirror=s3://logs/h,retention=500ms"], "at least 1s"),
            (&["mirror=s3://logs/h,retention=1y"], "\"1y\" for retention"),
            (
                &["mirror=s3://logs/h,retention"],
                "missing value for option \"retention\"",
            ),
            (
                &["mirror=dir:/a,retention=30d"],
                "retention applies to s3:// mirrors",
            ),
            (&["mirror=dir:/a,verify_interval=soon"], "\"soon\""),
            (&["mirror=dir:/a,repair=yes"], "\"yes\" for repair"),
            (
                &["mirror=dir:/a,repair=true,verify_interval=0"],
                "verify_interval=0 turns off",
            ),
        ];
        for (options, needle) in cases {
            let message = build_args(options).unwrap_err().to_string();
            assert!(message.contains(needle), "{options:?}: {message}");
        }
    }

    #[test]
    fn config_file_retention_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "mirror = \"s3://logs/web1\"\nretention = \"7d\"\nverify_interval = 600\n\
             repair = true\n",
        )
        .unwrap();
        let config = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]).unwrap();
        assert_eq!(config.retention, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(config.verify_interval, Duration::from_secs(600));
        assert!(config.repair);
    }

    #[test]
    fn s3_spec_parses() {
        let cases = [
            ("s3://logs/host1", "logs", "host1", "s3://logs/host1"),
            ("s3://logs/a/b/", "logs", "a/b", "s3://logs/a/b"),
            ("s3://logs", "logs", "", "s3://logs"),
            ("s3://logs/", "logs", "", "s3://logs"),
            ("s3://my.logs-2/x", "my.logs-2", "x", "s3://my.logs-2/x"),
        ];
        for (value, bucket, prefix, name) in cases {
            let spec = MirrorSpec::parse(value).unwrap();
            assert_eq!(
                spec,
                MirrorSpec::S3 {
                    bucket: bucket.into(),
                    prefix: prefix.into()
                },
                "{value}"
            );
            assert_eq!(spec.name(), name);
        }
    }

    #[test]
    fn s3_spec_errors_name_the_value() {
        let cases = [
            ("s3://", "name is empty"),
            ("s3:///host1", "name is empty"),
            ("s3://ab/x", "needs 3 to 63"),
            ("s3://Logs/x", "contains 'L'"),
            ("s3://logs_1/x", "contains '_'"),
            ("s3://-logs/x", "must start and end"),
            ("s3://a..b/x", "two adjacent periods"),
            ("s3://192.168.1.1/x", "IP address"),
            ("s3://logs/../x", "\"..\" component"),
            ("s3://logs/a/./b", "\".\" component"),
            ("s3://logs/a//b", "empty path component"),
            ("s3://logs//a", "empty path component"),
        ];
        for (value, reason) in cases {
            let message = MirrorSpec::parse(value).unwrap_err().to_string();
            assert!(
                message.contains(&format!("{value:?}")),
                "{value}: {message}"
            );
            assert!(message.contains(reason), "{value}: {message}");
        }
        let long = format!("s3://logs/{}", "p".repeat(MAX_S3_PREFIX_BYTES + 1));
        let message = MirrorSpec::parse(&long).unwrap_err().to_string();
        assert!(message.contains("the maximum is 512"), "{message}");
    }

    #[test]
    fn s3_options_parse() {
        let config = build_args(&["mirror=s3://logs/host1"]).unwrap();
        assert_eq!(config.s3, S3Options::default());

        let config =
            build_args(&["mirror=s3://logs/host1,endpoint=http://127.0.0.1:3900/,region=garage"])
                .unwrap();
        assert_eq!(
            config.s3,
            S3Options {
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                path_style: None,
                ca_file: None,
                allow_http: false,
                ..S3Options::default()
            }
        );
        let config = build_args(&["mirror=s3://logs/h,path_style=false"]).unwrap();
        assert_eq!(config.s3.path_style, Some(false));
    }

    #[test]
    fn s3_options_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["mirror=s3://l0g/h,endpoint=ftp://x"], "\"ftp://x\""),
            (&["mirror=s3://l0g/h,endpoint=http://"], "\"http://\""),
            (
                &["mirror=s3://l0g/h,endpoint=http://h/?a=b"],
                "\"http://h/?a=b\"",
            ),
            (&["mirror=s3://l0g/h,region=us east"], "\"us east\""),
            (&["mirror=s3://l0g/h,path_style=yes"], "\"yes\""),
            (&["mirror=dir:/a,region=garage"], "apply to s3:// mirrors"),
        ];
        for (options, needle) in cases {
            let message = build_args(options).unwrap_err().to_string();
            assert!(message.contains(needle), "{options:?}: {message}");
        }
    }

    #[test]
    fn s3_security_options() {
        let config = build_args(
            &["mirror=s3://logs/h,history=append-only,retention_lock=400,\
             retention_lock_mode=governance,sse=aws:kms,sse_kms_key_id=alias/logs"],
        )
        .unwrap();
        assert_eq!(config.s3.history, History::AppendOnly);
        assert_eq!(
            config.s3.retention_lock(),
            Some(RetentionLock {
                days: 400,
                mode: LockMode::Governance
            })
        );
        assert_eq!(config.s3.sse, Some(SseKind::Kms));
        assert_eq!(config.s3.sse_kms_key_id.as_deref(), Some("alias/logs"));

        let config = build_args(&["mirror=s3://logs/h,retention_lock=1,sse=aes256"]).unwrap();
        assert_eq!(config.s3.history, History::Managed);
        assert_eq!(
            config.s3.retention_lock().map(|l| l.mode),
            Some(LockMode::Compliance)
        );
    }

    #[test]
    fn s3_security_option_errors() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["mirror=s3://logs/h,history=append"],
                "expected managed or append-only",
            ),
            (&["mirror=s3://logs/h,retention_lock=0"], "from 1 to 36500"),
            (
                &["mirror=s3://logs/h,retention_lock=36501"],
                "from 1 to 36500",
            ),
            (
                &["mirror=s3://logs/h,retention_lock_mode=legal"],
                "compliance or governance",
            ),
            (
                &["mirror=s3://logs/h,retention_lock_mode=governance"],
                "retention_lock=DAYS, which is not set",
            ),
            (
                &["mirror=s3://logs/h,sse=kms"],
                "expected aes256, aws:kms or c",
            ),
            (&["mirror=s3://logs/h,sse_kms_key_id=k"], "add sse=aws:kms"),
            (&["mirror=s3://logs/h,sse=c"], "sse=c needs sse_c_key"),
            (&["mirror=s3://logs/h,sse=aes256,sse_c_key=/k"], "add sse=c"),
            (&["mirror=s3://logs/h,sse=c,sse_c_key=k"], "absolute path"),
            (
                &["mirror=s3://logs/h,history=append-only,retention=30d"],
                "logmirror fold",
            ),
        ];
        for (options, needle) in cases {
            let message = build_args(options).unwrap_err().to_string();
            assert!(message.contains(needle), "{options:?}: {message}");
        }
    }

    #[test]
    fn sse_c_key_file_checks() {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw.key");
        std::fs::write(&raw, [9u8; 32]).unwrap();
        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_sse_c_key(&raw).unwrap(), SseCustomerKey([9; 32]));

        let text = dir.path().join("base64.key");
        let encoded = aws_smithy_types::base64::encode([9u8; 32]);
        std::fs::write(&text, format!("{encoded}\n")).unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_sse_c_key(&text).unwrap(), SseCustomerKey([9; 32]));

        std::fs::set_permissions(&raw, std::fs::Permissions::from_mode(0o640)).unwrap();
        let message = read_sse_c_key(&raw).unwrap_err().to_string();
        assert!(message.contains("mode 0640"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");

        let short = dir.path().join("short.key");
        std::fs::write(&short, b"too short").unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let message = read_sse_c_key(&short).unwrap_err().to_string();
        assert!(message.contains("with 9 bytes"), "{message}");
        assert!(!message.contains("too short"), "{message}");

        let option = format!("mirror=s3://logs/h,sse=c,sse_c_key={}", raw.display());
        let message = build_args(&[&option]).unwrap_err().to_string();
        assert!(message.contains("sse_c_key"), "{message}");
        let debug = format!("{:?}", SseCustomerKey([9; 32]));
        assert_eq!(debug, "SseCustomerKey(hidden)");
    }

    #[test]
    fn s3_plain_http_needs_loopback_or_allow_http() {
        let allowed = [
            "http://127.0.0.1:3900",
            "http://127.8.9.10",
            "http://localhost:3900/",
            "http://LOCALHOST",
            "http://[::1]:3900",
            "https://192.0.2.1:3900",
            "https://s3.example.com",
        ];
        for endpoint in allowed {
            let option = format!("mirror=s3://logs/h,endpoint={endpoint}");
            assert!(build_args(&[&option]).is_ok(), "{endpoint}");
        }
        let refused = [
            "http://192.0.2.1:3900",
            "http://128.0.0.1",
            "http://localhost.example.com",
            "http://[::2]:3900",
            "http://s3.example.com",
        ];
        for endpoint in refused {
            let option = format!("mirror=s3://logs/h,endpoint={endpoint}");
            let message = build_args(&[&option]).unwrap_err().to_string();
            assert!(
                message.contains(endpoint.trim_end_matches('/')),
                "{message}"
            );
            assert!(message.contains("allow_http=true"), "{message}");
            let allowed = format!("{option},allow_http=true");
            assert!(
                build_args(&[&allowed]).is_ok(),
                "{endpoint} with allow_http"
            );
        }
        let message = build_s3_options(&["endpoint=http://192.0.2.1:3900".into()])
            .unwrap_err()
            .to_string();
        assert!(message.contains("allow_http=true"), "{message}");
    }

    #[test]
    fn s3_tls_and_lease_options() {
        let config = build_args(&[
            "mirror=s3://logs/h,endpoint=https://127.0.0.1:3443,ca_file=/etc/ca.pem,takeover=true",
        ])
        .unwrap();
        assert_eq!(config.s3.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(config.takeover);
        assert!(!config.s3.allow_http);
        let cases: &[(&[&str], &str)] = &[
            (
                &["mirror=s3://l0g/h,ca_file=ca.pem"],
                "expected an absolute path",
            ),
            (&["mirror=s3://l0g/h,takeover=yes"], "\"yes\""),
            (&["mirror=s3://l0g/h,allow_http=1"], "\"1\""),
            (&["mirror=dir:/a,takeover=true"], "apply to s3:// mirrors"),
            (&["mirror=dir:/a,ca_file=/ca.pem"], "apply to s3:// mirrors"),
        ];
        for (options, needle) in cases {
            let message = build_args(options).unwrap_err().to_string();
            assert!(message.contains(needle), "{options:?}: {message}");
        }
        let options = build_s3_options(&["ca_file=/ca.pem,allow_http=true".into()]).unwrap();
        assert_eq!(options.ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(options.allow_http);
        let message = build_s3_options(&["takeover=true".into()])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("unknown option \"takeover\" for restore"),
            "{message}"
        );
    }

    #[test]
    fn compression_option() {
        let config = build_args(&["mirror=s3://logs/h"]).unwrap();
        assert_eq!(config.s3.compression, Compression::Zstd(3));
        let config = build_args(&["mirror=s3://logs/h,compression=none"]).unwrap();
        assert_eq!(config.s3.compression, Compression::None);
        let config = build_args(&["mirror=s3://logs/h,compression=zstd:19"]).unwrap();
        assert_eq!(config.s3.compression, Compression::Zstd(19));
        for value in ["zstd", "zstd:0", "zstd:20", "gzip:3", "zstd:x"] {
            let option = format!("mirror=s3://logs/h,compression={value}");
            let message = build_args(&[option.as_str()]).unwrap_err().to_string();
            let named = format!("invalid value {value:?} for compression");
            assert!(message.contains(&named), "{message}");
            assert!(
                message.contains("zstd:LEVEL with LEVEL 1 to 19"),
                "{message}"
            );
        }
    }

    #[test]
    fn materialize_interval_option() {
        let config = build_args(&["mirror=s3://logs/h"]).unwrap();
        assert_eq!(config.materialize_interval(), Duration::from_secs(10));
        let config = build_args(&["mirror=s3://logs/h,materialize_interval=2m"]).unwrap();
        assert_eq!(config.materialize_interval(), Duration::from_secs(120));
        let config = build_args(&["mirror=s3://logs/h,materialize_interval=1"]).unwrap();
        assert_eq!(config.materialize_interval(), Duration::from_secs(1));

        let cases: &[(&str, &str)] = &[
            (
                "materialize_interval=0s",
                "invalid value \"0s\" for materialize_interval",
            ),
            ("materialize_interval=500ms", "invalid value \"500ms\""),
            ("materialize_interval=25h", "invalid value \"25h\""),
            ("materialize_interval=soon", "invalid value \"soon\""),
            (
                "materialize_interval",
                "missing value for option \"materialize_interval\"",
            ),
        ];
        for (option, needle) in cases {
            let options = format!("mirror=s3://logs/h,{option}");
            let message = build_args(&[&options]).unwrap_err().to_string();
            assert!(message.contains(needle), "{option}: {message}");
            assert!(
                message.contains("1s to 24h") || !option.contains('='),
                "{message}"
            );
        }
        let message = build_args(&["mirror=dir:/a,materialize_interval=5s"])
            .unwrap_err()
            .to_string();
        assert!(message.contains("no mirror is one"), "{message}");
    }

    #[test]
    fn s3_credentials_never_echoed() {
        let cases = [
            "mirror=s3://l0g/h,aws_secret_access_key=TOPSECRET",
            "mirror=s3://l0g/h,secret_key=TOPSECRET",
            "mirror=s3://l0g/h,access_key_id=TOPSECRET",
            "mirror=s3://l0g/h,endpoint=http://user:TOPSECRET@127.0.0.1:3900",
        ];
        for option in cases {
            let message = build_args(&[option]).unwrap_err().to_string();
            assert!(!message.contains("TOPSECRET"), "{option}: {message}");
            assert!(message.contains("credentials"), "{option}: {message}");
        }
    }

    #[test]
    fn s3_options_for_restore() {
        let options =
            build_s3_options(&["endpoint=http://127.0.0.1:3900,region=garage".into()]).unwrap();
        assert_eq!(options.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(options.region.as_deref(), Some("garage"));
        let message = build_s3_options(&["mode=sync".into()])
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("unknown option \"mode\" for restore"),
            "{message}"
        );
        let message = build_s3_options(&["secret_access_key=TOPSECRET".into()])
            .unwrap_err()
            .to_string();
        assert!(!message.contains("TOPSECRET"), "{message}");
    }

    #[test]
    fn config_file_s3_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "mirror = \"s3://logs/web1\"\nendpoint = \"http://127.0.0.1:3900\"\n\
             region = \"garage\"\npath_style = true\n",
        )
        .unwrap();
        let config = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]).unwrap();
        assert_eq!(
            config.mirrors,
            vec![MirrorSpec::S3 {
                bucket: "logs".into(),
                prefix: "web1".into()
            }]
        );
        assert_eq!(config.s3.path_style, Some(true));
        assert_eq!(config.s3.region.as_deref(), Some("garage"));
    }

    /// Escapes a value for `-o`: a backslash before each comma and backslash.
    fn escape(value: &str) -> String {
        let mut escaped = String::new();
        for c in value.chars() {
            if c == ',' || c == '\\' {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        escaped
    }

    /// A valid option list, as the values `build` must return for it.
    #[derive(Clone, Debug)]
    struct ValidOptions {
        mirrors: Vec<String>,
        mode: Mode,
        ack: Option<usize>,
        sync_timeout: Duration,
        drain_timeout: Duration,
        flush_interval: Duration,
        max_backlog_bytes: u64,
        segment_size_bytes: u64,
        threads: usize,
        when_full: WhenFull,
        on_mirror_failure: OnMirrorFailure,
        verify_interval: Duration,
        repair: bool,
    }

    impl ValidOptions {
        /// Returns the `key=value` items, values escaped for `-o`.
        fn items(&self) -> Vec<String> {
            let mut items: Vec<String> = self
                .mirrors
                .iter()
                .map(|path| format!("mirror=dir:{}", escape(path)))
                .collect();
            let mode = match self.mode {
                Mode::Sync => "sync",
                Mode::Async => "async",
            };
            items.push(format!("mode={mode}"));
            items.push(match self.ack {
                Some(n) => format!("ack={n}"),
                None => "ack=all".to_string(),
            });
            items.push(format!("sync_timeout={}s", self.sync_timeout.as_secs()));
            items.push(format!(
                "drain_timeout={}m",
                self.drain_timeout.as_secs() / 60
            ));
            items.push(format!(
                "flush_interval={}ms",
                self.flush_interval.as_millis()
            ));
            items.push(format!("max_backlog={}M", self.max_backlog_bytes >> 20));
            items.push(format!("segment_size={}M", self.segment_size_bytes >> 20));
            items.push(format!("threads={}", self.threads));
            let when_full = match self.when_full {
                WhenFull::Block => "block",
                WhenFull::Fail => "fail",
            };
            items.push(format!("when_full={when_full}"));
            let on_failure = match self.on_mirror_failure {
                OnMirrorFailure::Block => "block",
                OnMirrorFailure::Fail => "fail",
                OnMirrorFailure::Degrade => "degrade",
            };
            items.push(format!("on_mirror_failure={on_failure}"));
            items.push(format!(
                "verify_interval={}h",
                self.verify_interval.as_secs() / 3600
            ));
            items.push(format!("repair={}", self.repair));
            items
        }
    }

    /// Generates an absolute directory path with commas, backslashes and '=' inside names, and no
    /// whitespace at its ends (`-o` trims each item).
    fn arb_dir_path() -> impl Strategy<Value = String> {
        "/[a-z0-9,=\\\\]{1,4}(/[a-z0-9 ,=\\\\.]{0,4}[a-z0-9,=\\\\]){0,2}"
    }

    fn arb_valid_options() -> impl Strategy<Value = ValidOptions> {
        let mirrors = prop::collection::btree_set(arb_dir_path(), 1..4)
            .prop_map(|set| set.into_iter().collect::<Vec<_>>());
        let modes = (any::<bool>(), 0usize..4, 0u8..3, any::<bool>());
        let times = (1u64..100_000, 0u64..10_000, 0u64..=60_000, 0u64..1000);
        let sizes = (1u64..4096, 1u64..=1024, 1usize..=64, any::<bool>());
        (mirrors, modes, times, sizes).prop_map(
            |(mirrors, (sync, ack, on_failure, repair), times, sizes)| {
                let (sync_s, drain_m, flush_ms, verify_h) = times;
                let (backlog_m, segment_m, threads, fail_when_full) = sizes;
                ValidOptions {
                    ack: (ack > 0).then(|| ack.min(mirrors.len())),
                    mirrors,
                    mode: if sync { Mode::Sync } else { Mode::Async },
                    sync_timeout: Duration::from_secs(sync_s),
                    drain_timeout: Duration::from_secs(drain_m * 60),
                    flush_interval: Duration::from_millis(flush_ms),
                    max_backlog_bytes: backlog_m << 20,
                    segment_size_bytes: segment_m << 20,
                    threads,
                    when_full: if fail_when_full {
                        WhenFull::Fail
                    } else {
                        WhenFull::Block
                    },
                    on_mirror_failure: match on_failure {
                        0 => OnMirrorFailure::Block,
                        1 => OnMirrorFailure::Fail,
                        _ => OnMirrorFailure::Degrade,
                    },
                    verify_interval: Duration::from_secs(verify_h * 3600),
                    repair: repair && verify_h > 0,
                }
            },
        )
    }

    /// Generates a config file line with a known key and a value of any TOML type.
    fn arb_toml_line() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[a-z0-9:/._ -]{0,12}".prop_map(|t| format!("{t:?}")),
            prop::collection::vec("[a-z:/]{0,6}", 0..3).prop_map(|v| format!("{v:?}")),
            any::<f32>().prop_map(|f| format!("{f:?}")),
            "[a-z]{1,5}".prop_map(|k| format!("{{ {k} = 1 }}")),
        ];
        (prop::sample::select(KEYS), value).prop_map(|(key, value)| format!("{key} = {value}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn options_survive_arbitrary_text(texts in prop::collection::vec(any::<String>(), 0..4)) {
            if let Err(e) = build(Path::new("/b"), Path::new("/m"), None, &texts) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn options_survive_known_keys_with_any_value(
            items in prop::collection::vec((prop::sample::select(KEYS), ".{0,16}"), 0..8),
        ) {
            let text: Vec<String> = items.iter().map(|(k, v)| format!("{k}={v}")).collect();
            match build(Path::new("/b"), Path::new("/m"), None, &[text.join(",")]) {
                Ok(config) => {
                    prop_assert!(!config.mirrors.is_empty());
                    prop_assert!((1..=config.mirrors.len()).contains(&config.ack_count()));
                    prop_assert!((1..=64).contains(&config.threads));
                    prop_assert!(config.max_backlog_bytes >= 1 << 20);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn value_parsers_survive_arbitrary_text(text in any::<String>()) {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
            let _ = MirrorSpec::parse(&text);
            let _ = build_s3_options(std::slice::from_ref(&text));
        }

        #[test]
        fn options_round_trip(
            options in arb_valid_options(),
            breaks in prop::collection::vec(any::<bool>(), 16),
        ) {
            // Spread the items over several -o values at random points.
            let mut texts = vec![String::new()];
            for (i, item) in options.items().into_iter().enumerate() {
                let text = texts.last_mut().unwrap();
                if !text.is_empty() {
                    text.push(',');
                }
                text.push_str(&item);
                if breaks[i % breaks.len()] {
                    texts.push(String::new());
                }
            }
            let config = build(Path::new("/b"), Path::new("/m"), None, &texts).unwrap();
            let mirrors: Vec<MirrorSpec> = options
                .mirrors
                .iter()
                .map(|path| MirrorSpec::Dir(PathBuf::from(path)))
                .collect();
            prop_assert_eq!(&config.mirrors, &mirrors);
            prop_assert_eq!(config.mode, options.mode);
            prop_assert_eq!(
                config.ack,
                options.ack.map_or(Ack::All, Ack::Count)
            );
            prop_assert_eq!(config.sync_timeout, options.sync_timeout);
            prop_assert_eq!(config.drain_timeout, options.drain_timeout);
            prop_assert_eq!(config.flush_interval, options.flush_interval);
            prop_assert_eq!(config.max_backlog_bytes, options.max_backlog_bytes);
            prop_assert_eq!(config.segment_size_bytes, options.segment_size_bytes);
            prop_assert_eq!(config.threads, options.threads);
            prop_assert_eq!(config.when_full, options.when_full);
            prop_assert_eq!(config.on_mirror_failure, options.on_mirror_failure);
            prop_assert_eq!(config.verify_interval, options.verify_interval);
            prop_assert_eq!(config.repair, options.repair);
        }
    }

    proptest! {
        // Each case writes a file, so fewer of them.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn config_file_survives_wrong_types(lines in prop::collection::vec(arb_toml_line(), 0..5)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.toml");
            std::fs::write(&path, lines.join("\n")).unwrap();
            if let Err(e) = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]) {
                prop_assert!(!e.to_string().is_empty());
            }
        }

        #[test]
        fn config_file_survives_arbitrary_text(text in any::<String>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.toml");
            std::fs::write(&path, &text).unwrap();
            if let Err(e) = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn metrics_option_and_file_key() {
        use crate::metrics::Address;
        let config = build_args(&["mirror=dir:/a,metrics=127.0.0.1:9100"]).unwrap();
        let expected = Address::Tcp("127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.metrics, Some(expected));
        assert_eq!(build_args(&["mirror=dir:/a"]).unwrap().metrics, None);

        let message = build_args(&["mirror=dir:/a,metrics=host:9100"])
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("invalid value \"host:9100\" for metrics: expected IP:PORT"),
            "{message}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "mirror = \"dir:/x\"\nmetrics = \"/run/m.sock\"\n").unwrap();
        let config = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]).unwrap();
        let expected = Address::Unix(PathBuf::from("/run/m.sock"));
        assert_eq!(config.metrics, Some(expected));
    }

    #[test]
    fn config_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "mirror = \"dir:/d\"\nmode = \"sync\"\nack = 1\n\
             [mirrors.offsite]\nurl = \"s3://logs/h1\"\n\
             [mirrors.nfs]\nurl = \"dir:/nfs\"\n\
             [[rule]]\npath = \"audit/**\"\nmirrors = [\"offsite\", \"nfs\"]\n\
             [[rule]]\npath = \"app/*.log\"\nmirrors = [\"nfs\"]\nmode = \"async\"\n\
             [[rule]]\npath = \"debug/**\"\nmirrors = []\n",
        )
        .unwrap();
        let config = build(Path::new("/b"), Path::new("/m"), Some(&path), &[]).unwrap();
        let names: Vec<String> = config.mirrors.iter().map(MirrorSpec::name).collect();
        assert_eq!(names, ["dir:/d", "dir:/nfs", "s3://logs/h1"]);
        assert_eq!(
            config.mirror_names,
            [None, Some("nfs".to_string()), Some("offsite".to_string())]
        );
        assert_eq!(config.default_mirrors(), [0]);
        assert_eq!(config.ack_count(), 1);
        let rule = |path: &str, mirrors: Vec<usize>, mode, ack| PathRule {
            path: path.into(),
            mirrors,
            mode,
            ack,
        };
        assert_eq!(
            config.rules,
            [
                rule("audit/**", vec![2, 1], Mode::Sync, 2),
                rule("app/*.log", vec![1], Mode::Async, 1),
                rule("debug/**", vec![], Mode::Sync, 0),
            ]
        );

        let config = build(
            Path::new("/b"),
            Path::new("/m"),
            Some(&path),
            &["mirror=dir:/e,mode=async".into()],
        )
        .unwrap();
        assert_eq!(config.default_mirrors(), [0]);
        assert_eq!(config.mirrors[0].name(), "dir:/e");
        assert_eq!(config.rules[0].mode, Mode::Async);
    }

    #[test]
    fn config_file_merges_with_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "mirror = [\"dir:/x\", \"dir:/y\"]\nmode = \"sync\"\nack = 1\n",
        )
        .unwrap();
        let config = build(
            Path::new("/b"),
            Path::new("/m"),
            Some(&path),
            &["mode=async".into()],
        )
        .unwrap();
        assert_eq!(config.mirrors.len(), 2);
        assert_eq!(config.mode, Mode::Async);
        std::fs::write(&path, "mirror = 3\n").unwrap();
        let message = build(Path::new("/b"), Path::new("/m"), Some(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("m.toml"), "{message}");
        std::fs::write(&path, "mirrors = \"dir:/x\"\n").unwrap();
        let message = build(Path::new("/b"), Path::new("/m"), Some(&path), &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("mirrors"), "{message}");
    }
}
