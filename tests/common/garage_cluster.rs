//! A three-node Garage cluster on loopback with replication factor 3, for the fault suite.
//! The fixture starts each `garage server` process itself, kills a node and starts it again
//! by its pid, and kills every node that still runs when it is dropped, also after a panic.
//!
//! Every port is on 127.0.0.1, and the environment given to `logmirror` sets credentials,
//! region and endpoint explicitly and turns off the instance metadata lookup.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{COMMAND_TIMEOUT, CmdOutput, kill_9, run, wait_until};
use crate::garage::{REQUIRE_GARAGE_VAR, TestClient, garage_binary, is_garage_installed, s3_env};

/// Nodes in the cluster; also its replication factor, so every node stores every object.
pub const NODES: usize = 3;
const REGION: &str = "garage";
const BUCKET: &str = "logmirror-test";
/// Deadline for a node to respond after it started, and for the cluster to serve requests.
const START_TIMEOUT: Duration = Duration::from_secs(60);

struct Node {
    config: PathBuf,
    log: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    id: String,
    process: Option<Child>,
}

/// A running cluster with one key and one bucket.
pub struct GarageCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    pub key_id: String,
    secret: String,
    pub bucket: String,
}

impl GarageCluster {
    /// Starts three nodes, connects them, applies a layout with one zone per node, and
    /// creates a key and a bucket. Returns `None`, after printing why, when `garage` is not
    /// installed and `LOGMIRROR_TESTS_REQUIRE_GARAGE` is not 1.
    pub fn start() -> Option<GarageCluster> {
        if !is_garage_installed() {
            if std::env::var(REQUIRE_GARAGE_VAR).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_GARAGE_VAR}=1 but garage is not installed");
            }
            eprintln!("SKIP: garage is not installed (cargo install garage --locked)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("logmirror-garage-cluster.")
            .tempdir()
            .expect("create Garage cluster directory");
        let rpc_secret = random_hex(32);
        let ports = free_ports(3 * NODES);
        let nodes = (0..NODES)
            .map(|n| {
                let node_dir = dir.path().join(format!("node{n}"));
                fs::create_dir(&node_dir).expect("create node directory");
                let [rpc_port, s3_port, admin_port] =
                    [ports[3 * n], ports[3 * n + 1], ports[3 * n + 2]];
                let config = node_dir.join("garage.toml");
                fs::write(
                    &config,
                    node_config(&node_dir, &rpc_secret, rpc_port, s3_port, admin_port),
                )
                .expect("write node config");
                Node {
                    config,
                    log: node_dir.join("garage.log"),
                    rpc_port,
                    s3_port,
                    id: String::new(),
                    process: None,
                }
            })
            .collect();
        let mut cluster = GarageCluster {
            dir,
            nodes,
            key_id: String::new(),
            secret: String::new(),
            bucket: BUCKET.to_string(),
        };
        for n in 0..NODES {
            cluster.start_node(n);
        }
        cluster.form_layout();
        cluster.create_key_and_bucket();
        cluster.wait_until_serving();
        Some(cluster)
    }

    fn start_node(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone node log"))
            .stderr(log)
            .spawn()
            .expect("spawn garage server");
        node.process = Some(child);
        let config = node.config.clone();
        let id = wait_until(START_TIMEOUT, "garage node to answer on RPC", || {
            let out = garage_cli(&config, &["node", "id", "-q"]);
            match out.status.success() {
                true => Ok(out.stdout.trim().to_string()),
                false => Err(out.to_string()),
            }
        });
        let id = id.split('@').next().unwrap_or_default().to_string();
        self.nodes[n].id = id;

        // `garage node id` reads the node's key without the RPC listener, so wait for the
        // port as well. A node that exited, as when another program took its port, fails here.
        let address = format!("127.0.0.1:{}", self.nodes[n].rpc_port);
        let log = self.nodes[n].log.clone();
        let process = self.nodes[n].process.as_mut().expect("node runs");
        wait_until(START_TIMEOUT, "garage node to listen on RPC", || {
            if let Ok(Some(status)) = process.try_wait() {
                let output = fs::read_to_string(&log).unwrap_or_default();
                panic!("garage node exited with {status} during start-up: {output}");
            }
            TcpStream::connect(&address)
                .map(drop)
                .map_err(|e| format!("connect {address}: {e}"))
        });
    }

