//! Bad input, as one table. Each case is a command line with the files, mounts or S3
//! objects it needs, and the exit code, the error class (the first words of the message)
//! and the bad value that stderr must name. Every case also checks that nothing panicked
//! and that nothing got mounted. The data already there must stay unchanged: the backing
//! files, a mirror, the journal, a restore directory and a busy mount.
//!
//! Exit codes: `EXIT_USAGE` for invalid options, paths, config files and arguments.
//! `EXIT_RUNTIME` when the daemon fails to start or a restore finds bad objects.
//! `EXIT_NOT_SERVED` when no daemon serves the mount point.

mod common;
#[path = "common/garage.rs"]
mod garage;

use std::fs;
use std::path::{Path, PathBuf};

use common::journal_objects::{
    create_op, frame, journal_object, journal_object_version, object_key, segment_header,
    symlink_op, write_op,
};
use common::{
    CmdOutput, EXIT_NOT_SERVED, EXIT_RUNTIME, EXIT_USAGE, STATE_DIR, TestDirs, Tree, path_str,
    tree_sha256,
};
use garage::Garage;

/// Content of the file every case finds in the backing directory, as accepted data.
const ACCEPTED: &str = "accepted before the bad input\n";

/// What a case needs beyond a temporary directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Nothing,
    /// Root and /dev/fuse, for a case that mounts or reaches the daemon's start-up.
    Fuse,
    /// The Garage server shared by the table.
    Garage,
}

/// The directories of one case, and the Garage server shared by the table.
struct Fixture<'g> {
    dirs: TestDirs,
    garage: Option<&'g Garage>,
    /// S3 prefix of this case, so that cases never see each other's objects.
    prefix: String,
}

impl Fixture<'_> {
    fn backing(&self) -> String {
        path_str(&self.dirs.backing).to_string()
    }

    fn mnt(&self) -> String {
        path_str(&self.dirs.mnt).to_string()
    }

    fn mirror(&self) -> String {
        path_str(&self.dirs.mirrors[0]).to_string()
    }

    fn path(&self, name: &str) -> String {
        path_str(&self.dirs.root.join(name)).to_string()
    }

    fn garage(&self) -> &Garage {
        self.garage.expect("case needs Garage")
    }

    fn spec(&self) -> String {
        format!("s3://{}/{}", self.garage().bucket, self.prefix)
    }

    fn key(&self, number: u64) -> String {
        object_key(&self.prefix, number)
    }
}

/// A command to run, with its environment and the mount it needs to stay busy.
struct Invocation {
    args: Vec<String>,
    env: Vec<(String, String)>,
    _busy: Option<BusyMount>,
}

impl Invocation {
    fn new(args: Vec<String>) -> Invocation {
        Invocation {
            args,
            env: Vec::new(),
            _busy: None,
        }
    }
}

/// One row of the table.
struct Case {
    name: &'static str,
    needs: Needs,
    /// Prepares files, mounts or objects and returns the command.
    command: fn(&Fixture) -> Invocation,
    code: i32,
    /// Start of the message, after `logmirror: ` and the command's context
    /// (`mount "B" on "M": `, `restore SPEC into "DIR": `), or after clap's `error: `.
    class: &'static str,
    /// The bad value that stderr must name.
    names: fn(&Fixture) -> String,
}

/// Returns `logmirror mount BACKING MNT -o mirror=dir:MIRROR0` with `options` added.
fn mount(f: &Fixture, options: &[&str]) -> Invocation {
    mount_paths(f, &f.backing(), &f.mnt(), options)
}

fn mount_paths(f: &Fixture, backing: &str, mnt: &str, options: &[&str]) -> Invocation {
    let mut args = vec!["mount".to_string(), backing.to_string(), mnt.to_string()];
    args.extend(["-o".to_string(), format!("mirror=dir:{}", f.mirror())]);
    for option in options {
        args.extend(["-o".to_string(), option.to_string()]);
    }
    Invocation::new(args)
}

