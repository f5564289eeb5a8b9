//! Command-line interface: `mount`, `status`, `sync`, `verify` and `restore`, each turned into
//! a call of the library and an exit code.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;

use logmirror::control::{self, Request, Response};
use logmirror::journal::Seq;
use logmirror::mirror::s3::ReplayStats;
use logmirror::progress::ProgressLine;
use logmirror::{config, daemon, restore, status};

/// Exit code when the checked condition failed: sync timed out, verify found differences,
/// or a mount failed at run time.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for invalid arguments, options, paths or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of status, sync and verify when no daemon serves the mount point.
pub const EXIT_NOT_SERVED: u8 = 3;

const MOUNT_HELP: &str = "\
Options (-o key=value,... or the same keys in the --config TOML file; -o values override the
file, and mirrors given with -o replace the file's list):
  mirror=dir:/path            directory mirror; repeat for more (default: none, and at
                              least one mirror is required)
  mirror=s3://BUCKET/PREFIX   S3 mirror: journal objects under PREFIX/.logmirror/journal/
                              and a readable copy of each file at PREFIX/PATH
  materialize_interval=DURATION
                              S3: longest wait before a changed file that stays open gets
                              its copy updated (default 10s, 1s to 24h)
  endpoint=URL                S3 endpoint, as in http://127.0.0.1:3900 (default
                              AWS_ENDPOINT_URL, else AWS's endpoint for the region)
  region=NAME                 S3 region (default AWS_REGION or the AWS profile's region)
  path_style=true|false       bucket in the URL path (default true when an endpoint is given)
  ca_file=/path               PEM file of the CAs an https endpoint must chain to, in place of
                              the system's root certificates (default: none, the system's
                              root certificates apply)
  allow_http=true|false       accept plain http to a host that is not loopback (default false)
  encrypt_key=/path           file with a 256-bit key as 64 hex digits (openssl rand -hex 32),
                              mode 600: S3 journal objects and snapshots are encrypted with
                              AES-256-GCM before upload, and the readable copies are off
                              (default: none, objects are stored plain)
  compression=zstd:LEVEL|none compress S3 journal objects and snapshot parts with zstd at
                              LEVEL (1 to 19) before encryption (default zstd:3)
  history=managed|append-only S3: append-only never deletes or overwrites objects under
                              PREFIX/.logmirror/ except the lease, for keys without delete
                              rights; folds then run from `logmirror fold` (default managed)
  retention_lock=DAYS         S3: Object Lock retention on each journal object and snapshot;
                              the bucket must have Object Lock enabled (default: none;
                              1 to 36500)
  retention_lock_mode=compliance|governance
                              S3: Object Lock mode of retention_lock (default compliance)
  sse=aes256|aws:kms|c        S3: server-side encryption of every upload; the store must
                              confirm it at mount (default: none, the bucket's default)
  sse_kms_key_id=ID           S3: KMS key for sse=aws:kms (default: the AWS managed key)
  sse_c_key=/path             S3: file of mode 0600 with the 256-bit key for sse=c, as 32
                              bytes or their base64 (default: none)
  takeover=true|false         take the lease of each S3 prefix even when another daemon owns
                              it, after that daemon's host crashed or was replaced
                              (default false)
  mode=sync|async             sync: a write returns after the mirrors confirmed it;
                              async: after the local commit (default async)
  ack=all|N                   mirrors that must confirm a sync-mode write (default all)
  state=/path                 journal, cursors, control socket, daemon log
                              (default BACKING/.logmirror, hidden from the mount)
  max_backlog=SIZE            async: unconfirmed journal bytes before when_full applies
                              (default 1G, at least 1M)
  when_full=block|fail        async, backlog full: writers wait, or get ENOSPC (default block)
  on_mirror_failure=block|fail|degrade
                              sync, no confirmation within sync_timeout: wait, return EIO, or
                              run async until mirrors catch up (default block)
  sync_timeout=DURATION       how long a sync-mode write waits for mirrors before
                              on_mirror_failure applies (default 30s)
  drain_timeout=DURATION      how long unmount waits for mirrors (default 30s)
  flush_interval=DURATION     async: longest time a mirror holds written records before it
                              makes them durable and confirms them (default 500ms, up to 1m)
  segment_size=SIZE           journal segment size (default 64M, 1M to 1G)
  log_file=/path              daemon log in the background (default STATE/daemon.log)
  threads=N                   FUSE request threads (default: CPUs, 2 to 8; at most 64)
  retention=DURATION          S3: fold journal objects whose records are older than this
                              into a snapshot and remove them (default: keep everything;
                              at least 1s, as in 30d or 12h)
  verify_interval=DURATION    compare every mirror with the backing tree this often, as
                              `logmirror verify` does (default 1h; 0 turns it off)
  repair=true|false           resync a mirror that the periodic verify finds different
                              (default false)
  metrics=IP:PORT|/path.sock  serve Prometheus metrics on GET /metrics at this TCP address
                              (port 0 takes a free port, shown in status) or Unix socket
                              (default: none, no endpoint)
  passthrough=auto|off        auto: read-only opens of files nobody writes are served by the
                              kernel from the backing file, when the kernel and privileges
                              allow (root); off: every read goes through the daemon
                              (default off)
The --config file may also name mirrors and route paths to them, first match wins:
  [mirrors.NAME] url = \"dir:/path\" or \"s3://BUCKET/PREFIX\"
  [[rule]] path = \"GLOB\", mirrors = [NAME, ...] ([] keeps the paths local),
           mode = \"sync\"|\"async\", ack = N (defaults: the global mode, all its mirrors)
Paths that no rule matches go to the mirror= mirrors with the global mode and ack.
S3 credentials come only from the standard AWS chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile in ~/.aws, or an instance role), never from options.
Mount flags nosuid, nodev, noexec, ro and fstab/systemd options (_netdev, nofail, x-*) are
accepted. SIZE takes K, M, G, T suffixes (powers of 1024); DURATION takes ms, s, m, h, d
(a bare number is seconds). A backslash keeps a comma inside a value: mirror=dir:/a\\,b.

