//! The mount daemon's life: checks, detaching into the background, journal recovery, mirror
//! workers, the FUSE session, and on unmount or SIGTERM the drain of what mirrors still
//! lack. Startup reports success or the cause of failure to the waiting `logmirror mount`
//! through a pipe, after the mount serves.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::{MirrorSpec, Mode, MountConfig, OnMirrorFailure, WhenFull};
use crate::control;
use crate::fs::{FsOptions, LogFs};
use crate::journal::{Journal, Position, Seq};
use crate::metrics;
use crate::mirror::Mirror;
use crate::mirror::acks::{AckPolicy, Acks};
use crate::mirror::cursor::{self, Cursor};
use crate::mirror::dir::DirMirror;
use crate::mirror::s3::{CopySettings, Folder, LeaseOptions, S3Mirror, StoreReport};
use crate::mirror::worker::{self, Context, MirrorSlot, Progress, Stop};
use crate::monitor::Monitor;
use crate::notify;
use crate::periodic::{self, FoldTask, Schedule};
use crate::reload;
use crate::rules::Rules;
use crate::status::{MountInfo, Policy};

/// Magic number of FUSE in `statfs(2)`'s f_type.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path: {0}")]
    Invalid(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("failed to {action} {path:?}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to open the journal")]
    Journal(#[from] crate::journal::Error),
    #[error("failed to open mirror {name}")]
    Mirror {
        name: String,
        #[source]
        source: crate::mirror::Error,
    },
    #[error("the daemon failed during start-up: {0}")]
    Startup(String),
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks paths, then runs the daemon: in this process with `foreground`, otherwise in a
/// detached child while this process waits until the mount serves.
///
/// `source` is where the configuration came from; SIGHUP builds it again from there.
pub fn mount(
    mut config: MountConfig,
    foreground: bool,
    source: reload::Source,
) -> Result<(), Error> {
    let reloader = Reloader {
        as_given: config.clone(),
        source,
    };
    check_paths(&mut config)?;
    limit_malloc_arenas();
    if foreground {
        return run(config, &mut None, reloader);
    }
    let (read_end, write_end) = pipe()?;
    // SAFETY: no thread has been started yet, so the child may run anything after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io_error("fork a daemon for", &config.mountpoint)(
            std::io::Error::last_os_error(),
        ));
    }
    if pid > 0 {
        drop(write_end);
        return wait_for_child(read_end, &config);
    }
    drop(read_end);
    detach(&config);
    let mut notify = Some(File::from(write_end));
    match run(config, &mut notify, reloader) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let message = crate::mirror::worker::error_chain(&e);
            if let Some(mut notify) = notify {
                let _ = writeln!(notify, "{message}");
            }
            log::error!("{message}");
            std::process::exit(1)
        }
    }
}

/// Maximum number of malloc arenas of the daemon. glibc creates up to eight per core, and
/// each FUSE thread that allocates a write's data gets its own, so freed data stays spread
/// over them. Measured: 124 MB resident after 1 GiB of 4 KiB appends with the S3 mirror
/// down and 32 MiB of write data in memory, with glibc's default.
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps the number of glibc malloc arenas, so the daemon's memory follows what it holds.
/// Must run before any thread starts.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only changes allocator settings; no thread allocates concurrently yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Startup(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn wait_for_child(read_end: OwnedFd, config: &MountConfig) -> Result<(), Error> {
    let mut message = String::new();
    let _ = File::from(read_end).read_to_string(&mut message);
    let message = message.trim();
    if message == "ready" {
        return Ok(());
    }
    if message.is_empty() {
        return Err(Error::Startup(format!(
            "the daemon exited without reporting; see its log at {:?}",
            log_path(config)
        )));
    }
    Err(Error::Startup(message.to_string()))
}

fn log_path(config: &MountConfig) -> PathBuf {
    config
        .log_file
        .clone()
        .unwrap_or_else(|| config.state_dir.join("daemon.log"))
}

