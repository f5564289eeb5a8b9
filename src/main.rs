//! Entry point: sets up logging, accepts the argument shape `mount.fuse3` uses
//! (`logmirror BACKING MOUNTPOINT -o OPTIONS`) besides the subcommands, and runs the CLI.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_subcommand = first == "help" || cli::Cli::command().find_subcommand(first).is_some();
    if args.len() > 2 && !is_subcommand && !first.starts_with('-') {
        args.insert(1, "mount".into());
    }
    cli::run(cli::Cli::parse_from(args))
}