Exit codes: 0 mounted, 1 the daemon failed to start, 2 invalid options or paths.";

const RESTORE_HELP: &str = "\
Options (-o key=value,...): endpoint=URL, region=NAME, path_style=true|false,
ca_file=/path, allow_http=true|false, encrypt_key=/path, compression=zstd:LEVEL|none,
sse=aes256|aws:kms|c, sse_kms_key_id=ID, sse_c_key=/path, as for mount (restore reads
compressed and plain objects whatever compression says). Objects stored with sse=c can only
be read with the same sse=c and sse_c_key. history, retention_lock and retention_lock_mode
are accepted and change nothing here. A key with read rights only is enough.
Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
a profile in ~/.aws, or an instance role).

The mirror's newest snapshot (with retention=) and every journal object after it are
checked (the store's CRC32C, the header, each record's CRC32C and path) before their records
are replayed, and nothing is written outside DIR. Each object must also record the SHA-256 of
the object before it (the hash chain), so a removed, replaced or reordered object is found.
A damaged or missing object, or a break in the chain, stops the restore with its key and
number; DIR then contains the tree as of the object before it. An encrypted history needs
--key FILE (or -o encrypt_key=FILE), the key file the mount used.

--seq N stops right after record N. --at TIME gives the newest state committed at or before
TIME, and the ops of one resync go in whole or not at all. Seqs start again at 1 when a
host starts a new journal (after losing its state directory), so --seq then picks the first
record with that seq; use --at for a point in a later journal. A point before the newest
snapshot fails with the earliest point that can be restored.

Progress goes to stderr: one line redrawn on a terminal, otherwise a line every
--progress-interval. The last line on stdout is the summary: files, bytes, the last seq
applied and its commit time.

Exit codes: 0 restored, 1 the restore failed or stopped, or the point is not in the history,
2 invalid arguments or DIR not empty.";

const FOLD_HELP: &str = "\
Does what retention= does in a mount, once, with the credentials of this process: they must
be allowed to list, read, create and delete objects under PREFIX/.logmirror/. Run it from a
host or account other than the mounts', with a key they do not hold, so that a compromised
mount host cannot remove history. Options (-o): endpoint, region, path_style, ca_file,
allow_http, encrypt_key, compression, sse, sse_kms_key_id, sse_c_key, retention_lock,
retention_lock_mode; an encrypted history needs its encrypt_key. With retention_lock,
objects whose retention has not ended stay and a later fold removes them.

