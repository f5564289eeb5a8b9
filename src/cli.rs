//! Command-line interface: `mount`, `status`, `sync` and `verify`, each turned into a call of
//! the library and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use logmirror::control::{self, Request, Response};
use logmirror::{config, daemon, status};

/// Exit code for invalid arguments, options or configuration.
pub const EXIT_USAGE: u8 = 2;

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
    Mount {
        /// Local directory that contains the real files.
        backing: PathBuf,
        /// Directory where programs see and write the files.
        mountpoint: PathBuf,
        /// Options as key=value[,key=value...]: mirror=dir:/path (repeatable), mode=sync|async,
        /// ack=all|N, state=/path, max_backlog=SIZE, when_full=block|fail,
        /// on_mirror_failure=block|fail|degrade, sync_timeout=DURATION, drain_timeout=DURATION,
        /// segment_size=SIZE, log_file=/path, threads=N.
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
    Status {
        mountpoint: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Wait until every mirror confirmed all writes committed before this call.
    Sync {
        mountpoint: PathBuf,
        /// Give up after this many seconds (exit 1).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Compare every mirror with the backing tree; exit 0 only if they are equal.
    Verify {
        mountpoint: PathBuf,
        /// Seconds to wait for mirrors to confirm pending writes before comparing.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
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
        } => verify(mountpoint, timeout),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("logmirror: {e:#}");
            let usage = e.downcast_ref::<config::Error>().is_some()
                || matches!(
                    e.downcast_ref::<daemon::Error>(),
                    Some(daemon::Error::Invalid(_))
                );
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
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
    daemon::mount(config, foreground)
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

fn sync(mountpoint: PathBuf, timeout: u64) -> anyhow::Result<ExitCode> {
    let request = Request::Sync {
        timeout_ms: timeout.saturating_mul(1000),
    };
    match ask(&mountpoint, request, Duration::from_secs(timeout + 30))? {
        Response::Synced { seq } => {
            println!("all mirrors confirmed every write up to seq {seq}");
            Ok(ExitCode::SUCCESS)
        }
        Response::Timeout { seq, missing } => {
            eprintln!("logmirror: sync timed out after {timeout} s waiting for seq {seq}:");
            for line in missing {
                eprintln!("  {line}");
            }
            Ok(ExitCode::from(1))
        }
        _ => bail!("the daemon of {mountpoint:?} sent an unexpected response to sync"),
    }
}

fn verify(mountpoint: PathBuf, timeout: u64) -> anyhow::Result<ExitCode> {
    let request = Request::Verify {
        timeout_ms: timeout.saturating_mul(1000),
    };
    let Response::Verified(report) =
        ask(&mountpoint, request, Duration::from_secs(timeout * 3 + 600))?
    else {
        bail!("the daemon of {mountpoint:?} sent an unexpected response to verify");
    };
    for mirror in &report.mirrors {
        for line in &mirror.differences {
            println!("mirror {}: {line}", mirror.name);
        }
        match &mirror.error {
            Some(error) => println!("mirror {}: not verified: {error}", mirror.name),
            None => println!(
                "mirror {}: {} entries compared, {} differences",
                mirror.name,
                mirror.entries,
                mirror.differences.len()
            ),
        }
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
