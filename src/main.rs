//! Entry point: sets up logging, accepts the argument shape `mount.fuse3` uses
//! (`logmirror BACKING MOUNTPOINT -o OPTIONS`) besides the subcommands, and runs the CLI.

mod cli;

use std::ffi::{CStr, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

fn main() -> ExitCode {
    set_missing_home();
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

/// Sets HOME from the password database when it is unset or empty. systemd starts a service
/// without `User=`, and the mount unit of an fstab line, without HOME, and the AWS SDK finds
/// `~/.aws/credentials` and `~/.aws/config` only through it.
fn set_missing_home() {
    if std::env::var_os("HOME").is_some_and(|home| !home.is_empty()) {
        return;
    }
    // SAFETY: geteuid takes no arguments and always succeeds (POSIX lists no errors).
    let Some(home) = passwd_home(unsafe { libc::geteuid() }) else {
        return;
    };
    // SAFETY: main calls this first, before any thread exists that could read the environment.
    unsafe { std::env::set_var("HOME", home) };
}

/// Returns the home directory of `uid` in the password database, if it has one.
fn passwd_home(uid: libc::uid_t) -> Option<OsString> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data, and getpwuid_r fills it in.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call, and `buf.len()` bytes are writable.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 || found.is_null() || entry.pw_dir.is_null() {
            return None;
        }
        // SAFETY: pw_dir points to a NUL-terminated string inside `buf`.
        let dir = unsafe { CStr::from_ptr(entry.pw_dir) }.to_bytes();
        return (!dir.is_empty()).then(|| OsStr::from_bytes(dir).to_os_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_of_root_from_passwd() {
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let root = passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() == 7 && fields[2] == "0")
            .expect("an entry with uid 0 in /etc/passwd");
        assert_eq!(passwd_home(0), Some(OsString::from(root[5])));
    }
}