A running mount's verify may fail once with NoSuchKey while a fold removes objects; the next
verify lists the new snapshot.

Exit codes: 0 folded or nothing old enough, 1 the fold failed, 2 invalid arguments.";

#[derive(Parser, Debug)]
#[command(
    name = "logmirror",
    version,
    about = "Mount a log directory whose every write is committed locally and mirrored"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount BACKING on MOUNTPOINT; returns once the mount serves (daemon in the background).
    #[command(after_help = MOUNT_HELP)]
    Mount {
        /// Local directory that contains the real files.
        backing: PathBuf,
        /// Directory where programs see and write the files.
        mountpoint: PathBuf,
        /// Options as key=value[,key=value...]; the keys and their defaults are listed below
        /// [default: none]
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground and log to stderr [default: off, the daemon detaches]
        #[arg(short = 'f')]
        foreground: bool,
        /// TOML file with the same keys as -o; -o values override it [default: none]
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show mode, policy, journal, backlog and per-mirror state, lag, throughput and errors.
    #[command(after_help = "Exit codes: 0 shown, 3 no daemon serves MOUNTPOINT.")]
    Status {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// Print JSON instead of text [default: off, text]
        #[arg(long)]
        json: bool,
    },
    /// Wait until every mirror confirmed all writes committed before this call.
    #[command(after_help = "\
While it waits, the mirrors' progress goes to stderr: one line redrawn on a terminal,
otherwise a line every --progress-interval.

Exit codes: 0 synced, 1 timed out, 3 no daemon serves MOUNTPOINT.")]
    Sync {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// Give up after this long, as in 90, 30s, 500ms or 5m (a bare number is seconds).
        #[arg(long, default_value = "300s", value_parser = parse_timeout)]
        timeout: Duration,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Compare every mirror with the backing tree; exit 0 only if they are equal.
    #[command(after_help = "\
While it runs, the mirrors' progress goes to stderr: one line redrawn on a terminal,
otherwise a line every --progress-interval.

Exit codes: 0 equal, 1 differences found or a mirror could not be compared, 3 no daemon
serves MOUNTPOINT.")]
    Verify {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// How long to wait for mirrors to confirm pending writes before comparing, as in
        /// 300, 30s or 5m.
        #[arg(long, default_value = "300s", value_parser = parse_timeout)]
        timeout: Duration,
        /// Schedule a resync from the backing tree for each mirror that differs; `logmirror
        /// sync` then waits until it is done [default: off]
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Rebuild a directory from an S3 mirror, as for a host that lost its backing directory.
    #[command(after_help = RESTORE_HELP)]
    Restore {
        /// The mirror, as given to mount: s3://BUCKET/PREFIX.
        mirror: String,
        /// Directory to fill; created if missing. It must be empty unless --force is given.
        dir: PathBuf,
        /// Options as key=value[,key=value...]: endpoint, region, path_style, ca_file,
        /// allow_http, encrypt_key, compression, sse, sse_kms_key_id, sse_c_key [default: none,
        /// the AWS environment and profile apply]
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Key file of an encrypted mirror: 64 hex digits, not readable by group or others;
        /// the same as -o encrypt_key=FILE [default: none]
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// Replay into a directory that is not empty [default: off]
        #[arg(long)]
        force: bool,
        /// Restore the tree as of this time: RFC 3339 with an offset, as in
        /// 2026-12-04T10:00:00Z, or seconds since the Unix epoch [default: the newest record]
        #[arg(long, value_name = "TIME", value_parser = restore::parse_time, conflicts_with = "seq")]
        at: Option<u64>,
        /// Restore the tree as of right after the record with this seq [default: the newest
        /// record]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        seq: Option<u64>,
        #[command(flatten)]
        progress: ProgressArgs,
    },
    /// Fold an S3 mirror's old journal objects into a snapshot and remove them, for mounts
    /// with history=append-only whose keys may not delete.
    #[command(after_help = FOLD_HELP)]
    Fold {
        /// The mirror, as given to mount: s3://BUCKET/PREFIX.
        mirror: String,
        /// Fold the journal objects whose records are all older than this DURATION, as in
        /// 30d or 12h.
        #[arg(value_name = "RETENTION", value_parser = parse_retention)]
        retention: Duration,
        /// Options as key=value[,key=value...], as for restore [default: none, the AWS
        /// environment and profile apply]
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
    },
    /// Write the man pages into MAN_DIR and the bash, zsh and fish completions into
    /// COMPLETIONS_DIR (run by scripts/gen-docs).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory for logmirror.1 and logmirror-SUBCOMMAND.1; created if missing.
        man_dir: PathBuf,
        /// Directory for logmirror.bash, _logmirror and logmirror.fish; created if missing.
        completions_dir: PathBuf,
    },
}

/// The progress option of the long commands.
#[derive(Args, Debug, Clone, Copy)]
pub struct ProgressArgs {
    /// Time between two progress lines on stderr when it is not a terminal, as in 10s or 1m
    /// (on a terminal, one line is redrawn in place)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub progress_interval: Duration,
}

/// Runs a parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Mount {
            backing,
            mountpoint,
            options,
            foreground,
            config,
        } => mount(backing, mountpoint, options, foreground, config),
        Command::Status { mountpoint, json } => show_status(mountpoint, json),
        Command::Sync {
            mountpoint,
            timeout,
            progress,
        } => sync(mountpoint, timeout, progress.progress_interval),
        Command::Verify {
            mountpoint,
            timeout,
            repair,
            progress,
        } => verify(mountpoint, timeout, repair, progress.progress_interval),
        Command::Restore {
            mirror,
            dir,
            options,
            force,
            at,
            seq,
            key,
            progress,
        } => {
            let point = match (at, seq) {
                (Some(ns), _) => restore::PointInTime::Time(ns),
                (None, Some(seq)) => restore::PointInTime::Seq(Seq(seq)),
                (None, None) => restore::PointInTime::Latest,
            };
            let restore = RestoreRequest {
                options: &options,
                key,
                point,
                force,
                progress_interval: progress.progress_interval,
            };
            run_restore(&mirror, &dir, restore)
        }
        Command::Fold {
            mirror,
            retention,
            options,
        } => run_fold(&mirror, retention, &options),
        Command::GenerateDocs {
            man_dir,
            completions_dir,
        } => generate_docs(&man_dir, &completions_dir),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logmirror: {e:#}");
            let usage = e.downcast_ref::<config::Error>().is_some()
                || matches!(
                    e.downcast_ref::<daemon::Error>(),
                    Some(daemon::Error::Invalid(_) | daemon::Error::Busy(_))
                )
                || matches!(
                    e.downcast_ref::<restore::Error>(),
                    Some(restore::Error::NotS3 { .. } | restore::Error::NotEmpty { .. })
                );
            let not_served = matches!(
                e.downcast_ref::<control::Error>(),
                Some(control::Error::NotMounted { .. } | control::Error::Connection { .. })
            );
            ExitCode::from(if usage {
                EXIT_USAGE
            } else if not_served {
                EXIT_NOT_SERVED
            } else {
                EXIT_FAILED
            })
        }
    }
}