/// Returns `logmirror mount` with only `options`, no mirror added.
fn mount_bare(f: &Fixture, options: &[&str]) -> Invocation {
    let mut args = vec!["mount".to_string(), f.backing(), f.mnt()];
    for option in options {
        args.extend(["-o".to_string(), option.to_string()]);
    }
    Invocation::new(args)
}

/// Returns `logmirror mount --config FILE` with `text` written to FILE.
fn mount_config(f: &Fixture, text: &str) -> Invocation {
    let file = f.dirs.root.join("logmirror.toml");
    fs::write(&file, text).expect("write config file");
    let mut invocation = mount_bare(f, &[]);
    invocation
        .args
        .extend(["--config".to_string(), path_str(&file).to_string()]);
    invocation
}

/// Stores each of `objects` at its journal object number under the case's prefix, then
/// returns `logmirror restore SPEC DIR` of that prefix into `restored`.
fn restore(f: &Fixture, objects: &[(u64, Vec<u8>)]) -> Invocation {
    let client = f.garage().client();
    for (number, bytes) in objects {
        client.put(&f.key(*number), bytes.clone());
    }
    restore_key_objects(f)
}

fn restore_key_objects(f: &Fixture) -> Invocation {
    let args = vec![
        "restore".to_string(),
        f.spec(),
        f.path("restored"),
        "-o".to_string(),
        f.garage().options(),
    ];
    let mut invocation = Invocation::new(args);
    invocation.env = f.garage().env();
    invocation
}

/// Writes `bytes` as the first journal segment into the default state directory of the
/// backing directory.
fn plant_segment(f: &Fixture, bytes: &[u8]) {
    let journal = f.dirs.backing.join(STATE_DIR).join("journal");
    fs::create_dir_all(&journal).expect("create journal directory");
    fs::write(journal.join("00000000000000000001.seg"), bytes).expect("write segment");
}

/// A logmirror mount made for a case. Dropping it unmounts and waits for its daemon.
struct BusyMount {
    mnt: PathBuf,
    pid: u32,
}

impl BusyMount {
    /// Mounts `backing` on `mnt` with `mirror`, and writes [`ACCEPTED`] to `accepted.log`.
    fn new(backing: &Path, mnt: &Path, mirror: &Path) -> BusyMount {
        for dir in [backing, mirror] {
            fs::create_dir_all(dir).expect("create directory for the busy mount");
        }
        let mirror_option = format!("mirror=dir:{}", mirror.display());
        let out = common::logmirror(&[
            "mount",
            path_str(backing),
            path_str(mnt),
            "-o",
            &mirror_option,
            "-o",
            "mode=sync",
        ]);
        out.assert_success("logmirror mount of the busy mount");
        let pid = common::daemon_pid(mnt);
        let busy = BusyMount {
            mnt: mnt.to_path_buf(),
            pid,
        };
        fs::write(mnt.join("accepted.log"), ACCEPTED).expect("write through the busy mount");
        busy
    }
}

impl Drop for BusyMount {
    fn drop(&mut self) {
        let out = common::fusermount(&["-u"], &self.mnt);
        if !out.status.success() {
            common::fusermount(&["-u", "-z"], &self.mnt);
        }
        common::wait_until(
            common::COMMAND_TIMEOUT,
            "busy mount's daemon to exit",
            || match common::is_process_alive(self.pid) {
                true => Err(format!("pid {} still alive", self.pid)),
                false => Ok(()),
            },
        );
    }
}

