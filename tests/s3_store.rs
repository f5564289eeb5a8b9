//! The S3 mirror's guards around its store, against a real single-node Garage on loopback.
//! Cases: the lease on a prefix (a second daemon is rejected, `takeover=true` moves it, the
//! old owner stops), the probe of conditional writes and checksums shown in status, and the
//! position check against the objects in the store (lost or restored state directory,
//! objects removed). Also TLS through a proxy with a test CA, plain http rejected before any
//! connection, and store errors at run time.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    CmdOutput, EXIT_RUNTIME, EXIT_USAGE, Mode, Mount, STATE_DIR, TestDirs, assert_same_tree,
    logmirror, logmirror_env, path_str, tree_sha256,
};
use garage::Garage;

const PREFIX: &str = "host1";
const JOURNAL_PREFIX: &str = "host1/.logmirror/journal/";
const LEASE_KEY: &str = "host1/.logmirror/lease.json";

fn mirror_spec(garage: &Garage) -> String {
    format!("s3://{}/{PREFIX}", garage.bucket)
}

fn mount_options(garage: &Garage, mode: Mode) -> Vec<String> {
    vec![
        format!("mirror={}", mirror_spec(garage)),
        garage.options(),
        format!("mode={}", mode.as_str()),
    ]
}

/// Runs `logmirror status MNT --json` and returns the first mirror's entry.
fn mirror_status(mnt: &Path) -> serde_json::Value {
    let out = logmirror(&["status", path_str(mnt), "--json"]);
    out.assert_success("logmirror status --json");
    let status: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"));
    status["mirrors"][0].clone()
}

/// Returns the keys of the journal objects under the test prefix.
fn journal_keys(garage: &Garage) -> Vec<String> {
    garage.client().list(JOURNAL_PREFIX)
}

/// Returns the key of journal object `number` of the test mirror.
fn object_key(number: u64) -> String {
    format!("{JOURNAL_PREFIX}{number:020}.lmj")
}

/// Asserts that the journal keys are objects 1 to `count` with no gap.
fn assert_numbered(keys: &[String], count: usize) {
    let expected: Vec<String> = (1..=count as u64).map(object_key).collect();
    assert_eq!(keys, expected.as_slice(), "journal keys");
}

/// Returns the lease object as JSON, or `None` when it does not exist.
fn lease(garage: &Garage) -> Option<serde_json::Value> {
    let keys = garage.client().list(LEASE_KEY);
    if keys.is_empty() {
        return None;
    }
    let bytes = garage.client().get(LEASE_KEY);
    Some(serde_json::from_slice(&bytes).expect("lease object is JSON"))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0, "gethostname: {}", std::io::Error::last_os_error());
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn restore_into(garage: &Garage, dir: &Path, extra: &[&str]) -> CmdOutput {
    let spec = mirror_spec(garage);
    let mut args = vec!["restore", spec.as_str(), path_str(dir)];
    args.extend_from_slice(extra);
    logmirror_env(&args, &garage.env())
}

