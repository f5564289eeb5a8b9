//! Locks between processes through the mount: flock and fcntl record locks, where a
//! conflicting non-blocking request gets EWOULDBLOCK (EAGAIN), and SQLite in rollback
//! journal mode with readers running while a writer commits.

mod common;

use std::fs::{self, OpenOptions};
use std::os::fd::AsFd;
use std::path::Path;
use std::thread;
use std::time::Duration;

use common::semantics::{errno_of, fcntl_lock, flock, with_case};
use common::{Helper, Mode, path_str};

both_modes!(
    flock_between_processes,
    fcntl_between_processes,
    sqlite_rollback_readers
);

const LINE_TIMEOUT: Duration = Duration::from_secs(60);

/// Takes a lock on the file named by argv[1] (`flock` or `fcntl`, exclusive, bytes 0..100
/// for fcntl), prints `locked`, waits for a line, releases, prints `unlocked` and waits for
/// stdin to close.
const HOLDER: &str = r#"
import fcntl, os, sys
path, kind = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
if kind == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
print("locked")
sys.stdin.readline()
if kind == "flock":
    fcntl.flock(fd, fcntl.LOCK_UN)
else:
    fcntl.lockf(fd, fcntl.LOCK_UN, 100, 0)
print("unlocked")
sys.stdin.readline()
os.close(fd)
"#;

/// Errnos of this process's attempts while another process holds a flock, and after.
fn flock_sequence(root: &Path) -> Vec<i32> {
    let path = root.join("locked.log");
    fs::write(&path, b"x\n").expect("create");
    let mut holder = Helper::python(HOLDER, &[path_str(&path), "flock"]);
    assert_eq!(holder.read_line(LINE_TIMEOUT), "locked");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut errnos = vec![
        errno_of(&flock(file.as_fd(), libc::LOCK_EX | libc::LOCK_NB)),
        errno_of(&flock(file.as_fd(), libc::LOCK_SH | libc::LOCK_NB)),
    ];
    holder.send_line("release");
    assert_eq!(holder.read_line(LINE_TIMEOUT), "unlocked");
    errnos.push(errno_of(&flock(
        file.as_fd(),
        libc::LOCK_EX | libc::LOCK_NB,
    )));
    let (status, _) = holder.finish(LINE_TIMEOUT);
    assert!(status.success(), "lock holder: {status}");
    errnos
}

fn flock_between_processes(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(flock_sequence);
        let expected = vec![libc::EWOULDBLOCK, libc::EWOULDBLOCK, 0];
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

/// Results of record-lock requests while another process holds a write lock on bytes
/// 0..100: the errnos, and the type and pid that F_GETLK reports.
fn fcntl_sequence(root: &Path) -> (Vec<i32>, i16, bool) {
    let path = root.join("records.db");
    fs::write(&path, vec![0u8; 4096]).expect("create");
    let mut holder = Helper::python(HOLDER, &[path_str(&path), "fcntl"]);
    assert_eq!(holder.read_line(LINE_TIMEOUT), "locked");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let fd = file.as_fd();
    let mut errnos = vec![
        errno_of(&fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 50, 10)),
        errno_of(&fcntl_lock(fd, libc::F_SETLK, libc::F_RDLCK, 0, 1)),
        errno_of(&fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK, 200, 100)),
    ];
    let probe = fcntl_lock(fd, libc::F_GETLK, libc::F_WRLCK, 0, 100).expect("F_GETLK");
    let is_holder_pid = probe.l_pid == holder.pid() as i32;
    holder.send_line("release");
    assert_eq!(holder.read_line(LINE_TIMEOUT), "unlocked");
    errnos.push(errno_of(&fcntl_lock(
        fd,
        libc::F_SETLK,
        libc::F_WRLCK,
        0,
        100,
    )));
    let (status, _) = holder.finish(LINE_TIMEOUT);
    assert!(status.success(), "lock holder: {status}");
    (errnos, probe.l_type, is_holder_pid)
}

fn fcntl_between_processes(mode: Mode) {
    with_case(mode, |case| {
        let (mounted, plain) = case.on_both(fcntl_sequence);
        let expected = (
            vec![libc::EAGAIN, libc::EAGAIN, 0, 0],
            libc::F_WRLCK as i16,
            true,
        );
        assert_eq!(plain, expected, "plain directory");
        assert_eq!(mounted, expected, "mount");
    });
}