fn cases() -> Vec<Case> {
    vec![
        // Unknown and malformed options.
        Case {
            name: "unknown key",
            needs: Needs::Nothing,
            command: |f| mount(f, &["retention_days=7"]),
            code: EXIT_USAGE,
            class: "unknown option",
            names: |_| "\"retention_days\"".into(),
        },
        Case {
            name: "unknown key in second option",
            needs: Needs::Nothing,
            command: |f| mount(f, &["mode=sync", "compress_level=9"]),
            code: EXIT_USAGE,
            class: "unknown option",
            names: |_| "\"compress_level\"".into(),
        },
        Case {
            name: "unknown flag",
            needs: Needs::Nothing,
            command: |f| mount(f, &["fast"]),
            code: EXIT_USAGE,
            class: "unknown option",
            names: |_| "\"fast\"".into(),
        },
        Case {
            name: "mount option given to restore",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "restore".into(),
                    "s3://logs/web1".into(),
                    f.path("restored"),
                    "-o".into(),
                    "mode=sync".into(),
                ])
            },
            code: EXIT_USAGE,
            class: "unknown option",
            names: |_| "\"mode\" for restore".into(),
        },
        Case {
            name: "credential as option",
            needs: Needs::Nothing,
            command: |f| mount(f, &["aws_secret_access_key=TOPSECRET"]),
            code: EXIT_USAGE,
            class: "rejected option",
            names: |_| "\"aws_secret_access_key\"".into(),
        },
        Case {
            name: "key without value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["mode"]),
            code: EXIT_USAGE,
            class: "missing value",
            names: |_| "\"mode\"".into(),
        },
        Case {
            name: "mode value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["mode=sometimes"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"sometimes\" for mode".into(),
        },
        Case {
            name: "ack value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["ack=most"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"most\" for ack".into(),
        },
        Case {
            name: "size value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["max_backlog=plenty"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"plenty\" for max_backlog".into(),
        },
        Case {
            name: "size out of range",
            needs: Needs::Nothing,
            command: |f| mount(f, &["segment_size=2G"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"2G\" for segment_size".into(),
        },
        Case {
            name: "when_full value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["when_full=overflow"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"overflow\" for when_full".into(),
        },
        Case {
            name: "on_mirror_failure value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["on_mirror_failure=ignore"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"ignore\" for on_mirror_failure".into(),
        },
        Case {
            name: "duration value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["sync_timeout=eventually"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"eventually\" for sync_timeout".into(),
        },
        Case {
            name: "drain_timeout value",
            needs: Needs::Nothing,
            command: |f| mount(f, &["drain_timeout=never-ending"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"never-ending\" for drain_timeout".into(),
        },
        Case {
            name: "threads out of range",
            needs: Needs::Nothing,
            command: |f| mount(f, &["threads=0"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"0\" for threads".into(),
        },
        Case {
            name: "relative state path",
            needs: Needs::Nothing,
            command: |f| mount(f, &["state=var/state"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"var/state\" for state".into(),
        },
        // Contradictory options.
        Case {
            name: "ack above mirror count",
            needs: Needs::Nothing,
            command: |f| mount(f, &["mode=sync", "ack=3"]),
            code: EXIT_USAGE,
            class: "conflicting options",
            names: |_| "ack=3 is larger than the number of mirrors (1)".into(),
        },
        Case {
            name: "repair without periodic verify",
            needs: Needs::Nothing,
            command: |f| mount(f, &["repair=true", "verify_interval=0"]),
            code: EXIT_USAGE,
            class: "conflicting options",
            names: |_| "verify_interval=0".into(),
        },
        Case {
            name: "retention without s3 mirror",
            needs: Needs::Nothing,
            command: |f| mount(f, &["retention=30d"]),
            code: EXIT_USAGE,
            class: "conflicting options",
            names: |_| "retention".into(),
        },
        Case {
            name: "no mirror",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mode=sync"]),
            code: EXIT_USAGE,
            class: "missing option",
            names: |_| "mirror".into(),
        },
        Case {
            name: "mirror twice spelled differently",
            needs: Needs::Nothing,
            command: |f| mount(f, &[&format!("mirror=dir:{}/", f.mirror())]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("mirror dir:{}/ is the same directory", f.mirror()),
        },
        // Paths that overlap or are missing.
        Case {
            name: "missing backing",
            needs: Needs::Nothing,
            command: |f| mount_paths(f, &f.path("no-such-backing"), &f.mnt(), &[]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("{:?}", f.path("no-such-backing")),
        },
        Case {
            name: "missing mount point",
            needs: Needs::Nothing,
            command: |f| mount_paths(f, &f.backing(), &f.path("no-such-mnt"), &[]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("{:?}", f.path("no-such-mnt")),
        },
        Case {
            name: "missing mirror directory",
            needs: Needs::Nothing,
            command: |f| {
                let missing = format!("mirror=dir:{}", f.path("no-such-mirror"));
                mount_bare(f, &[&missing])
            },
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("mirror dir:{} is not usable", f.path("no-such-mirror")),
        },
        Case {
            name: "mount point equal to backing",
            needs: Needs::Nothing,
            command: |f| mount_paths(f, &f.backing(), &f.backing(), &[]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("are the same path {:?}", f.backing()),
        },
        Case {
            name: "mount point inside backing",
            needs: Needs::Nothing,
            command: |f| {
                let inner = f.dirs.backing.join("mnt");
                fs::create_dir(&inner).expect("mkdir BACKING/mnt");
                mount_paths(f, &f.backing(), path_str(&inner), &[])
            },
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("mount point \"{}/mnt\" are nested", f.backing()),
        },
        Case {
            name: "backing inside mount point",
            needs: Needs::Nothing,
            command: |f| {
                let inner = f.dirs.mnt.join("backing");
                fs::create_dir(&inner).expect("mkdir MNT/backing");
                mount_paths(f, path_str(&inner), &f.mnt(), &[])
            },
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("backing directory \"{}/backing\"", f.mnt()),
        },
        Case {
            name: "state directory is mount point",
            needs: Needs::Nothing,
            command: |f| mount(f, &[&format!("state={}", f.mnt())]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("state directory {:?}", f.mnt()),
        },
        Case {
            name: "state directory inside mount point",
            needs: Needs::Nothing,
            command: |f| mount(f, &[&format!("state={}/state", f.mnt())]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("state directory \"{}/state\"", f.mnt()),
        },
        Case {
            name: "state directory inside backing",
            needs: Needs::Nothing,
            command: |f| mount(f, &[&format!("state={}/state", f.backing())]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("state directory \"{}/state\"", f.backing()),
        },
        Case {
            name: "mirror inside backing",
            needs: Needs::Nothing,
            command: |f| {
                let inner = f.dirs.backing.join("copy");
                fs::create_dir(&inner).expect("mkdir BACKING/copy");
                mount_bare(f, &[&format!("mirror=dir:{}", inner.display())])
            },
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("mirror dir:{}/copy overlaps", f.backing()),
        },
        Case {
            name: "mount point inside mirror",
            needs: Needs::Nothing,
            command: |f| {
                let inner = f.dirs.mirrors[0].join("mnt");
                fs::create_dir(&inner).expect("mkdir MIRROR/mnt");
                mount_paths(f, &f.backing(), path_str(&inner), &[])
            },
            code: EXIT_USAGE,
            class: "invalid path",
            names: |f| format!("mirror dir:{} overlaps", f.mirror()),
        },
        Case {
            name: "unwritable log file",
            needs: Needs::Nothing,
            command: |f| mount(f, &["log_file=/nonexistent-logmirror-dir/daemon.log"]),
            code: EXIT_USAGE,
            class: "invalid path",
            names: |_| "\"/nonexistent-logmirror-dir/daemon.log\"".into(),
        },
        Case {
            name: "mount point busy",
            needs: Needs::Fuse,
            command: |f| {
                let busy = BusyMount::new(
                    &f.dirs.root.join("busy-backing"),
                    &f.dirs.mnt,
                    &f.dirs.root.join("busy-mirror"),
                );
                let mut invocation = mount(f, &[]);
                invocation._busy = Some(busy);
                invocation
            },
            code: EXIT_USAGE,
            class: "busy",
            names: |f| format!("mount point {:?} is already a mount", f.mnt()),
        },
        // Bad URLs.
        Case {
            name: "unknown mirror scheme",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=s4://logs/web1"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"s4://logs/web1\" for mirror".into(),
        },
        Case {
            name: "relative directory mirror",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=dir:copies/a"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"dir:copies/a\" for mirror".into(),
        },
        Case {
            name: "bucket name",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=s3://Logs_1/web1"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "bucket name \"Logs_1\" contains 'L'".into(),
        },
        Case {
            name: "prefix escapes",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=s3://logs/../web1"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "prefix \"../web1\" has a \"..\" component".into(),
        },
        Case {
            name: "endpoint scheme",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=s3://logs/web1,endpoint=ftp://127.0.0.1:3900"]),
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"ftp://127.0.0.1:3900\" for endpoint".into(),
        },
        Case {
            name: "endpoint with password",
            needs: Needs::Nothing,
            command: |f| {
                mount_bare(
                    f,
                    &["mirror=s3://logs/web1,endpoint=http://user:TOPSECRET@127.0.0.1:3900"],
                )
            },
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "for endpoint: it contains a user name or password".into(),
        },
        Case {
            name: "plain http endpoint",
            needs: Needs::Nothing,
            command: |f| mount_bare(f, &["mirror=s3://logs/web1,endpoint=http://192.0.2.1:3900"]),
            code: EXIT_USAGE,
            class: "endpoint",
            names: |_| "http://192.0.2.1:3900 uses plain http".into(),
        },
        // Config files.
        Case {
            name: "config mirror of wrong type",
            needs: Needs::Nothing,
            command: |f| mount_config(f, "mode = \"sync\"\nmirror = 3\n"),
            code: EXIT_USAGE,
            class: "invalid config file",
            names: |_| "line 2, key \"mirror\"".into(),
        },
        Case {
            name: "config mode of wrong type",
            needs: Needs::Nothing,
            command: |f| mount_config(f, &format!("mirror = \"dir:{}\"\nmode = 5\n", f.mirror())),
            code: EXIT_USAGE,
            class: "invalid config file",
            names: |_| "line 2, key \"mode\"".into(),
        },
        Case {
            name: "config threads as text",
            needs: Needs::Nothing,
            command: |f| {
                mount_config(
                    f,
                    &format!("mirror = \"dir:{}\"\nthreads = \"many\"\n", f.mirror()),
                )
            },
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"many\" for threads".into(),
        },
        Case {
            name: "config unknown key",
            needs: Needs::Nothing,
            command: |f| mount_config(f, "mirrors = \"dir:/x\"\n"),
            code: EXIT_USAGE,
            class: "invalid config file",
            names: |_| "mirrors".into(),
        },
        Case {
            name: "config syntax",
            needs: Needs::Nothing,
            command: |f| mount_config(f, "mode = \"sync\"\n[mirror\n"),
            code: EXIT_USAGE,
            class: "invalid config file",
            names: |_| "line 2".into(),
        },
        Case {
            name: "config file missing",
            needs: Needs::Nothing,
            command: |f| {
                let mut invocation = mount(f, &[]);
                invocation
                    .args
                    .extend(["--config".into(), f.path("missing.toml")]);
                invocation
            },
            code: EXIT_USAGE,
            class: "failed to read config file",
            names: |f| format!("{:?}", f.path("missing.toml")),
        },
        // Command-line arguments.
        Case {
            name: "missing arguments",
            needs: Needs::Nothing,
            command: |f| Invocation::new(vec!["mount".into(), f.backing()]),
            code: EXIT_USAGE,
            class: "the following required arguments were not provided",
            names: |_| "<MOUNTPOINT>".into(),
        },
        Case {
            name: "restore seq zero",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "restore".into(),
                    "s3://logs/web1".into(),
                    f.path("restored"),
                    "--seq".into(),
                    "0".into(),
                ])
            },
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "'0' for '--seq <N>'".into(),
        },
        Case {
            name: "restore time",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "restore".into(),
                    "s3://logs/web1".into(),
                    f.path("restored"),
                    "--at".into(),
                    "yesterday".into(),
                ])
            },
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "invalid time \"yesterday\"".into(),
        },
        Case {
            name: "restore from directory mirror",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "restore".into(),
                    format!("dir:{}", f.mirror()),
                    f.path("restored"),
                ])
            },
            code: EXIT_USAGE,
            class: "restore reads s3:// mirrors",
            names: |f| format!("dir:{} is a directory mirror", f.mirror()),
        },
        Case {
            name: "sync timeout overflows",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "sync".into(),
                    f.mnt(),
                    "--timeout".into(),
                    "18446744073709551615".into(),
                ])
            },
            code: EXIT_NOT_SERVED,
            class: "no logmirror daemon serves",
            names: |f| format!("{:?}", f.mnt()),
        },
        Case {
            name: "fold retention without unit",
            needs: Needs::Nothing,
            command: |_| {
                Invocation::new(vec!["fold".into(), "s3://logs/web1".into(), "30x".into()])
            },
            code: EXIT_USAGE,
            class: "invalid value",
            names: |_| "\"30x\"".into(),
        },
        Case {
            name: "verify timeout overflows",
            needs: Needs::Nothing,
            command: |f| {
                Invocation::new(vec![
                    "verify".into(),
                    f.mnt(),
                    "--timeout".into(),
                    "18446744073709551615".into(),
                ])
            },
            code: EXIT_NOT_SERVED,
            class: "no logmirror daemon serves",
            names: |f| format!("{:?}", f.mnt()),
        },
        Case {
            name: "status of a plain directory",
            needs: Needs::Nothing,
            command: |f| Invocation::new(vec!["status".into(), f.mnt(), "--json".into()]),
            code: EXIT_NOT_SERVED,
            class: "no logmirror daemon serves",
            names: |f| format!("{:?}", f.mnt()),
        },
        // A journal from another logmirror version.
        Case {
            name: "journal segment of version 2",
            needs: Needs::Fuse,
            command: |f| {
                let mut segment = segment_header(2);
                segment.extend(frame(1, &create_op("new.log")));
                plant_segment(f, &segment);
                mount(f, &[])
            },
            code: EXIT_RUNTIME,
            class: "the daemon failed during start-up",
            names: |f| {
                format!(
                    "journal segment \"{}/{STATE_DIR}/journal/00000000000000000001.seg\" has \
                     format version 2",
                    f.backing()
                )
            },
        },
        Case {
            name: "empty journal segment of version 2",
            needs: Needs::Fuse,
            command: |f| {
                plant_segment(f, &segment_header(2));
                mount(f, &[])
            },
            code: EXIT_RUNTIME,
            class: "the daemon failed during start-up",
            names: |_| "has format version 2, and this logmirror reads only version 1".into(),
        },
        // Restore from a prefix with garbage, foreign or escaping objects.
        Case {
            name: "restore garbage object",
            needs: Needs::Garage,
            command: |f| {
                restore(
                    f,
                    &[(1, b"not a journal object at all, just text".to_vec())],
                )
            },
            code: EXIT_RUNTIME,
            class: "restore failed before any record was applied",
            names: |f| format!("journal object {} is invalid", f.key(1)),
        },
        Case {
            name: "restore object of version 3",
            needs: Needs::Garage,
            command: |f| {
                let object = journal_object_version(3, 1, 1, &[create_op("a.log")]);
                restore(f, &[(1, object)])
            },
            code: EXIT_RUNTIME,
            class: "restore failed before any record was applied",
            names: |f| {
                format!(
                    "journal object {} is invalid at byte 0: unsupported object format version 3",
                    f.key(1)
                )
            },
        },
        Case {
            name: "restore object under another number",
            needs: Needs::Garage,
            command: |f| restore(f, &[(1, journal_object(7, 1, &[create_op("a.log")]))]),
            code: EXIT_RUNTIME,
            class: "restore failed before any record was applied",
            names: |f| {
                format!(
                    "journal object {} is invalid at byte 24: header names object number 7",
                    f.key(1)
                )
            },
        },
        Case {
            name: "restore stray key",
            needs: Needs::Garage,
            command: |f| {
                let stray = format!("{}/.logmirror/journal/notes.txt", f.prefix);
                f.garage().client().put(&stray, b"left by hand".to_vec());
                restore_key_objects(f)
            },
            code: EXIT_RUNTIME,
            class: "restore failed before any record was applied",
            names: |f| format!("{}/.logmirror/journal/notes.txt", f.prefix),
        },
        Case {
            name: "restore key escaping with dotdot",
            needs: Needs::Garage,
            command: |f| {
                let good =
                    journal_object(1, 1, &[create_op("ok.log"), write_op("ok.log", b"ok\n")]);
                let escaping = journal_object(2, 3, &[create_op("../escape")]);
                restore(f, &[(1, good), (2, escaping)])
            },
            code: EXIT_RUNTIME,
            class: "restore stopped after 2 records",
            names: |f| {
                format!(
                    "journal object {} is invalid at byte 56: record frame: invalid path \"../escape\"",
                    f.key(2)
                )
            },
        },
        Case {
            name: "restore absolute key",
            needs: Needs::Garage,
            command: |f| restore(f, &[(1, journal_object(1, 1, &[create_op("/etc/escape")]))]),
            code: EXIT_RUNTIME,
            class: "restore failed before any record was applied",
            names: |f| {
                format!(
                    "journal object {} is invalid at byte 56: record frame: invalid path \"/etc/escape\"",
                    f.key(1)
                )
            },
        },
        Case {
            name: "restore through symlink",
            needs: Needs::Garage,
            command: |f| {
                let outside = f.dirs.root.join("outside");
                fs::create_dir(&outside).expect("mkdir outside");
                let object = journal_object(
                    1,
                    1,
                    &[
                        symlink_op("link", path_str(&outside)),
                        create_op("link/evil"),
                        write_op("link/evil", b"never lands\n"),
                    ],
                );
                restore(f, &[(1, object)])
            },
            code: EXIT_RUNTIME,
            class: "restore stopped after 1 records",
            names: |f| format!("replaying record 1 (seq 2) of journal object {}", f.key(1)),
        },
        Case {
            name: "restore into non-empty directory",
            needs: Needs::Garage,
            command: |f| {
                let restored = f.dirs.root.join("restored");
                fs::create_dir(&restored).expect("mkdir restored");
                fs::write(restored.join("kept.log"), ACCEPTED).expect("write kept.log");
                restore(f, &[(1, journal_object(1, 1, &[create_op("a.log")]))])
            },
            code: EXIT_USAGE,
            class: "directory",
            names: |f| format!("{:?} is not empty", f.path("restored")),
        },
    ]
}

/// Returns the message of the first stderr line without `logmirror: ` and the command's
/// context, or without clap's `error: `.
fn message(stderr: &str) -> &str {
    let line = stderr.lines().next().unwrap_or("");
    if let Some(rest) = line.strip_prefix("error: ") {
        return rest;
    }
    let rest = line.strip_prefix("logmirror: ").unwrap_or(line);
    let has_context = rest.starts_with("mount \"") || rest.starts_with("restore ");
    match rest.split_once("\": ") {
        Some((_, after)) if has_context => after,
        _ => rest,
    }
}

/// Lists a tree that a case must leave as it was: the backing directory without its state
/// directory, the journal without its lock file (every open creates it), others whole.
fn snapshot(f: &Fixture, path: &Path) -> Tree {
    let skip: &[&str] = if path == f.dirs.backing {
        &[STATE_DIR]
    } else if path.ends_with("journal") {
        &["LOCK"]
    } else {
        &[]
    };
    tree_sha256(path, skip)
}

/// Returns the listings of the backing directory, the mirror, the journal and the restore
/// directory, where they exist.
fn data_in_place(f: &Fixture) -> Vec<(PathBuf, Tree)> {
    let candidates = [
        f.dirs.backing.clone(),
        f.dirs.mirrors[0].clone(),
        f.dirs.backing.join(STATE_DIR).join("journal"),
        f.dirs.root.join("restored"),
    ];
    candidates
        .into_iter()
        .filter(|path| path.exists())
        .map(|path| {
            let tree = snapshot(f, &path);
            (path, tree)
        })
        .collect()
}

fn check_case(case: &Case, f: &Fixture) {
    let invocation = (case.command)(f);
    let before = data_in_place(f);
    let args: Vec<&str> = invocation.args.iter().map(String::as_str).collect();
    let out: CmdOutput = common::logmirror_env(&args, &invocation.env);
    let is_busy = invocation._busy.is_some();
    if !is_busy && common::is_mounted(&f.dirs.mnt) {
        common::fusermount(&["-u"], &f.dirs.mnt);
        panic!("{}: the bad input got mounted: {out}", case.name);
    }
    let name = case.name;
    assert!(!out.stderr.contains("panicked"), "{name}: panic: {out}");
    assert_eq!(out.code(), case.code, "{name}: exit code: {out}");
    let message = message(&out.stderr);
    assert!(
        message.starts_with(case.class),
        "{name}: message does not start with {:?}: {out}",
        case.class
    );
    let bad_value = (case.names)(f);
    assert!(
        out.stderr.contains(&bad_value),
        "{name}: stderr does not name {bad_value:?}: {out}"
    );
    assert!(
        !out.stderr.contains("TOPSECRET"),
        "{name}: stderr shows the secret: {out}"
    );

    // Trees that existed before must be unchanged; a partial restore may add its directory.
    for (path, expected) in &before {
        let actual = snapshot(f, path);
        let label = format!("{name}: {path:?} before");
        common::assert_same_tree(&label, expected, "after", &actual);
    }
    assert_eq!(
        common::read_text(&f.dirs.backing.join("accepted.log")),
        ACCEPTED,
        "{name}"
    );
    if is_busy {
        assert_eq!(
            common::read_text(&f.dirs.mnt.join("accepted.log")),
            ACCEPTED,
            "{name}: the busy mount no longer serves its file"
        );
    }
    assert!(
        !f.dirs.root.join("escape").exists() && !Path::new("/etc/escape").exists(),
        "{name}: a restore wrote outside its directory"
    );
    if f.dirs.root.join("outside").exists() {
        assert!(
            common::list_dir(&f.dirs.root.join("outside")).is_empty(),
            "{name}: a restore wrote through a symlink"
        );
    }
}

#[test]
fn bad_input_table() {
    let cases = cases();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names repeat");

    let can_mount = cases.iter().any(|c| c.needs == Needs::Fuse) && common::can_mount();
    let garage = match cases.iter().any(|c| c.needs == Needs::Garage) {
        true => Garage::start(),
        false => None,
    };
    let mut checked = 0;
    for (index, case) in cases.iter().enumerate() {
        let runnable = match case.needs {
            Needs::Nothing => true,
            Needs::Fuse => can_mount,
            Needs::Garage => garage.is_some(),
        };
        if !runnable {
            eprintln!("SKIP {}: needs {:?}", case.name, case.needs);
            continue;
        }
        let fixture = Fixture {
            dirs: TestDirs::new(1),
            garage: garage.as_ref(),
            prefix: format!("case{index}"),
        };
        fs::write(fixture.dirs.backing.join("accepted.log"), ACCEPTED).expect("write accepted.log");
        check_case(case, &fixture);
        checked += 1;
    }
    eprintln!("bad input cases checked: {checked} of {}", cases.len());
}