#[test]
fn s3_lease_second_daemon_and_takeover() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let first_dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Sync);
    // A sync-mode write of the first daemon fails with EIO after 5 s once it lost the lease.
    let mut first_options = options.clone();
    first_options.push("sync_timeout=5s,on_mirror_failure=fail,drain_timeout=1s".into());
    let first = Mount::with_env(&first_dirs, &first_options, &garage.env());
    fs::write(first_dirs.mnt.join("a.log"), "from the first host\n").expect("write a.log");

    // The probe found what Garage 2.5.0 does: it ignores If-None-Match and checks CRC32C.
    let status = mirror_status(&first_dirs.mnt);
    assert_eq!(status["store"]["conditional_writes"], false, "{status}");
    assert_eq!(status["store"]["checksums"], "verified", "{status}");
    assert_eq!(status["store"]["endpoint"], garage.endpoint.as_str());
    assert_eq!(status["store"]["lease_key"], LEASE_KEY);
    let text = logmirror(&["status", path_str(&first_dirs.mnt)]);
    assert!(
        text.stdout
            .contains("conditional_writes: no, checksums: verified"),
        "{text}"
    );
    let log = first.log_tail(usize::MAX);
    assert!(
        log.contains("WARN") && log.contains("falling back to a read-after-write lease"),
        "{log}"
    );
    // The probe objects are gone again: only the lease, the journal objects and the
    // readable copy of a.log remain.
    let keys = garage.client().list(&format!("{PREFIX}/"));
    let copy_key = format!("{PREFIX}/a.log");
    assert!(
        keys.iter()
            .all(|k| k == LEASE_KEY || k.starts_with(JOURNAL_PREFIX) || *k == copy_key),
        "{keys:?}"
    );
    let held = lease(&garage).expect("lease object while mounted");
    assert_eq!(held["pid"], first.pid(), "{held}");
    assert_eq!(held["host"], hostname().as_str(), "{held}");

    // A second daemon with its own state directory is refused, naming the owner.
    let second_dirs = TestDirs::new(0);
    let out = common::mount_expecting_failure(&second_dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains(&mirror_spec(&garage)), "{out}");
    let owner = format!(
        "is owned by host {} (pid {}, mounted at ",
        hostname(),
        first.pid()
    );
    assert!(out.stderr.contains(&owner), "{out}");
    assert!(
        out.stderr.contains(held["mounted_at"].as_str().unwrap()),
        "{out}"
    );
    assert!(out.stderr.contains("takeover=true"), "{out}");
    assert_eq!(
        lease(&garage),
        Some(held.clone()),
        "the refused mount changed the lease"
    );

    // With takeover=true the second daemon takes the prefix; the first one stops storing.
    let mut takeover = options.clone();
    takeover.push("takeover=true".into());
    let objects_before = journal_keys(&garage).len();
    let second = Mount::with_env(&second_dirs, &takeover, &garage.env());
    let taken = lease(&garage).expect("lease after the takeover");
    assert_eq!(taken["pid"], second.pid(), "{taken}");
    assert!(
        second
            .log_tail(usize::MAX)
            .contains("took over the lease of host"),
        "{}",
        second.log_tail(4096)
    );
    fs::write(second_dirs.mnt.join("b.log"), "from the second host\n").expect("write b.log");

    // The first daemon's next write cannot be confirmed: its lease check fails.
    let path = first_dirs.mnt.join("late.log");
    let writer = std::thread::spawn(move || fs::write(path, "too late\n"));
    let error = common::wait_until(Duration::from_secs(60), "first mirror down", || {
        let status = mirror_status(&first_dirs.mnt);
        match status["last_error"].as_str() {
            Some(error) if status["state"] == "down" => Ok(error.to_string()),
            _ => Err(status.to_string()),
        }
    });
    let lost = format!("lost the lease of the prefix to host {}", hostname());
    assert!(error.contains(&lost), "{error}");
    assert!(error.contains(&format!("pid {}", second.pid())), "{error}");
    // Its readable copies stop too: the new owner writes them now.
    let stopped = mirror_status(&first_dirs.mnt)["copies"]["stopped"].clone();
    let held_by = format!("the lease {LEASE_KEY} is now held by host {}", hostname());
    assert!(
        stopped.as_str().is_some_and(|s| s.starts_with(&held_by)),
        "{stopped}"
    );
    let text = logmirror(&["status", path_str(&first_dirs.mnt)]);
    assert!(
        text.stdout.contains("readable copies stopped: the lease"),
        "{text}"
    );

    second
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("sync of the second daemon");
    let keys = journal_keys(&garage);
    assert!(keys.len() > objects_before, "{keys:?}");
    assert_numbered(&keys, keys.len());
    let backing = tree_sha256(&second_dirs.backing, &[STATE_DIR]);
    second.unmount();
    assert_eq!(
        lease(&garage),
        None,
        "a clean unmount leaves the lease behind"
    );

    // The bucket rebuilds the second daemon's tree, without the first one's late write.
    let restored = second_dirs.root.join("restored");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "second backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
    assert!(!restored.join("late.log").exists());

    // The first daemon's late write was never confirmed.
    let written = writer.join().expect("writer thread");
    let errno = written.as_ref().err().and_then(|e| e.raw_os_error());
    assert_eq!(errno, Some(libc::EIO), "late write: {written:?}");
    drop(first);
}

