//! Command-line interface: `mount`, `status`, `sync`, `verify` and `restore`, each turned into
//! a call of the library and an exit code.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use logmirror::control::{self, Request, Response};
use logmirror::journal::Seq;
use logmirror::mirror::s3::ReplayStats;
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
  mirror=dir:/path            directory mirror; a mirror is required, repeat for more
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
                              the system's root certificates
  allow_http=true|false       accept plain http to a host that is not loopback (default false)
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
  sync_timeout=DURATION       default 30s
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
ca_file=/path, allow_http=true|false, as for mount.
Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
a profile in ~/.aws, or an instance role).

The mirror's newest snapshot (with retention=) and every journal object after it are
checked (the store's CRC32C, the header, each record's CRC32C and path) before their records
are replayed, and nothing is written outside DIR. A damaged or missing object stops the
restore with its key; DIR then contains the tree as of the object before it.

--seq N stops right after record N. --at TIME gives the newest state committed at or before
TIME, and the ops of one resync go in whole or not at all. Seqs start again at 1 when a
host starts a new journal (after losing its state directory), so --seq then picks the first
record with that seq; use --at for a point in a later journal. A point before the newest
snapshot fails with the earliest point that can be restored.

On a terminal, progress goes to stderr. The last line on stdout is the summary: files, bytes,
the last seq applied and its commit time.

Exit codes: 0 restored, 1 the restore failed or stopped, or the point is not in the history,
2 invalid arguments or DIR not empty.";

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
        /// Options as key=value[,key=value...]; see the list below.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground and log to stderr.
        #[arg(short = 'f')]
        foreground: bool,
        /// TOML file with the same keys as -o; -o values override it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Show mode, journal and per-mirror state, lag and last error.
    #[command(after_help = "Exit codes: 0 shown, 3 no daemon serves MOUNTPOINT.")]
    Status {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every mirror confirmed all writes committed before this call.
    #[command(after_help = "Exit codes: 0 synced, 1 timed out, 3 no daemon serves MOUNTPOINT.")]
    Sync {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// Give up after this long, as in 90, 30s, 500ms or 5m (a bare number is seconds).
        #[arg(long, default_value = "300s", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Compare every mirror with the backing tree; exit 0 only if they are equal.
    #[command(
        after_help = "Exit codes: 0 equal, 1 differences found or a mirror could not be \
compared, 3 no daemon serves MOUNTPOINT."
    )]
    Verify {
        /// Mount point of a running logmirror mount.
        mountpoint: PathBuf,
        /// How long to wait for mirrors to confirm pending writes before comparing, as in
        /// 300, 30s or 5m.
        #[arg(long, default_value = "300s", value_parser = parse_timeout)]
        timeout: Duration,
        /// Schedule a resync from the backing tree for each mirror that differs; `logmirror
        /// sync` then waits until it is done.
        #[arg(long)]
        repair: bool,
    },
    /// Rebuild a directory from an S3 mirror, as for a host that lost its backing directory.
    #[command(after_help = RESTORE_HELP)]
    Restore {
        /// The mirror, as given to mount: s3://BUCKET/PREFIX.
        mirror: String,
        /// Directory to fill; created if missing. It must be empty unless --force is given.
        dir: PathBuf,
        /// Options as key=value[,key=value...]: endpoint, region, path_style, ca_file,
        /// allow_http.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Replay into a directory that is not empty.
        #[arg(long)]
        force: bool,
        /// Restore the tree as of this time: RFC 3339 with an offset, as in
        /// 2026-12-04T10:00:00Z, or seconds since the Unix epoch.
        #[arg(long, value_name = "TIME", value_parser = restore::parse_time, conflicts_with = "seq")]
        at: Option<u64>,
        /// Restore the tree as of right after the record with this seq.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        seq: Option<u64>,
    },
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
        } => sync(mountpoint, timeout),
        Command::Verify {
            mountpoint,
            timeout,
            repair,
        } => verify(mountpoint, timeout, repair),
        Command::Restore {
            mirror,
            dir,
            options,
            force,
            at,
            seq,
        } => {
            let point = match (at, seq) {
                (Some(ns), _) => restore::PointInTime::Time(ns),
                (None, Some(seq)) => restore::PointInTime::Seq(Seq(seq)),
                (None, None) => restore::PointInTime::Latest,
            };
            run_restore(&mirror, &dir, &options, point, force)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logmirror: {e:#}");
            let usage = e.downcast_ref::<config::Error>().is_some()
                || matches!(
                    e.downcast_ref::<daemon::Error>(),
                    Some(daemon::Error::Invalid(_))
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

fn sync(mountpoint: PathBuf, timeout: Duration) -> anyhow::Result<ExitCode> {
    let request = Request::Sync {
        timeout_ms: timeout.as_millis() as u64,
    };
    match ask(&mountpoint, request, timeout + Duration::from_secs(30))? {
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

fn verify(mountpoint: PathBuf, timeout: Duration, repair: bool) -> anyhow::Result<ExitCode> {
    let request = Request::Verify {
        timeout_ms: timeout.as_millis() as u64,
        repair,
    };
    // Two waits for the mirrors plus the time to read both trees, which grows with their size.
    let read_timeout = timeout * 2 + Duration::from_secs(3600);
    let Response::Verified(report) = ask(&mountpoint, request, read_timeout)? else {
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

fn run_restore(
    mirror: &str,
    dir: &PathBuf,
    options: &[String],
    point: restore::PointInTime,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let spec = config::MirrorSpec::parse(mirror)?;
    let s3 = config::build_s3_options(options)?;
    let mut progress = TerminalProgress::new(std::io::stderr().is_terminal());
    let restored = restore::run(&spec, &s3, dir, point, force, &mut progress);
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

/// A one-line progress display of a restore on stderr, redrawn at most every 100 ms, and
/// only when stderr is a terminal.
struct TerminalProgress {
    is_terminal: bool,
    last_shown: Option<Instant>,
}

impl TerminalProgress {
    fn new(is_terminal: bool) -> TerminalProgress {
        TerminalProgress {
            is_terminal,
            last_shown: None,
        }
    }

    fn draw(&mut self, stats: &ReplayStats) {
        self.last_shown = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[Krestoring: snapshot ops {}, journal objects {}, records {}, downloaded {}",
            stats.snapshot_frames,
            stats.objects,
            stats.records,
            status::human_bytes(stats.bytes_downloaded)
        );
        let _ = stderr.flush();
    }
}

impl restore::Progress for TerminalProgress {
    fn update(&mut self, stats: &ReplayStats) {
        let due = self
            .last_shown
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100));
        if self.is_terminal && due {
            self.draw(stats);
        }
    }

    /// Draws the final counts and ends the line, so that what follows starts on its own.
    fn finish(&mut self, stats: &ReplayStats) {
        if self.is_terminal && self.last_shown.is_some() {
            self.draw(stats);
            eprintln!();
        }
    }
}
