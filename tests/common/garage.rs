//! Garage on loopback for the S3 mirror tests. A guard runs `scripts/garage-up` into a
//! temporary directory and stops that server by its pid when dropped, also after a panic.
//! A small S3 client reads and replaces objects behind the mirror's back.
//!
//! Every request goes to the server on 127.0.0.1 with the key `garage-up` created. The
//! environment given to `logmirror` sets credentials, region and endpoint explicitly and
//! turns off the instance metadata lookup, so the SDK never reaches another host.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;

use crate::common::{COMMAND_TIMEOUT, is_process_alive, kill_9, run, wait_until};

/// Environment variable that turns a missing `garage` binary into a test failure instead of
/// a skip. `scripts/test` sets it when it runs as root, after installing Garage.
pub const REQUIRE_GARAGE_VAR: &str = "LOGMIRROR_TESTS_REQUIRE_GARAGE";

/// A single-node Garage server started for one test. Dropping it runs
/// `scripts/garage-down`, which stops the server by its pid.
pub struct Garage {
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    secret: String,
    pub bucket: String,
    pub pid: u32,
}

impl Garage {
    /// Starts a server with one bucket. Returns `None`, after printing why, when `garage`
    /// is not installed and `LOGMIRROR_TESTS_REQUIRE_GARAGE` is not 1; with that variable
    /// set, `scripts/garage-up` installs Garage first.
    pub fn start() -> Option<Garage> {
        let required = std::env::var(REQUIRE_GARAGE_VAR).is_ok_and(|v| v == "1");
        if !required && !is_garage_installed() {
            eprintln!(
                "SKIP: garage is not installed (cargo install garage --locked), and \
                 {REQUIRE_GARAGE_VAR} is not 1"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("logmirror-garage.")
            .tempdir()
            .expect("create Garage directory");
        let exports = garage_up(dir.path());
        let value = |name: &str| {
            exports
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_else(|| panic!("garage-up printed no {name}: {exports:?}"))
        };
        let garage = Garage {
            endpoint: value("AWS_ENDPOINT_URL"),
            region: value("AWS_REGION"),
            key_id: value("AWS_ACCESS_KEY_ID"),
            secret: value("AWS_SECRET_ACCESS_KEY"),
            bucket: value("GARAGE_BUCKET"),
            pid: value("GARAGE_PID").parse().expect("GARAGE_PID is a number"),
            dir,
        };
        assert!(
            garage.endpoint.starts_with("http://127.0.0.1:"),
            "Garage must listen on loopback, not {}",
            garage.endpoint
        );
        Some(garage)
    }

    /// Returns the environment for `logmirror` with this server's key.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env_with_secret(&self.secret)
    }

    /// Returns the environment for `logmirror` with `secret` as the secret key.
    pub fn env_with_secret(&self, secret: &str) -> Vec<(String, String)> {
        s3_env(
            self.dir.path(),
            &self.key_id,
            secret,
            &self.region,
            &self.endpoint,
        )
    }

    /// Returns the secret key, for checking that no output shows it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Runs the `garage` command-line tool against this server, as in
    /// `garage bucket deny --write BUCKET --key logmirror-test`, and asserts that it succeeded.
    pub fn cli(&self, args: &[&str]) -> String {
        let config = self.dir.path().join("garage.toml");
        let out = run(
            Command::new(garage_binary())
                .arg("-c")
                .arg(&config)
                .args(args),
            COMMAND_TIMEOUT,
        );
        out.assert_success(&format!("garage {}", args.join(" ")));
        out.stdout
    }

    /// Creates the key `name` with the bucket permissions `flags` (`--read`, `--write`,
    /// `--owner`) and returns its environment for `logmirror` and a client that uses it.
    pub fn key_with(&self, name: &str, flags: &[&str]) -> (Vec<(String, String)>, TestClient) {
        let created = self.cli(&["key", "create", name]);
        let field = |label: &str| {
            created
                .lines()
                .find_map(|line| line.strip_prefix(label))
                .map(|value| value.trim().to_string())
                .unwrap_or_else(|| panic!("garage key create printed no {label:?}: {created}"))
        };
        let (key_id, secret) = (field("Key ID:"), field("Secret key:"));
        let mut allow = vec!["bucket", "allow"];
        allow.extend_from_slice(flags);
        allow.extend_from_slice(&[self.bucket.as_str(), "--key", name]);
        self.cli(&allow);
        let env = s3_env(
            self.dir.path(),
            &key_id,
            &secret,
            &self.region,
            &self.endpoint,
        );
        let client = TestClient::new(&self.endpoint, &self.region, &key_id, &secret, &self.bucket);
        (env, client)
    }

    /// Returns the mirror spec `s3://BUCKET/PREFIX` of the test bucket.
    pub fn mirror_spec(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Runs `logmirror restore` of the mirror at `prefix` into `dir` with `extra` arguments.
    pub fn restore(&self, prefix: &str, dir: &Path, extra: &[&str]) -> crate::common::CmdOutput {
        let spec = self.mirror_spec(prefix);
        let dir = dir.to_str().expect("test paths are UTF-8");
        let mut args = vec!["restore", spec.as_str(), dir];
        args.extend_from_slice(extra);
        crate::common::logmirror_env(&args, &self.env())
    }

    /// Returns the numbers of the journal objects of the mirror at `prefix`, in order.
    pub fn journal_numbers(&self, prefix: &str) -> Vec<u64> {
        let folder = format!("{prefix}/.logmirror/journal/");
        self.client()
            .list(&folder)
            .iter()
            .map(|key| {
                let name = key.strip_prefix(&folder).expect("key under prefix");
                let digits = name.strip_suffix(".lmj").expect("journal object key");
                digits.parse().expect("20 digits")
            })
            .collect()
    }

    /// Waits until a fold of the mirror at `prefix`, mounted at `mnt`, covered every
    /// journal object up to `number` and removed them, and returns the snapshot number.
    pub fn wait_folded(&self, prefix: &str, mnt: &Path, number: u64) -> u64 {
        wait_until(
            Duration::from_secs(120),
            "a fold covering the journal objects",
            || {
                let fold = crate::common::last_fold(mnt)?;
                if let Some(error) = fold["error"].as_str() {
                    return Err(format!("fold failed: {error}"));
                }
                let snapshot = fold["snapshot"].as_u64().unwrap_or(0);
                let objects = self.journal_numbers(prefix);
                if snapshot < number || objects.iter().any(|n| *n <= snapshot) {
                    return Err(format!("last_fold {fold}, journal objects {objects:?}"));
                }
                Ok(snapshot)
            },
        )
    }

    /// Returns `-o` options naming the endpoint and region explicitly.
    pub fn options(&self) -> String {
        format!("endpoint={},region={}", self.endpoint, self.region)
    }

    /// Returns a client for reading and writing objects directly.
    pub fn client(&self) -> TestClient {
        TestClient::new(
            &self.endpoint,
            &self.region,
            &self.key_id,
            &self.secret,
            &self.bucket,
        )
    }
}

/// Returns the environment for `logmirror` with the given key, region and endpoint. The
/// AWS config and credential files point at the missing file `DIR/no-aws-config`, so that
/// no profile of the machine is used.
pub fn s3_env(
    dir: &Path,
    key_id: &str,
    secret: &str,
    region: &str,
    endpoint: &str,
) -> Vec<(String, String)> {
    let none = dir.join("no-aws-config");
    let pairs = [
        ("AWS_ACCESS_KEY_ID", key_id),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", region),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", path_str(&none)),
        ("AWS_SHARED_CREDENTIALS_FILE", path_str(&none)),
    ];
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Garage {
    /// Stops the server with `scripts/garage-down` and waits until its process is gone.
    pub fn stop(&self) {
        let out = run(
            Command::new(script("garage-down")).arg(self.dir.path()),
            COMMAND_TIMEOUT,
        );
        out.assert_success("scripts/garage-down");
        // After a SIGKILL the process may take a moment to go away.
        wait_until(
            COMMAND_TIMEOUT,
            "the stopped garage to exit",
            || match is_process_alive(self.pid) {
                true => Err(format!("garage pid {} still runs", self.pid)),
                false => Ok(()),
            },
        );
    }

    /// Starts the stopped server again, with the same ports, data, key and bucket.
    pub fn restart(&mut self) {
        let exports = garage_up(self.dir.path());
        let endpoint = exports.iter().find(|(k, _)| k == "AWS_ENDPOINT_URL");
        assert_eq!(
            endpoint.map(|(_, v)| v.as_str()),
            Some(self.endpoint.as_str())
        );
        let pid = exports.iter().find(|(k, _)| k == "GARAGE_PID");
        self.pid = pid
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("garage-up printed no GARAGE_PID: {exports:?}"));
    }
}

/// Runs `scripts/garage-up DIR` and returns the variables of the `export` lines it printed.
fn garage_up(dir: &Path) -> Vec<(String, String)> {
    let out = run(
        Command::new(script("garage-up")).arg(dir),
        // Long enough for the installation when the binary is missing.
        Duration::from_secs(1800),
    );
    out.assert_success("scripts/garage-up");
    out.stdout
        .lines()
        .filter_map(|line| line.strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

impl Drop for Garage {
    fn drop(&mut self) {
        let out = run(
            Command::new(script("garage-down")).arg(self.dir.path()),
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            eprintln!("scripts/garage-down failed: {out}");
        }
        if is_process_alive(self.pid) {
            eprintln!("garage pid {} survived garage-down; killing it", self.pid);
            kill_9(self.pid);
            wait_until(
                Duration::from_secs(30),
                "garage to exit",
                || match is_process_alive(self.pid) {
                    true => Err(format!("pid {} still alive", self.pid)),
                    false => Ok(()),
                },
            );
        }
    }
}

/// Returns the path of the `garage` binary: on PATH, else in cargo's bin directory.
pub fn garage_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("garage"))
            .find(|path| path.is_file())
    });
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    on_path
        .or_else(|| cargo_home.map(|home| home.join("bin/garage")))
        .expect("garage is installed")
}