#[test]
fn s3_lost_state_dir_continues_numbering() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Sync);
    let mut first = Mount::with_env(&dirs, &options, &garage.env());
    for i in 0..5 {
        fs::write(dirs.mnt.join(format!("f{i}.log")), format!("line {i}\n")).expect("write");
    }
    let kept: Vec<(String, Vec<u8>)> = journal_keys(&garage)
        .into_iter()
        .map(|key| {
            let bytes = garage.client().get(&key);
            (key, bytes)
        })
        .collect();
    assert_numbered(
        &kept.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        kept.len(),
    );

    // The host crashes and loses its state directory: a new journal, a lease left behind.
    first.kill_daemon();
    first.clear_dead();
    drop(first);
    fs::remove_dir_all(dirs.backing.join(STATE_DIR)).expect("remove the state directory");

    let out = common::mount_expecting_failure(&dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("is owned by host"), "{out}");
    assert!(out.stderr.contains("lost its state directory"), "{out}");

    let mut takeover = options.clone();
    takeover.push("takeover=true".into());
    let second = Mount::with_env(&dirs, &takeover, &garage.env());
    fs::write(dirs.mnt.join("after.log"), "after the loss\n").expect("write after.log");
    second
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = second.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    second.unmount();

    // Numbering went on after the highest object, and no old object was rewritten.
    let keys = journal_keys(&garage);
    assert!(keys.len() > kept.len(), "{keys:?}");
    assert_numbered(&keys, keys.len());
    for (key, bytes) in &kept {
        assert!(garage.client().get(key) == *bytes, "{key} was overwritten");
    }
    let restored = dirs.root.join("restored");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}

#[test]
fn s3_restored_state_dir_refused() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Async);
    let state = dirs.backing.join(STATE_DIR);
    let backup = dirs.root.join("state-backup");

    let mount = Mount::with_env(&dirs, &options, &garage.env());
    fs::write(dirs.mnt.join("a.log"), "first\n").expect("write a.log");
    mount.unmount();
    copy_tree(&state, &backup);

    let mount = Mount::with_env(&dirs, &options, &garage.env());
    fs::write(dirs.mnt.join("b.log"), "second\n").expect("write b.log");
    mount.unmount();
    let keys_before = journal_keys(&garage);

    // The state directory comes back from the backup, older than the bucket.
    fs::remove_dir_all(&state).expect("remove state");
    copy_tree(&backup, &state);
    let out = common::mount_expecting_failure(&dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(
        out.stderr
            .contains("the store holds records of this journal up to seq"),
        "{out}"
    );
    assert!(
        out.stderr.contains("but the local journal ends at seq"),
        "{out}"
    );
    assert!(out.stderr.contains("logmirror restore"), "{out}");
    assert_eq!(journal_keys(&garage), keys_before);
    assert_eq!(lease(&garage), None, "the refused mount kept the lease");

    // The remedy the message names: a new journal, then a resync.
    fs::rename(state.join("journal"), dirs.root.join("old-journal")).expect("move journal");
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    mount.unmount();
}