fn mount(
    backing: PathBuf,
    mountpoint: PathBuf,
    options: Vec<String>,
    foreground: bool,
    config_file: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = config::build(&backing, &mountpoint, config_file.as_deref(), &options)?;
    // Absolute, so that SIGHUP finds the file whatever the daemon's working directory.
    let config_file = config_file.map(|path| std::path::absolute(&path).unwrap_or(path));
    let source = logmirror::reload::Source {
        config_file,
        options,
    };
    daemon::mount(config, foreground, source)
        .with_context(|| format!("mount {backing:?} on {mountpoint:?}"))?;
    Ok(ExitCode::SUCCESS)
}

fn ask(mountpoint: &PathBuf, request: Request, timeout: Duration) -> anyhow::Result<Response> {
    let response = control::request(mountpoint, &request, timeout)?;
    if let Response::Error { message } = &response {
        bail!("the daemon of {mountpoint:?} returned an error: {message}");
    }
    Ok(response)
}

fn show_status(mountpoint: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let Response::Status(status) = ask(&mountpoint, Request::Status, Duration::from_secs(10))?
    else {
        bail!("the daemon of {mountpoint:?} sent an unexpected response to status");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status::render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    config::parse_duration(text).ok_or_else(|| {
        format!("invalid duration {text:?}; use a number of seconds or 500ms, 30s, 5m, 1h")
    })
}

/// Parses the RETENTION of `fold`. Unlike `retention=` of a mount it may be 0, which folds
/// every journal object.
fn parse_retention(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
        .ok_or_else(|| format!("invalid retention {text:?}; use a duration as in 30d, 12h or 90m"))
}

/// Returns a timeout in milliseconds for a request, saturating at `u64::MAX`, since
/// `--timeout` accepts any number of seconds.
fn millis(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

fn sync(
    mountpoint: PathBuf,
    timeout: Duration,
    progress_interval: Duration,
) -> anyhow::Result<ExitCode> {
    let request = Request::Sync {
        timeout_ms: millis(timeout),
    };
    let response = with_mirror_progress(&mountpoint, WaitKind::Sync, progress_interval, || {
        ask(
            &mountpoint,
            request,
            timeout.saturating_add(Duration::from_secs(30)),
        )
    })?;
    match response {
        Response::Synced { seq } => {
            println!("all mirrors confirmed every write up to seq {seq}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Timeout { seq, missing } => {
            eprintln!("logmirror: sync timed out after {timeout:?} waiting for seq {seq}:");
            for line in missing {
                eprintln!("  {line}");
            }
            Ok(ExitCode::from(EXIT_FAILED))
        }
        _ => bail!("the daemon of {mountpoint:?} sent an unexpected response to sync"),
    }
}

fn verify(
    mountpoint: PathBuf,
    timeout: Duration,
    repair: bool,
    progress_interval: Duration,
) -> anyhow::Result<ExitCode> {
    let request = Request::Verify {
        timeout_ms: millis(timeout),
        repair,
    };
    // Two waits for the mirrors plus the time to read both trees, which grows with their size.
    let read_timeout = timeout
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(3600));
    let response = with_mirror_progress(&mountpoint, WaitKind::Verify, progress_interval, || {
        ask(&mountpoint, request, read_timeout)
    })?;
    let Response::Verified(report) = response else {
        bail!("the daemon of {mountpoint:?} sent an unexpected response to verify");
    };
    for mirror in &report.mirrors {
        for line in &mirror.differences {
            println!("mirror {}: {line}", mirror.name);
        }
        match &mirror.error {
            Some(error) => println!("mirror {}: not verified: {error}", mirror.name),
            None => println!(
                "mirror {}: entries compared: {}, differences: {}",
                mirror.name,
                mirror.entries,
                mirror.differences.len()
            ),
        }
        if mirror.resync_scheduled {
            println!(
                "mirror {}: resync from the backing tree scheduled; `logmirror sync` waits for it",
                mirror.name
            );
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// Settings of a `restore` besides the mirror and the directory.
fn run_fold(mirror: &str, retention: Duration, options: &[String]) -> anyhow::Result<ExitCode> {
    let spec = config::MirrorSpec::parse(mirror)?;
    let config::MirrorSpec::S3 { bucket, prefix } = &spec else {
        return Err(config::Error::InvalidValue {
            key: "mirror".into(),
            value: mirror.into(),
            expected: "expected s3://BUCKET/PREFIX; a directory mirror keeps no history to fold"
                .into(),
        }
        .into());
    };
    let options = config::build_s3_options(options)?;
    let folded = logmirror::mirror::s3::fold_once(bucket, prefix, &options, retention)
        .with_context(|| format!("fold {}", spec.name()))?;
    match folded {
        Some(stats) => println!(
            "folded {} journal objects into snapshot {}; removed {} objects; last seq {}",
            stats.objects_folded, stats.snapshot, stats.objects_removed, stats.last_seq
        ),
        None => println!(
            "nothing to fold: no journal object of {} is older than {retention:?}",
            spec.name()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

struct RestoreRequest<'a> {
    options: &'a [String],
    /// `--key FILE`, the same as `-o encrypt_key=FILE`.
    key: Option<PathBuf>,
    point: restore::PointInTime,
    force: bool,
    progress_interval: Duration,
}

fn run_restore(mirror: &str, dir: &PathBuf, request: RestoreRequest) -> anyhow::Result<ExitCode> {
    let spec = config::MirrorSpec::parse(mirror)?;
    let mut s3 = config::build_s3_options(request.options)?;
    if let Some(key) = &request.key {
        s3.set_encrypt_key(key)?;
    }
    let mut progress = RestoreProgress(ProgressLine::new(
        std::io::stderr(),
        std::io::stderr().is_terminal(),
        request.progress_interval,
    ));
    let restored = restore::run(&spec, &s3, dir, request.point, request.force, &mut progress);
    let summary = restored.with_context(|| format!("restore {mirror} into {dir:?}"))?;

    let replay = summary.replay;
    let snapshot = match replay.snapshot {
        Some(number) => format!(
            "snapshot of objects 1 to {number} ({} ops), ",
            replay.snapshot_frames
        ),
        None => String::new(),
    };
    println!(
        "restored {} into {}: {snapshot}journal objects: {}, records: {}, repeated records left \
         out: {}",
        spec.name(),
        dir.display(),
        replay.objects,
        replay.records,
        replay.repeated_records
    );
    let last = match replay.last_seq {
        Seq(0) => "last seq: none".to_string(),
        seq => format!(
            "last seq: {seq}, committed at {}",
            restore::format_time(replay.last_seq_at_ns)
        ),
    };
    println!("files: {}, bytes: {}, {last}", summary.files, summary.bytes);
    Ok(ExitCode::SUCCESS)
}

/// The progress display of a restore on stderr.
struct RestoreProgress(ProgressLine<std::io::Stderr>);

fn describe_restore(stats: &ReplayStats) -> String {
    format!(
        "restoring: snapshot ops {}, journal objects {}, records {}, downloaded {}",
        stats.snapshot_frames,
        stats.objects,
        stats.records,
        status::human_bytes(stats.bytes_downloaded)
    )
}

impl restore::Progress for RestoreProgress {
    fn update(&mut self, stats: &ReplayStats) {
        if self.0.is_due() {
            self.0.update(&describe_restore(stats));
        }
    }

    fn finish(&mut self, stats: &ReplayStats) {
        self.0.finish(&describe_restore(stats));
    }
}

/// Command whose wait [`with_mirror_progress`] shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WaitKind {
    Sync,
    Verify,
}

/// Runs `wait` while a thread shows the mirrors' progress on stderr, from the daemon's
/// status. A status that cannot be read skips that line.
fn with_mirror_progress<T>(
    mountpoint: &Path,
    kind: WaitKind,
    line_interval: Duration,
    wait: impl FnOnce() -> T,
) -> T {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let mountpoint = mountpoint.to_path_buf();
    let is_terminal = std::io::stderr().is_terminal();
    let reporter = std::thread::spawn(move || {
        let mut progress = ProgressLine::new(std::io::stderr(), is_terminal, line_interval);
        let tick = line_interval.clamp(Duration::from_millis(20), Duration::from_millis(200));
        let mut last_text = None;
        while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(tick) {
            if !progress.is_due() {
                continue;
            }
            let status = control::request(&mountpoint, &Request::Status, Duration::from_secs(5));
            if let Ok(Response::Status(status)) = status {
                let text = describe_wait(kind, &status, progress.elapsed());
                progress.update(&text);
                last_text = Some(text);
            }
        }
        if let Some(text) = last_text {
            progress.finish(&text);
        }
    });
    let result = wait();
    drop(done);
    let _ = reporter.join();
    result
}

/// Describes what a sync or verify waits for: each mirror's confirmed seq against the head,
/// or the comparison once every mirror has confirmed it.
fn describe_wait(kind: WaitKind, status: &status::Status, elapsed: Duration) -> String {
    let label = match kind {
        WaitKind::Sync => "sync",
        WaitKind::Verify => "verify",
    };
    let seconds = elapsed.as_secs();
    let head = status.head_seq;
    let is_confirmed = status.mirrors.iter().all(|m| m.lag_records == 0);
    if kind == WaitKind::Verify && is_confirmed {
        return format!("{label}: {seconds} s, comparing the mirrors with the backing tree");
    }
    let mirrors: Vec<String> = status
        .mirrors
        .iter()
        .map(|m| {
            format!(
                "mirror {}: {}, confirmed seq {} of {head}, {} records behind",
                m.name, m.state, m.confirmed_seq, m.lag_records
            )
        })
        .collect();
    format!("{label}: {seconds} s, {}", mirrors.join("; "))
}

/// Returns the clap definition without the hidden subcommands, which clap_complete would
/// otherwise offer.
fn public_command() -> clap::Command {
    let full = Cli::command();
    let mut public = clap::Command::new("logmirror")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .subcommand_required(true);
    for subcommand in full.get_subcommands().filter(|c| !c.is_hide_set()) {
        public = public.subcommand(subcommand.clone());
    }
    public
}

/// Writes the man pages and shell completions generated from the clap definitions.
fn generate_docs(man: &Path, completions: &Path) -> anyhow::Result<ExitCode> {
    for path in [man, completions] {
        std::fs::create_dir_all(path).with_context(|| format!("create {path:?}"))?;
    }
    clap_mangen::generate_to(public_command(), man)
        .with_context(|| format!("write the man pages into {man:?}"))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut public_command(), "logmirror", completions)
            .with_context(|| format!("write the {shell} completions into {completions:?}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the help text of `key` in [`MOUNT_HELP`]: its line and the indented lines
    /// that continue it.
    fn mount_help_entry(key: &str) -> Option<String> {
        let lines: Vec<&str> = MOUNT_HELP.lines().collect();
        let start = lines
            .iter()
            .position(|line| line.trim_start().starts_with(&format!("{key}=")))?;
        let continued = lines[start + 1..]
            .iter()
            .take_while(|line| line.starts_with("        "))
            .copied();
        let mut entry = lines[start].to_string();
        for line in continued {
            entry.push(' ');
            entry.push_str(line.trim());
        }
        Some(entry)
    }

    #[test]
    fn every_option_shows_default() {
        let cli = Cli::command();
        for command in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                let has_default =
                    !arg.get_default_values().is_empty() || help.contains("[default: ");
                assert!(
                    has_default,
                    "{} --{id} shows no default in its help: {help:?}",
                    command.get_name()
                );
            }
        }
    }

    #[test]
    fn mount_help_lists_every_key() {
        for key in config::KEYS {
            let entry = mount_help_entry(key)
                .unwrap_or_else(|| panic!("mount --help does not list {key}="));
            assert!(
                entry.contains("default"),
                "mount --help gives no default for {key}: {entry:?}"
            );
        }
    }

    #[test]
    fn clap_definitions_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn wait_described_per_mirror() {
        let status: status::Status = serde_json::from_value(serde_json::json!({
            "pid": 1, "mountpoint": "/m", "backing": "/b", "state_dir": "/b/.logmirror",
            "mode": "async", "degraded": false, "head_seq": 30, "journal_first_seq": 1,
            "journal_bytes": 100, "verify_interval_secs": 0, "repair": false,
            "retention_secs": null,
            "mirrors": [{
                "name": "dir:/c", "state": "down", "confirmed_seq": 20, "lag_records": 10,
                "lag_bytes": 640, "lag_seconds": 2.5, "last_error": null,
                "failed_attempts": 3, "resync_pending": false, "last_verify": null,
                "last_fold": null
            }]
        }))
        .unwrap();
        let text = describe_wait(WaitKind::Sync, &status, Duration::from_secs(12));
        assert_eq!(
            text,
            "sync: 12 s, mirror dir:/c: down, confirmed seq 20 of 30, 10 records behind"
        );
        let text = describe_wait(WaitKind::Verify, &status, Duration::from_secs(3));
        assert_eq!(
            text,
            "verify: 3 s, mirror dir:/c: down, confirmed seq 20 of 30, 10 records behind"
        );
        let mut confirmed = status.clone();
        confirmed.mirrors[0].lag_records = 0;
        let text = describe_wait(WaitKind::Verify, &confirmed, Duration::from_secs(4));
        assert_eq!(
            text,
            "verify: 4 s, comparing the mirrors with the backing tree"
        );
    }
}