const ACCOUNTS: usize = 10;
const TRANSFERS: usize = 300;

/// Moves money between accounts in TRANSFERS transactions, each also adding a row to
/// `transfers`, in rollback journal mode (journal_mode=DELETE).
const SQLITE_WRITER: &str = r#"
import sqlite3, sys
path, accounts, transfers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
print("journal_mode", con.execute("PRAGMA journal_mode=DELETE").fetchone()[0])
con.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
con.execute("CREATE TABLE transfers (id INTEGER PRIMARY KEY, source INTEGER, dest INTEGER, amount INTEGER)")
con.execute("BEGIN")
for i in range(accounts):
    con.execute("INSERT INTO accounts VALUES (?, 100)", (i,))
con.execute("COMMIT")
print("created")
sys.stdout.flush()
for t in range(transfers):
    source, dest, amount = t % accounts, (t * 7 + 3) % accounts, t % 13 + 1
    con.execute("BEGIN IMMEDIATE")
    con.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, source))
    con.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, dest))
    con.execute("INSERT INTO transfers VALUES (?, ?, ?, ?)", (t, source, dest, amount))
    con.execute("COMMIT")
con.close()
print("done")
"#;

/// Reads the total balance and the number of transfers in one read transaction until it
/// has seen all transfers; the total must always be ACCOUNTS * 100.
const SQLITE_READER: &str = r#"
import sqlite3, sys
path, accounts, transfers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, timeout=60, isolation_level=None)
reads, last = 0, -1
while True:
    con.execute("BEGIN")
    total = con.execute("SELECT sum(balance) FROM accounts").fetchone()[0]
    count = con.execute("SELECT count(*) FROM transfers").fetchone()[0]
    con.execute("COMMIT")
    reads += 1
    assert total == accounts * 100, "total %r after %d transfers" % (total, count)
    assert count >= last, "count went back from %d to %d" % (last, count)
    last = count
    if count == transfers:
        break
print("consistent", reads > 0)
"#;

const SQLITE_CHECK: &str = r#"
import sqlite3, sys
path = sys.argv[1]
con = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
print("integrity_check", con.execute("PRAGMA integrity_check").fetchone()[0])
print("total", con.execute("SELECT sum(balance) FROM accounts").fetchone()[0])
print("transfers", con.execute("SELECT count(*) FROM transfers").fetchone()[0])
print("balances", [r[0] for r in con.execute("SELECT balance FROM accounts ORDER BY id")])
"#;

fn expected_balances() -> Vec<i64> {
    let mut balances = vec![100i64; ACCOUNTS];
    for t in 0..TRANSFERS {
        let (source, dest, amount) = (t % ACCOUNTS, (t * 7 + 3) % ACCOUNTS, (t % 13 + 1) as i64);
        balances[source] -= amount;
        balances[dest] += amount;
    }
    balances
}

fn sqlite_rollback_readers(mode: Mode) {
    with_case(mode, |case| {
        let db = case.in_mount("bank.db");
        let args = [
            path_str(&db).to_string(),
            ACCOUNTS.to_string(),
            TRANSFERS.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let writer = Helper::python(SQLITE_WRITER, &args);
        assert_eq!(writer.read_line(LINE_TIMEOUT), "journal_mode delete");
        assert_eq!(writer.read_line(LINE_TIMEOUT), "created");
        thread::scope(|scope| {
            let readers: Vec<_> = (0..2)
                .map(|_| scope.spawn(|| common::python_ok(SQLITE_READER, &args)))
                .collect();
            for reader in readers {
                assert_eq!(reader.join().expect("reader thread"), "consistent True\n");
            }
        });
        assert_eq!(writer.read_line(LINE_TIMEOUT), "done");
        let (status, _) = writer.finish(LINE_TIMEOUT);
        assert!(status.success(), "writer: {status}");
        // The rollback journal is deleted at each commit.
        assert_eq!(common::list_dir(case.mnt()), ["bank.db"]);

        let expected = format!(
            "integrity_check ok\ntotal {}\ntransfers {TRANSFERS}\nbalances {:?}\n",
            ACCOUNTS * 100,
            expected_balances()
        );
        assert_eq!(common::python_ok(SQLITE_CHECK, &[path_str(&db)]), expected);
        case.sync();
        let copy = case.in_mirror("bank.db");
        assert_eq!(
            common::python_ok(SQLITE_CHECK, &[path_str(&copy)]),
            expected
        );
    });
}