#[test]
fn s3_old_owner_refused_after_handover() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let options = mount_options(&garage, Mode::Async);
    let old_dirs = TestDirs::new(0);
    let mount = Mount::with_env(&old_dirs, &options, &garage.env());
    fs::write(old_dirs.mnt.join("a.log"), "from the old host\n").expect("write a.log");
    mount.unmount();

    // A new host takes the prefix after the old one unmounted cleanly, writes and unmounts.
    let new_dirs = TestDirs::new(0);
    let mount = Mount::with_env(&new_dirs, &options, &garage.env());
    fs::write(new_dirs.mnt.join("b.log"), "from the new host\n").expect("write b.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync on the new host");
    let newer = tree_sha256(&new_dirs.backing, &[STATE_DIR]);
    mount.unmount();
    let keys_before = journal_keys(&garage);

    // The old host comes back with its stale state directory: refused, the store untouched.
    let out = common::mount_expecting_failure(&old_dirs, &options, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("comes from another journal"), "{out}");
    assert!(
        out.stderr.contains("Another daemon took the prefix over"),
        "{out}"
    );
    assert!(out.stderr.contains("logmirror restore"), "{out}");
    assert!(out.stderr.contains("takeover=true"), "{out}");
    // The old journal must go, or the restored directory is refused the same way.
    let journal_dir = old_dirs.backing.join(STATE_DIR).join("journal");
    assert!(
        out.stderr.contains(&format!("move {journal_dir:?} aside")),
        "{out}"
    );
    assert_eq!(journal_keys(&garage), keys_before);
    assert_eq!(lease(&garage), None, "the refused mount kept the lease");
    let restored = old_dirs.root.join("restored");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "new backing",
        &newer,
        "restored",
        &tree_sha256(&restored, &[]),
    );

    // takeover=true is the explicit choice to make the old tree the mirror's content again.
    let mut takeover = options.clone();
    takeover.push("takeover=true".into());
    let mount = Mount::with_env(&old_dirs, &takeover, &garage.env());
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify after the takeover: {out}");
    let older = tree_sha256(&old_dirs.backing, &[STATE_DIR]);
    mount.unmount();
    let restored = old_dirs.root.join("restored-after-takeover");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "old backing",
        &older,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}

#[test]
fn s3_removed_objects_force_resync() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let options = mount_options(&garage, Mode::Async);
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    fs::write(dirs.mnt.join("a.log"), "kept locally\n").expect("write a.log");
    mount.unmount();
    for key in journal_keys(&garage) {
        garage.client().delete(&key);
    }

    // The cursor records everything as confirmed, but the store lost it, so a resync runs.
    let mount = Mount::with_env(&dirs, &options, &garage.env());
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");
    let log = mount.log_tail(usize::MAX);
    assert!(
        log.contains("the store holds no journal objects, although the cursor says seq"),
        "{log}"
    );
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();
    let restored = dirs.root.join("restored");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
}

/// Copies a directory tree of regular files and directories.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy");
    for entry in fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if kind.is_file() {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A TLS proxy on 127.0.0.1 in front of Garage, serving a certificate signed by a test CA.
struct TlsProxy {
    port: u16,
    /// Connections whose TLS handshake succeeded.
    served: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsProxy {
    fn start(upstream: SocketAddr, cert_pem: &str, key_pem: &str) -> TlsProxy {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake here.
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut garage) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut garage).await;
                });
            }
        });
        TlsProxy {
            port,
            served,
            _runtime: runtime,
        }
    }
}

/// Creates a test CA and a certificate it signed for 127.0.0.1 and localhost. Returns the
/// CA's PEM, the server certificate's PEM and the server key's PEM.
fn test_certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "logmirror test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
    let server = server_params
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    (ca.pem(), server.pem(), server_key.serialize_pem())
}

fn garage_address(garage: &Garage) -> SocketAddr {
    let address = garage
        .endpoint
        .strip_prefix("http://")
        .expect("Garage endpoint is http");
    address.parse().expect("Garage endpoint is IP:PORT")
}

