//! Entry point: sets up logging, accepts the argument shape `mount.fuse3` uses
//! (`logmirror BACKING MOUNTPOINT -o OPTIONS`) besides the subcommands, and runs the CLI.

mod cli;

use std::process::ExitCode;

use clap::Parser;

const SUBCOMMANDS: &[&str] = &["mount", "status", "sync", "verify", "restore", "help"];

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if args.len() > 2 && !SUBCOMMANDS.contains(&first) && !first.starts_with('-') {
        args.insert(1, "mount".into());
    }
    cli::run(cli::Cli::parse_from(args))
}