    fn form_layout(&self) {
        for node in &self.nodes[1..] {
            let address = format!("{}@127.0.0.1:{}", node.id, node.rpc_port);
            self.cli(0, &["node", "connect", &address]);
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let zone = format!("zone{n}");
            self.cli(0, &["layout", "assign", "-z", &zone, "-c", "1G", &node.id]);
        }
        self.cli(0, &["layout", "apply", "--version", "1"]);
    }

    fn create_key_and_bucket(&mut self) {
        let info = self.cli(0, &["key", "create", "logmirror-test"]);
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_string())
                .unwrap_or_else(|| panic!("garage key create printed no {name:?}: {info}"))
        };
        self.key_id = field("Key ID:");
        self.secret = field("Secret key:");
        self.cli(0, &["bucket", "create", BUCKET]);
        self.cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                BUCKET,
                "--key",
                "logmirror-test",
            ],
        );
    }

    /// Waits until every node accepts a PUT, which needs a write quorum of the layout.
    fn wait_until_serving(&self) {
        for n in 0..NODES {
            let client = self.client(n);
            wait_until(START_TIMEOUT, "cluster node to accept a PUT", || {
                client.try_put("probe-at-start", b"probe".to_vec())
            });
        }
    }

    /// Runs the `garage` command-line tool against node `n` and asserts that it succeeded.
    pub fn cli(&self, n: usize, args: &[&str]) -> String {
        let out = garage_cli(&self.nodes[n].config, args);
        out.assert_success(&format!("garage {}", args.join(" ")));
        out.stdout
    }

    /// Returns the S3 endpoint of node `n`.
    pub fn endpoint(&self, n: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[n].s3_port)
    }

    /// Returns `-o` options naming node `n`'s endpoint and the region.
    pub fn options(&self, n: usize) -> String {
        format!("endpoint={},region={REGION}", self.endpoint(n))
    }

    /// Returns the environment for `logmirror` with the cluster's key and node `n`'s
    /// endpoint.
    pub fn env(&self, n: usize) -> Vec<(String, String)> {
        s3_env(
            self.dir.path(),
            &self.key_id,
            &self.secret,
            REGION,
            &self.endpoint(n),
        )
    }

    /// Returns a client of the bucket through node `n`.
    pub fn client(&self, n: usize) -> TestClient {
        TestClient::new(
            &self.endpoint(n),
            REGION,
            &self.key_id,
            &self.secret,
            &self.bucket,
        )
    }

    /// Kills node `n` with SIGKILL and reaps it: the loss of a node without warning.
    pub fn kill_node(&mut self, n: usize) {
        let mut child = self.nodes[n].process.take().expect("node runs");
        kill_9(child.id());
        child.wait().expect("reap killed garage node");
    }

    /// Starts node `n` again on its ports and data, and waits until it accepts a PUT.
    pub fn restart_node(&mut self, n: usize) {
        assert!(self.nodes[n].process.is_none(), "node {n} still runs");
        self.start_node(n);
        let client = self.client(n);
        wait_until(START_TIMEOUT, "restarted node to accept a PUT", || {
            client.try_put("probe-after-restart", b"probe".to_vec())
        });
    }

    /// Returns the directory that contains each node's config, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn garage_cli(config: &Path, args: &[&str]) -> CmdOutput {
    run(
        Command::new(garage_binary())
            .arg("-c")
            .arg(config)
            .args(args),
        COMMAND_TIMEOUT,
    )
}

fn node_config(
    dir: &Path,
    rpc_secret: &str,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
) -> String {
    let dir = dir.display();
    let admin_token = random_hex(32);
    format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {NODES}

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#
    )
}

/// Returns `count` distinct loopback ports that were free a moment ago. Another program
/// could take one before Garage binds it; the node then fails to start and the wait for it
/// reports the node's output.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