#[test]
fn s3_https_with_ca_file() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let (ca_pem, server_pem, server_key) = test_certificates();
    let proxy = TlsProxy::start(garage_address(&garage), &server_pem, &server_key);
    let dirs = TestDirs::new(0);
    let ca_file = dirs.root.join("ca.pem");
    fs::write(&ca_file, &ca_pem).expect("write ca.pem");
    let https = format!("https://127.0.0.1:{}", proxy.port);
    let options = vec![
        format!("mirror={}", mirror_spec(&garage)),
        format!("endpoint={https},region={}", garage.region),
        format!("ca_file={}", ca_file.display()),
        "mode=sync".to_string(),
    ];

    // Without ca_file the proxy's certificate fails the check against the system roots.
    let untrusted: Vec<String> = options
        .iter()
        .filter(|o| !o.starts_with("ca_file="))
        .cloned()
        .collect();
    let out = common::mount_expecting_failure(&dirs, &untrusted, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("invalid peer certificate"), "{out}");
    assert!(out.stderr.contains("UnknownIssuer"), "{out}");
    // A rejected certificate is not retried.
    assert!(!out.stderr.contains("attempts"), "{out}");
    assert!(out.stderr.contains(&https), "{out}");
    assert_eq!(proxy.served.load(Ordering::SeqCst), 0);
    assert_eq!(journal_keys(&garage), Vec::<String>::new());

    // A file without a certificate is rejected with its path.
    let not_pem = dirs.root.join("not-a-ca.pem");
    fs::write(&not_pem, "hello\n").expect("write not-a-ca.pem");
    let mut bad = untrusted.clone();
    bad.push(format!("ca_file={}", not_pem.display()));
    let out = common::mount_expecting_failure(&dirs, &bad, &garage.env());
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(out.stderr.contains("no CERTIFICATE block found"), "{out}");
    assert!(out.stderr.contains("not-a-ca.pem"), "{out}");

    let mount = Mount::with_env(&dirs, &options, &garage.env());
    fs::write(dirs.mnt.join("tls.log"), "over https\n").expect("write tls.log");
    let status = mirror_status(&dirs.mnt);
    assert_eq!(status["store"]["endpoint"], https.as_str(), "{status}");
    let backing = tree_sha256(&dirs.backing, &[STATE_DIR]);
    mount.unmount();
    assert!(proxy.served.load(Ordering::SeqCst) > 0);

    // The objects reached Garage: a restore straight from it over http rebuilds the tree.
    assert!(!journal_keys(&garage).is_empty());
    let restored = dirs.root.join("restored");
    let out = restore_into(&garage, &restored, &[]);
    assert_eq!(out.code(), 0, "restore: {out}");
    assert_same_tree(
        "backing",
        &backing,
        "restored",
        &tree_sha256(&restored, &[]),
    );
    // Restore takes the same TLS options.
    let again = dirs.root.join("restored-over-https");
    let tls_options = format!("endpoint={https},ca_file={}", ca_file.display());
    let out = restore_into(&garage, &again, &["-o", &tls_options]);
    assert_eq!(out.code(), 0, "restore over https: {out}");
    assert_same_tree("backing", &backing, "restored", &tree_sha256(&again, &[]));
}