pub fn is_garage_installed() -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("garage").is_file()));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    on_path || cargo_home.is_some_and(|home| home.join("bin/garage").is_file())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// An S3 client for the test's bucket, blocking on its own runtime.
pub struct TestClient {
    runtime: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl TestClient {
    /// Returns a client of the bucket `bucket` at `endpoint`, with path-style requests.
    pub fn new(
        endpoint: &str,
        region: &str,
        key_id: &str,
        secret: &str,
        bucket: &str,
    ) -> TestClient {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("start a tokio runtime");
        let credentials = Credentials::new(key_id, secret, None, None, "test");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .credentials_provider(credentials)
            .region(Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build();
        TestClient {
            runtime,
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: bucket.to_string(),
        }
    }

    /// Stores `body` under `key`, and returns the error instead of panicking, for polling a
    /// store that is still starting.
    pub fn try_put(&self, key: &str, body: Vec<u8>) -> Result<(), String> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        self.runtime
            .block_on(request.send())
            .map(|_| ())
            .map_err(|e| format!("put {key}: {e:?}"))
    }

    /// Returns every key below `prefix`, in order.
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let request = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token);
            let page = self
                .runtime
                .block_on(request.send())
                .unwrap_or_else(|e| panic!("list {prefix}: {e:?}"));
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(String::from)),
            );
            token = page.next_continuation_token().map(String::from);
            if token.is_none() {
                return keys;
            }
        }
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        let request = self.client.get_object().bucket(&self.bucket).key(key);
        self.runtime.block_on(async {
            let output = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
            let body = output
                .body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("read body of {key}: {e:?}"));
            body.into_bytes().to_vec()
        })
    }

    /// Deletes the object at `key`.
    pub fn delete(&self, key: &str) {
        let request = self.client.delete_object().bucket(&self.bucket).key(key);
        self.runtime
            .block_on(request.send())
            .unwrap_or_else(|e| panic!("delete {key}: {e:?}"));
    }

    /// Downloads a whole object; `None` when there is no object at `key`.
    pub fn try_get(&self, key: &str) -> Option<Vec<u8>> {
        let request = self.client.get_object().bucket(&self.bucket).key(key);
        self.runtime.block_on(async {
            let output = match request.send().await {
                Ok(output) => output,
                Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return None;
                }
                Err(e) => panic!("get {key}: {e:?}"),
            };
            let body = output
                .body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("read body of {key}: {e:?}"));
            Some(body.into_bytes().to_vec())
        })
    }

    /// Returns the size of the object at `key`, or `None` when there is none.
    pub fn size(&self, key: &str) -> Option<u64> {
        let request = self.client.head_object().bucket(&self.bucket).key(key);
        match self.runtime.block_on(request.send()) {
            Ok(output) => Some(output.content_length().unwrap_or(0) as u64),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => None,
            Err(e) => panic!("head {key}: {e:?}"),
        }
    }

    /// Stores `body` under `key` with user metadata `metadata`, replacing any object there.
    pub fn put_with_metadata(&self, key: &str, body: Vec<u8>, metadata: &[(&str, &str)]) {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        for (name, value) in metadata {
            request = request.metadata(*name, *value);
        }
        self.runtime
            .block_on(request.send())
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
    }

    /// Downloads the object at `key`, sending the SSE-C headers of `sse_c_key` if given.
    /// Returns the HTTP status and error code of a failure.
    pub fn get_with_key(&self, key: &str, sse_c_key: Option<&[u8; 32]>) -> Result<Vec<u8>, String> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(secret) = sse_c_key {
            use md5::Digest as _;
            let md5 = md5::Md5::digest(secret);
            request = request
                .sse_customer_algorithm("AES256")
                .sse_customer_key(aws_smithy_types::base64::encode(secret))
                .sse_customer_key_md5(aws_smithy_types::base64::encode(md5.as_slice()));
        }
        self.runtime.block_on(async {
            let output = request.send().await.map_err(|e| {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.as_service_error().and_then(|s| {
                    aws_sdk_s3::error::ProvideErrorMetadata::code(s).map(str::to_owned)
                });
                format!("HTTP {status:?} {code:?}")
            })?;
            let body = output.body.collect().await.map_err(|e| e.to_string())?;
            Ok(body.into_bytes().to_vec())
        })
    }

    /// Stores `body` under `key`, replacing any object there.
    pub fn put(&self, key: &str, body: Vec<u8>) {
        self.try_put(key, body).unwrap_or_else(|e| panic!("{e}"));
    }
}