/// Starts a new session and sends stdin and stdout to /dev/null and stderr to the log file.
fn detach(config: &MountConfig) {
    // SAFETY: setsid has no preconditions; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
    let _ = create_private_dir(&config.state_dir);
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log_path(config));
    // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
    unsafe {
        if let Ok(null) = &null {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
        }
        if let Ok(log) = &log {
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Canonicalizes and cross-checks the paths of the configuration.
fn check_paths(config: &mut MountConfig) -> Result<(), Error> {
    let backing = &config.backing;
    let meta = std::fs::metadata(backing).map_err(|e| {
        Error::Invalid(format!(
            "backing directory {backing:?} cannot be used: {e}; create it or fix the path"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "backing path {backing:?} is not a directory"
        )));
    }

    clean_dead_mount(&config.mountpoint);
    let mountpoint = &config.mountpoint;
    let meta = std::fs::metadata(mountpoint).map_err(|e| {
        Error::Invalid(format!(
            "mount point {mountpoint:?} cannot be used: {e}; create the directory"
        ))
    })?;
    if !meta.is_dir() {
        return Err(Error::Invalid(format!(
            "mount point {mountpoint:?} is not a directory"
        )));
    }

    let default_state = config.state_is_inside_backing();
    config.backing = backing
        .canonicalize()
        .map_err(io_error("resolve", backing))?;
    config.mountpoint = config
        .mountpoint
        .canonicalize()
        .map_err(io_error("resolve", mountpoint))?;
    if is_mounted_here(&config.mountpoint) {
        return Err(Error::Busy(format!(
            "mount point {:?} is already a mount; unmount it first (fusermount3 -u)",
            config.mountpoint
        )));
    }
    if default_state {
        config.state_dir = config.backing.join(crate::config::STATE_DIR_NAME);
    }

    let (backing, mountpoint) = (&config.backing, &config.mountpoint);
    if backing == mountpoint {
        return Err(Error::Invalid(format!(
            "backing directory and mount point are the same path {backing:?}; use two directories"
        )));
    }
    if mountpoint.starts_with(backing) || backing.starts_with(mountpoint) {
        return Err(Error::Invalid(format!(
            "backing directory {backing:?} and mount point {mountpoint:?} are nested; use two separate directories"
        )));
    }

    let mut mirror_dirs: Vec<PathBuf> = Vec::new();
    for spec in &config.mirrors {
        let MirrorSpec::Dir(dir) = spec else {
            continue;
        };
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "mirror {} is not a directory; give the path of a directory",
                    spec.name()
                )));
            }
            Err(e) => {
                return Err(Error::Invalid(format!(
                    "mirror {} is not usable: {e}; create the directory, or mount the disk \
                     it is on, before mounting",
                    spec.name()
                )));
            }
        }
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
        // A mount point or state directory inside a mirror would be replayed into, and a
        // resync would delete it.
        let nested = dir.starts_with(backing)
            || dir.starts_with(mountpoint)
            || backing.starts_with(&dir)
            || mountpoint.starts_with(&dir)
            || config.state_dir.starts_with(&dir);
        if nested {
            return Err(Error::Invalid(format!(
                "mirror {} overlaps the backing directory {backing:?}, the mount point {mountpoint:?} \
                 or the state directory {:?}; put the mirror outside all three",
                spec.name(),
                config.state_dir
            )));
        }
        if let Some(other) = mirror_dirs
            .iter()
            .find(|d| d.starts_with(&dir) || dir.starts_with(d))
        {
            return Err(Error::Invalid(format!(
                "mirror {} is the same directory as, or nested with, mirror directory {other:?}; \
                 give each mirror its own directory",
                spec.name()
            )));
        }
        mirror_dirs.push(dir);
    }
    if let Some(log_file) = &config.log_file {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(log_file);
        if let Err(e) = opened {
            return Err(Error::Invalid(format!(
                "log_file {log_file:?} cannot be opened for writing: {e}; fix the path or its permissions"
            )));
        }
    }
    if !default_state
        && (config.state_dir.starts_with(backing) || config.state_dir.starts_with(mountpoint))
    {
        return Err(Error::Invalid(format!(
            "state directory {:?} is inside the backing directory or the mount point; \
             leave state unset (it defaults to BACKING/.logmirror, hidden from the mount) or put it elsewhere",
            config.state_dir
        )));
    }
    Ok(())
}

/// Returns true if a filesystem is mounted exactly at `path`.
fn is_mounted_here(path: &Path) -> bool {
    mount_entry(path).is_some()
}

/// Returns the filesystem type of the mount at `path`, from /proc/self/mountinfo.
fn mount_entry(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.as_os_str().as_bytes();
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = unescape_mountinfo(fields.get(4)?);
        let dash = fields.iter().position(|f| *f == "-")?;
        (mount_point == wanted).then(|| fields.get(dash + 1).map(|s| s.to_string()))?
    })
}

fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value =
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Unmounts a logmirror mount left behind by a daemon that died ("Transport endpoint is
/// not connected"), so that a restart needs no manual step. Other mounts are left alone.
fn clean_dead_mount(mountpoint: &Path) {
    let Err(e) = std::fs::metadata(mountpoint) else {
        return;
    };
    // A request that was in flight when the daemon died fails with ECONNABORTED, later ones
    // with ENOTCONN.
    if !matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) {
        return;
    }
    let absolute = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    match mount_entry(&absolute) {
        Some(fstype) if fstype == crate::fs::FS_TYPE => {}
        _ => return,
    }
    log::warn!(
        "mount point {absolute:?} is a dead logmirror mount (its daemon died); unmounting it"
    );
    let Ok(path) = CString::new(absolute.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string.
    let detached = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0;
    if !detached {
        let _ = std::process::Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&absolute)
            .status();
    }
}

/// Creates a directory (and its parents) that only the daemon's user can enter, and makes
/// an existing one so. The daemon runs with umask 0, so nothing else would protect the
/// journal, the cursors and the control socket from other local users.
///
/// An existing directory under another name (a shared directory given as `state=`) keeps its
/// mode, so that logmirror never changes the permissions of a directory it does not own.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let ours = path
        .file_name()
        .is_some_and(|n| n == crate::config::STATE_DIR_NAME || n == "logmirror");
    if existed && !ours {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Locks the state directory so that two daemons never share a journal.
///
/// A daemon that was just unmounted may still be draining its mirrors, so a new one waits
/// up to `wait` for it to finish; `fusermount3 -u` followed at once by `logmirror mount`
/// then works.
fn lock_state_dir(state_dir: &Path, wait: Duration) -> Result<File, Error> {
    create_private_dir(state_dir).map_err(io_error("create state directory", state_dir))?;
    let path = state_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    let deadline = Instant::now() + wait;
    let mut logged = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        if Instant::now() >= deadline {
            // NOTE: in the background this runs in the daemon, so `logmirror mount` exits 1
            // with this message, where `-f` exits 2.
            return Err(Error::Busy(format!(
                "state directory {state_dir:?} is in use by another logmirror daemon after waiting {wait:?}; \
                 unmount that mount first or give this one another state= directory"
            )));
        }
        if !logged {
            log::info!(
                "state directory {state_dir:?} is held by another daemon (one still draining after unmount?); waiting up to {wait:?}"
            );
            logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Raises the soft limit on open files to the hard limit. The daemon keeps one descriptor per
/// inode the kernel has looked up, so the usual soft limit of 1024 fails on busy trees.
fn raise_open_file_limit() {
    // SAFETY: getrlimit and setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                log::warn!(
                    "cannot raise the open file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set, then masking in the only thread so far.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Runs the daemon until the mount goes away, then drains.
///
/// `notify` is the pipe to the waiting `logmirror mount`; it is closed once the mount serves
/// so that the waiting process returns.
fn run(config: MountConfig, notify: &mut Option<File>, reloader: Reloader) -> Result<(), Error> {
    let signals = block_signals();
    raise_open_file_limit();
    // SAFETY: umask has no preconditions. Modes come from the requests, already masked.
    unsafe { libc::umask(0) };
    let _lock = lock_state_dir(
        &config.state_dir,
        config.drain_timeout + Duration::from_secs(10),
    )?;
    // Before the journal and the mirrors, so that a port in use stops the mount before an
    // S3 mirror takes its lease.
    let metrics_listener = config.metrics.as_ref().map(metrics::bind).transpose()?;
    let clean_marker = config.state_dir.join("clean-shutdown");
    let was_clean = clean_marker.exists();
    let clean_head = read_clean_marker(&clean_marker);

    let journal_dir = config.state_dir.join("journal");
    let (journal, recovery) = Journal::open(&journal_dir, config.segment_size_bytes)?;
    let read_backing = crate::mirror::backing_reader(&config.backing)
        .map_err(io_error("open", &config.backing))?;
    journal.set_backing_reader(read_backing);
    let journal = Arc::new(journal);
    log::info!(
        "journal {:?}: {} records in {} segments, head seq {}, {} torn bytes cut{}",
        journal_dir,
        recovery.records,
        recovery.segments,
        recovery.head,
        recovery.torn_bytes_cut,
        if was_clean || recovery.head == Seq(0) {
            ""
        } else {
            "; previous run did not shut down cleanly"
        }
    );
    let _ = std::fs::remove_file(&clean_marker);
    let records_lost = lost_at_recovery(&journal, &recovery, clean_head);

    let namespace = Arc::new(RwLock::new(()));
    let (slots, folds) = open_mirrors(&config, &journal, &namespace, was_clean, records_lost)?;
    let confirmed = slots.iter().map(|s| s.progress().confirmed).collect();
    let rules = Arc::new(Rules::new(&config));
    let acks = Arc::new(Acks::new(
        AckPolicy {
            mode: config.mode,
            ack_count: config.ack_count(),
            on_mirror_failure: config.on_mirror_failure,
            sync_timeout: config.sync_timeout,
            max_backlog_bytes: config.max_backlog_bytes,
            flush_interval: config.flush_interval,
            rules: Some(rules.clone()),
        },
        confirmed,
    ));
    let ctx = Arc::new(Context {
        journal: journal.clone(),
        acks: acks.clone(),
        namespace: namespace.clone(),
        backing: config.backing.clone(),
        state_dir: config.state_dir.clone(),
        // The name is reserved whether or not the state directory lives there, so that the
        // mount, the mirrors and verify agree on the tree.
        skip_state_dir: true,
        stop: Stop::default(),
        rules,
    });
    let workers: Vec<_> = slots
        .iter()
        .map(|slot| worker::spawn(ctx.clone(), slot.clone()))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Startup(format!("cannot start mirror workers: {e}")))?;

    spawn_housekeeping(ctx.clone());
    let monitor = Arc::new(Monitor::new(&slots, journal.head().0));
    monitor
        .spawn(ctx.clone(), slots.clone())
        .map_err(|e| Error::Startup(format!("cannot start the monitor thread: {e}")))?;
    let schedule = Schedule {
        verify_interval: config.verify_interval,
        repair: config.repair,
        retention: config.retention,
    };
    periodic::spawn(ctx.clone(), slots.clone(), folds, schedule)
        .map_err(|e| Error::Startup(format!("cannot start the periodic verify thread: {e}")))?;

    let reads = Arc::new(crate::fs::Reads::new(config.passthrough));
    let info = MountInfo {
        mountpoint: config.mountpoint.display().to_string(),
        backing: config.backing.display().to_string(),
        state_dir: config.state_dir.display().to_string(),
        mode: match config.mode {
            Mode::Sync => "sync".into(),
            Mode::Async => "async".into(),
        },
        policy: policy_of(&config),
        verify_interval_secs: config.verify_interval.as_secs(),
        repair: config.repair,
        retention_secs: config.retention.map(|r| r.as_secs()),
        metrics: metrics_listener
            .as_ref()
            .map(|(_, endpoint)| endpoint.address.clone()),
        mirror_labels: config.mirror_names.clone(),
        reads: reads.clone(),
    };
    let (listener, link) = control::Server::bind(&config.state_dir, &config.mountpoint)
        .map_err(io_error("create the control socket in", &config.state_dir))?;
    let server = Arc::new(control::Server {
        info,
        ctx: ctx.clone(),
        slots: slots.clone(),
        monitor,
    });
    let _metrics_endpoint = match metrics_listener {
        Some((listener, endpoint)) => {
            let source = server.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || metrics::serve(listener, source))
                .map_err(|e| Error::Startup(format!("cannot start the metrics thread: {e}")))?;
            log::info!("metrics endpoint listens on {}", endpoint.address);
            Some(endpoint)
        }
        None => None,
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || server.serve(listener))
        .map_err(|e| Error::Startup(format!("cannot start the control thread: {e}")))?;

    let session_done = mount_session(&config, journal.clone(), acks.clone(), namespace, reads)?;
    wait_until_serving(&config.mountpoint)?;
    log::info!(
        "mounted {:?} on {:?}: mode {}, mirrors {}",
        config.backing,
        config.mountpoint,
        match config.mode {
            Mode::Sync => "sync",
            Mode::Async => "async",
        },
        config
            .mirrors
            .iter()
            .map(MirrorSpec::name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(mut notify) = notify.take() {
        let _ = writeln!(notify, "ready");
    }
    let systemd = notify::Notifier::from_env().map(Arc::new);
    let watchdog_stop = Arc::new(Stop::default());
    if let Some(systemd) = &systemd {
        systemd.send("READY=1\nSTATUS=serving");
        if let Some(interval) = notify::watchdog_interval() {
            notify::spawn_watchdog(systemd.clone(), interval, watchdog_stop.clone());
        }
    }
    let live = Arc::new(reload::Live::new(&config));
    spawn_signal_thread(signals, config.mountpoint.clone(), reloader, live.clone());

    let _ = session_done.recv();
    if let Some(systemd) = &systemd {
        systemd.send("STOPPING=1\nSTATUS=unmounted; draining mirrors");
    }
    log::info!(
        "{:?} unmounted; draining mirrors (drain_timeout={:?})",
        config.mountpoint,
        live.drain_timeout()
    );
    let deadline = drain(live.drain_timeout(), &ctx, &slots);
    for copies in slots.iter().filter_map(|slot| slot.copies.as_ref()) {
        copies.shutdown(deadline);
    }
    ctx.stop.set();
    watchdog_stop.set();
    let deadline = Instant::now() + Duration::from_secs(5);
    for worker in workers {
        while !worker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for slot in &slots {
        ctx.store_cursor(slot);
    }
    acks.fail_all(libc::EIO);
    let head = journal.head().0;
    if head.0 > 0 {
        journal.sync_to(head)?;
    }
    let (min_seq, _) = acks.min_confirmed();
    let _ = journal.release_up_to(min_seq);
    release_mirrors(&slots, head);
    // Another daemon may have mounted on the same mount point meanwhile; its link stays.
    if std::fs::read_link(&link).is_ok_and(|target| target == config.state_dir.join("control.sock"))
    {
        let _ = std::fs::remove_file(&link);
    }
    let _ = std::fs::remove_file(config.state_dir.join("control.sock"));
    write_clean_marker(&clean_marker, &journal).map_err(io_error("write", &clean_marker))?;
    log::info!("daemon for {:?} stopped", config.mountpoint);
    Ok(())
}

/// Returns the acknowledgement and backlog settings shown in status.
fn policy_of(config: &MountConfig) -> Policy {
    Policy {
        ack: config.ack_count(),
        on_mirror_failure: match config.on_mirror_failure {
            OnMirrorFailure::Block => "block",
            OnMirrorFailure::Fail => "fail",
            OnMirrorFailure::Degrade => "degrade",
        }
        .to_string(),
        sync_timeout_ms: config.sync_timeout.as_millis() as u64,
        when_full: match config.when_full {
            WhenFull::Block => "block",
            WhenFull::Fail => "fail",
        }
        .to_string(),
        max_backlog_bytes: config.max_backlog_bytes,
    }
}

/// Writes the clean-shutdown marker: the journal id and head seq as `ID HEAD`, so that the
/// next start can tell whether recovery lost records that mirrors may lack.
fn write_clean_marker(path: &Path, journal: &Journal) -> std::io::Result<()> {
    let mut file = File::create(path)?;
    writeln!(file, "{:016x} {}", journal.id(), journal.head().0)?;
    file.sync_all()
}

/// Returns the journal id and head seq of the previous run's clean shutdown, or `None` when
/// the marker is missing, or empty as older versions wrote it.
fn read_clean_marker(path: &Path) -> Option<(u64, Seq)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (id, head) = text.trim().split_once(' ')?;
    let id = u64::from_str_radix(id, 16).ok()?;
    let head = head.parse().ok()?;
    Some((id, Seq(head)))
}

/// Returns true when recovery may have removed records that a mirror lacks. That is so when
/// the head is behind the one written at the last clean shutdown (the newest segment was
/// damaged or deleted), or, without that head, when recovery cut bytes off the newest segment.
fn lost_at_recovery(
    journal: &Journal,
    recovery: &crate::journal::Recovery,
    clean_head: Option<(u64, Seq)>,
) -> bool {
    // NOTE: seqs after the recovered head are given again to new records, and an S3 mirror
    // that stored the lost ones leaves the new ones out when it replays.
    let lost = match clean_head {
        Some((id, head)) if id == journal.id() => recovery.head < head,
        // A journal with another id makes every cursor invalid, which resyncs anyway.
        Some(_) => false,
        None => recovery.torn_bytes_cut > 0,
    };
    if !lost {
        return false;
    }
    let place = match &recovery.cut_at {
        Some((segment, offset)) => format!("segment {segment:?} was cut at byte {offset}"),
        None => format!("segments are missing from {:?}", journal.dir()),
    };
    match clean_head {
        // A clean shutdown wrote a head that the journal no longer reaches, so the segments
        // were damaged or removed after it, which no crash explains.
        Some((_, head)) => log::error!(
            "journal recovery lost records (head seq {head} at the last clean shutdown, {} now, \
             {} bytes cut): {place}; every mirror resyncs from the backing tree",
            recovery.head,
            recovery.torn_bytes_cut
        ),
        None => log::warn!(
            "journal recovery lost records (head seq unknown, {} now, {} bytes cut): {place}; \
             every mirror resyncs from the backing tree",
            recovery.head,
            recovery.torn_bytes_cut
        ),
    }
    true
}

/// Opens each mirror and its cursor, deciding which mirrors must be resynced. Returns the
/// slots and, with `retention=`, a fold task per S3 mirror.
fn open_mirrors(
    config: &MountConfig,
    journal: &Arc<Journal>,
    namespace: &Arc<RwLock<()>>,
    was_clean: bool,
    records_lost: bool,
) -> Result<(Vec<Arc<MirrorSlot>>, Vec<FoldTask>), Error> {
    let mut slots = Vec::new();
    let mut folds = Vec::new();
    for (index, spec) in config.mirrors.iter().enumerate() {
        let name = spec.name();
        let cursor = cursor::load(&config.state_dir, &name);
        let (head, _) = journal.head();
        let first = journal.first_seq();
        let mut progress = Progress::default();
        let reason = match &cursor {
            None => Some("it has no cursor yet"),
            Some(c) if c.journal_id != journal.id() => {
                Some("its cursor belongs to another journal")
            }
            Some(c) if c.needs_resync => Some("a resync was pending"),
            Some(_) if records_lost => Some("journal recovery lost records it may lack"),
            Some(_) if !was_clean && head.0 > 0 => {
                Some("the previous run did not shut down cleanly")
            }
            Some(c) if c.seq > head.0 => Some("its cursor is ahead of the journal"),
            Some(c) if first.0 > 0 && c.seq + 1 < first.0 => {
                Some("the journal no longer holds the records it lacks")
            }
            Some(_) => None,
        };
        if let Some(c) = &cursor {
            progress.confirmed = (Seq(c.seq), Position(c.position));
        }
        let target = MirrorTarget {
            journal,
            namespace,
            cursor: cursor.as_ref(),
            resync_pending: reason.is_some(),
        };
        let opened = open_mirror(config, spec, index, &target).map_err(|source| Error::Mirror {
            name: name.clone(),
            source,
        })?;
        let reason = match (reason, opened.resync_reason) {
            (Some(reason), _) => Some(reason.to_string()),
            (None, Some(store_reason)) => {
                log::warn!("mirror {name}: the store contradicts the cursor: {store_reason}");
                Some(store_reason)
            }
            (None, None) => None,
        };
        if let Some(reason) = reason {
            log::info!("mirror {name}: will resync from the backing tree because {reason}");
            progress.needs_resync = true;
            progress.confirmed = (Seq(0), Position(0));
        }
        let copies = opened.mirror.copies();
        let slot = Arc::new(MirrorSlot {
            index,
            name,
            mirror: Mutex::new(opened.mirror),
            progress: Mutex::new(progress),
            store: opened.store,
            copies,
        });
        if let Some(folder) = opened.folder {
            folds.push(FoldTask::new(slot.clone(), folder));
        }
        slots.push(slot);
    }
    Ok((slots, folds))
}

/// Journal, namespace lock and cursor that a mirror is opened against.
struct MirrorTarget<'a> {
    journal: &'a Arc<Journal>,
    namespace: &'a Arc<RwLock<()>>,
    cursor: Option<&'a Cursor>,
    /// The cursor alone already calls for a resync.
    resync_pending: bool,
}

/// An opened mirror, with what an S3 mirror found in its store.
struct OpenedMirror {
    mirror: Box<dyn Mirror>,
    /// Folder of the S3 history, with `retention=`.
    folder: Option<Folder>,
    store: Option<StoreReport>,
    /// Reason the store's content calls for a resync, if it does.
    resync_reason: Option<String>,
}

/// Opens one mirror and, for an S3 mirror, starts its readable copies and, with
/// `retention=`, opens the folder of its history.
fn open_mirror(
    config: &MountConfig,
    spec: &MirrorSpec,
    index: usize,
    target: &MirrorTarget,
) -> Result<OpenedMirror, crate::mirror::Error> {
    match spec {
        MirrorSpec::Dir(dir) => Ok(OpenedMirror {
            mirror: Box::new(DirMirror::open(dir)?),
            folder: None,
            store: None,
            resync_reason: None,
        }),
        MirrorSpec::S3 { bucket, prefix } => {
            let journal = target.journal;
            let replay_dir = config.state_dir.join("replay");
            let scratch = replay_dir.join(format!("mirror-{index}"));
            let lease = LeaseOptions {
                state_dir: &config.state_dir,
                takeover: config.takeover,
            };
            let mut mirror =
                S3Mirror::open(bucket, prefix, &config.s3, journal.id(), &scratch, &lease)?;
            let (head, _) = journal.head();
            let resync_reason =
                match mirror.check_position(head, target.cursor, journal.dir(), config.takeover) {
                    Ok(reason) => reason,
                    Err(e) => {
                        // The lease goes back, so that the remedies the errors name (a new
                        // journal, a restore) need no takeover.
                        if let Err(release) = mirror.release() {
                            log::warn!("{release}");
                        }
                        return Err(e);
                    }
                };
            let resync_pending = target.resync_pending || resync_reason.is_some();
            let confirmed = match (resync_pending, target.cursor) {
                (false, Some(cursor)) => Seq(cursor.seq),
                _ => Seq(0),
            };
            mirror.start_copies(CopySettings {
                backing: config.backing.clone(),
                interval: config.materialize_interval(),
                namespace: target.namespace.clone(),
                journal: journal.clone(),
                state_dir: config.state_dir.clone(),
                confirmed,
                resync_pending,
                selects_file: {
                    let rules = Rules::new(config);
                    Arc::new(move |path| rules.selects_file(index, path))
                },
            })?;
            let folder = match config.retention {
                Some(_) => Some(Folder::new(
                    bucket,
                    prefix,
                    &config.s3,
                    &replay_dir.join(format!("fold-{index}")),
                    mirror.history_lock(),
                )?),
                None => None,
            };
            Ok(OpenedMirror {
                folder,
                store: Some(mirror.report()),
                resync_reason,
                mirror: Box::new(mirror),
            })
        }
    }
}

fn mount_session(
    config: &MountConfig,
    journal: Arc<Journal>,
    acks: Arc<Acks>,
    namespace: Arc<RwLock<()>>,
    reads: Arc<crate::fs::Reads>,
) -> Result<std::sync::mpsc::Receiver<()>, Error> {
    let root = crate::fs::open_root(&config.backing).map_err(io_error("open", &config.backing))?;
    let fs = LogFs::new(
        root,
        journal,
        acks,
        namespace,
        FsOptions {
            hide_state_dir: true,
            when_full_blocks: config.when_full == WhenFull::Block,
            journal_closes: config.mirrors.iter().any(MirrorSpec::is_s3),
            reads,
        },
    )
    .map_err(io_error("open", &config.backing))?;

    let mut fuse_config = fuser::Config::default();
    fuse_config.n_threads = Some(config.threads);
    fuse_config.clone_fd = config.threads > 1;
    // SAFETY: geteuid has no preconditions.
    let session = if unsafe { libc::geteuid() } == 0 {
        fuse_config.acl = fuser::SessionACL::All;
        let device =
            crate::fs::mount_kernel(&config.backing, &config.mountpoint, &config.kernel_options)
                .map_err(io_error("mount FUSE on", &config.mountpoint))?;
        fuser::Session::from_fd(fs, device, fuser::SessionACL::All, fuse_config)
    } else {
        fuse_config.mount_options = vec![
            fuser::MountOption::FSName(config.backing.display().to_string()),
            fuser::MountOption::Subtype("logmirror".into()),
            fuser::MountOption::DefaultPermissions,
        ];
        for option in &config.kernel_options {
            fuse_config
                .mount_options
                .push(fuser::MountOption::CUSTOM(option.clone()));
        }
        fuser::Session::new(fs, &config.mountpoint, &fuse_config)
    }
    .map_err(io_error("start the FUSE session on", &config.mountpoint))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                log::error!("FUSE session ended with an error: {e}");
            }
            let _ = done_tx.send(());
        })
        .map_err(|e| Error::Startup(format!("cannot start the FUSE session thread: {e}")))?;
    Ok(done_rx)
}