#[test]
fn s3_plain_http_refused_before_connecting() {
    let dirs = TestDirs::new(0);
    // 192.0.2.1 is in TEST-NET-1 (RFC 5737), reserved for documentation. Nothing is sent.
    let remote = "http://192.0.2.1:3900";
    let env = offline_env(&dirs.root);
    let options = format!("mirror=s3://logs/{PREFIX},endpoint={remote},region=garage");
    let args = [
        "mount",
        path_str(&dirs.backing),
        path_str(&dirs.mnt),
        "-o",
        &options,
    ];
    let out = logmirror_env(&args, &env);
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(
        out.stderr
            .contains(&format!("endpoint {remote} uses plain http")),
        "{out}"
    );
    assert!(out.stderr.contains("allow_http=true"), "{out}");
    assert!(!common::is_mounted(&dirs.mnt));
    assert!(!dirs.backing.join(STATE_DIR).exists(), "the daemon started");

    let target = dirs.root.join("restored");
    let spec = format!("s3://logs/{PREFIX}");
    let endpoint = format!("endpoint={remote}");
    let out = logmirror_env(
        &["restore", &spec, path_str(&target), "-o", &endpoint],
        &env,
    );
    assert_eq!(out.code(), EXIT_USAGE, "{out}");
    assert!(out.stderr.contains("allow_http=true"), "{out}");

    // The same endpoint from the environment is refused before the first request.
    let mut from_env = env.clone();
    from_env.push(("AWS_ENDPOINT_URL".into(), remote.into()));
    let out = logmirror_env(&["restore", &spec, path_str(&target)], &from_env);
    assert_eq!(out.code(), EXIT_RUNTIME, "{out}");
    assert!(
        out.stderr
            .contains(&format!("endpoint {remote} uses plain http")),
        "{out}"
    );
    assert!(!target.exists(), "restore left {target:?} behind");
}

/// Returns an environment with made-up credentials and no AWS config files, for commands
/// that must fail before any request.
fn offline_env(root: &Path) -> Vec<(String, String)> {
    let none: PathBuf = root.join("no-aws-config");
    let none = path_str(&none).to_string();
    [
        ("AWS_ACCESS_KEY_ID", "GKexample"),
        ("AWS_SECRET_ACCESS_KEY", "example-secret"),
        ("AWS_REGION", "garage"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", none.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", none.as_str()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn s3_access_denied_at_run_time() {
    if !common::can_mount() {
        return;
    }
    let Some(garage) = Garage::start() else {
        return;
    };
    let dirs = TestDirs::new(0);
    let mount = Mount::with_env(&dirs, &mount_options(&garage, Mode::Async), &garage.env());
    fs::write(dirs.mnt.join("a.log"), "allowed\n").expect("write a.log");
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync");

    garage.cli(&[
        "bucket",
        "deny",
        "--read",
        "--write",
        &garage.bucket,
        "--key",
        "logmirror-test",
    ]);
    fs::write(dirs.mnt.join("b.log"), "denied\n").expect("write b.log");
    let error = common::wait_until(Duration::from_secs(60), "mirror down", || {
        let status = mirror_status(&dirs.mnt);
        match status["last_error"].as_str() {
            Some(error) if status["state"] == "down" => Ok(error.to_string()),
            _ => Err(status.to_string()),
        }
    });
    assert!(error.contains("AccessDenied (HTTP 403)"), "{error}");
    assert!(error.contains(&garage.endpoint), "{error}");
    // Let the worker fail several times, then check that the log did not grow per attempt.
    common::wait_until(Duration::from_secs(60), "repeated failures", || {
        let status = mirror_status(&dirs.mnt);
        match status["failed_attempts"].as_u64() {
            Some(n) if n >= 4 => Ok(()),
            other => Err(format!("failed_attempts {other:?}")),
        }
    });
    // The journal worker and the readable copies each warn once.
    let log = mount.log_tail(usize::MAX);
    let denied = |module: &str| {
        log.lines()
            .filter(|l| l.contains("AccessDenied") && l.contains(module))
            .count()
    };
    assert_eq!(
        denied("logmirror::mirror::worker"),
        1,
        "AccessDenied logged per attempt:\n{log}"
    );
    assert!(
        denied("logmirror::mirror::s3::copies") <= 1,
        "AccessDenied logged per copy attempt:\n{log}"
    );

    garage.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        &garage.bucket,
        "--key",
        "logmirror-test",
    ]);
    mount
        .sync(common::SYNC_TIMEOUT_SECS)
        .assert_success("logmirror sync after access came back");
    let status = mirror_status(&dirs.mnt);
    assert_eq!(status["state"], "ok", "{status}");
    let out = mount.verify();
    assert_eq!(out.code(), 0, "verify: {out}");
    mount.unmount();
}