/// Waits until the kernel serves the mount point through FUSE.
fn wait_until_serving(mountpoint: &Path) -> Result<(), Error> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("mount point {mountpoint:?} contains a NUL byte")))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // SAFETY: an all-zero statfs is a valid plain C struct; the path is NUL-terminated.
        let f_type = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            if libc::statfs(path.as_ptr(), &mut st) == 0 {
                st.f_type as i64
            } else {
                0
            }
        };
        if f_type == FUSE_SUPER_MAGIC {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Startup(format!(
                "mount point {mountpoint:?} did not start serving within 30 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The configuration as `logmirror mount` built it, before paths were resolved, and where it
/// came from: the base that SIGHUP compares a rebuilt configuration with.
struct Reloader {
    as_given: MountConfig,
    source: reload::Source,
}

/// Unmounts on SIGTERM or SIGINT (lazily, so programs with open files finish while the
/// daemon keeps serving them); SIGHUP reloads the configuration.
fn spawn_signal_thread(
    signals: libc::sigset_t,
    mountpoint: PathBuf,
    mut reloader: Reloader,
    live: Arc<reload::Live>,
) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: `signals` is a valid set blocked in every thread; `signal` is writable.
                if unsafe { libc::sigwait(&signals, &mut signal) } != 0 {
                    continue;
                }
                if signal == libc::SIGHUP {
                    reloader.as_given = reload::reload(&reloader.as_given, &reloader.source, &live);
                    continue;
                }
                log::info!("signal {signal} received: unmounting {mountpoint:?}");
                let Ok(path) = CString::new(mountpoint.as_os_str().as_bytes()) else {
                    return;
                };
                // SAFETY: `path` is a valid NUL-terminated string.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    let _ = std::process::Command::new("fusermount3")
                        .arg("-u")
                        .arg("-z")
                        .arg(&mountpoint)
                        .status();
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the signal thread: {e}; stop the daemon with fusermount3 -u");
    }
}

/// Runs periodic duties: sync-mode timeouts and removal of confirmed segments.
fn spawn_housekeeping(ctx: Arc<Context>) {
    let spawned = std::thread::Builder::new()
        .name("housekeeping".into())
        .spawn(move || {
            let mut last_release = Instant::now();
            while !ctx.stop.sleep(Duration::from_millis(50)) {
                ctx.acks.tick(ctx.journal.head().0);
                if last_release.elapsed() >= Duration::from_secs(1) {
                    last_release = Instant::now();
                    let (min_seq, _) = ctx.acks.min_confirmed();
                    ctx.journal.release_data_up_to(min_seq);
                    if let Err(e) = ctx.journal.release_up_to(min_seq) {
                        log::warn!("failed to remove confirmed journal segments: {e}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the housekeeping thread: {e}");
    }
}

/// Releases what each mirror holds in its store (the S3 lease) when it confirmed every
/// record up to `head`. A mirror that did not keeps its lease for the next mount of this
/// state directory, which sends the rest.
fn release_mirrors(slots: &[Arc<MirrorSlot>], head: Seq) {
    for slot in slots {
        let confirmed = slot.progress().confirmed.0;
        if confirmed < head {
            if slot.store.is_some() {
                log::info!(
                    "mirror {}: keeps its lease, because it lacks the records after seq {confirmed}",
                    slot.name
                );
            }
            continue;
        }
        if let Err(e) = slot.mirror.lock().expect("mirror lock").release() {
            log::warn!("{}", crate::mirror::worker::error_chain(&e));
        }
    }
}

/// Waits up to `drain_timeout` for every mirror to confirm the journal head; returns the end
/// of that time, which the readable copies get too.
fn drain(drain_timeout: Duration, ctx: &Context, slots: &[Arc<MirrorSlot>]) -> Instant {
    let head = ctx.journal.head().0;
    let started = Instant::now();
    let deadline = started + drain_timeout;
    if ctx.acks.wait_all_confirmed(head, deadline) {
        log::info!(
            "mirrors drained up to seq {head} in {:.1?}",
            started.elapsed()
        );
        return deadline;
    }
    for slot in slots {
        let confirmed = slot.progress().confirmed.0;
        if confirmed < head {
            log::warn!(
                "mirror {}: drain timed out at seq {confirmed} of {head}; the {} records it lacks stay in the journal and are sent after the next mount",
                slot.name,
                head.0 - confirmed.0
            );
        }
    }
    deadline
}
