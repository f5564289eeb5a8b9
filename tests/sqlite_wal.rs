//! SQLite in WAL mode on the mount: the `-wal` file is appended and rewritten in place, the
//! `-shm` index is a shared memory map, and both are deleted when the last connection closes.
//! The database must pass `integrity_check` through the mount and in the mirror.

mod common;

use common::{Mode, Mount, TestDirs, assert_mirrors_match, list_dir, path_str};

const TRANSACTIONS: usize = 20;
const ROWS_PER_TRANSACTION: usize = 100;

const WRITE: &str = r#"
import sqlite3, sys
path, transactions, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
con = sqlite3.connect(path, isolation_level=None)
print("journal_mode", con.execute("PRAGMA journal_mode=WAL").fetchone()[0])
con.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, tx INTEGER NOT NULL, body TEXT NOT NULL)")
for t in range(transactions):
    con.execute("BEGIN")
    for r in range(rows):
        i = t * rows + r
        con.execute("INSERT INTO entries VALUES (?, ?, ?)", (i, t, "entry %06d %s" % (i, "y" * 100)))
    con.execute("COMMIT")
other = sqlite3.connect(path)
print("other_connection_count", other.execute("SELECT count(*) FROM entries").fetchone()[0])
other.close()
con.close()
"#;

/// Opens the database (read-only and `immutable` when the second argument is `ro`, so that
/// nothing is created beside a mirror's copy) and prints its check result, row count and a
/// sha256 over every row. The journal mode comes from the header's read and write version
/// bytes (2 and 2 mean WAL), because an `immutable` connection always reports `delete`.
const CHECK: &str = r#"
import hashlib, sqlite3, sys
path, access = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    header = f.read(100)
print("journal_mode", "wal" if header[18:20] == b"\x02\x02" else "rollback %r" % header[18:20])
if access == "ro":
    con = sqlite3.connect("file:%s?mode=ro&immutable=1" % path, uri=True)
else:
    con = sqlite3.connect(path)
print("integrity_check", con.execute("PRAGMA integrity_check").fetchone()[0])
print("count", con.execute("SELECT count(*) FROM entries").fetchone()[0])
digest = hashlib.sha256()
for row in con.execute("SELECT id, tx, body FROM entries ORDER BY id"):
    digest.update(repr(row).encode())
print("rows_sha256", digest.hexdigest())
con.close()
"#;

fn expected_check_output() -> String {
    let rows = TRANSACTIONS * ROWS_PER_TRANSACTION;
    let mut repr = String::new();
    for i in 0..rows {
        let tx = i / ROWS_PER_TRANSACTION;
        repr.push_str(&format!("({i}, {tx}, 'entry {i:06} {}')", "y".repeat(100)));
    }
    let digest = common::sha256_hex(repr.as_bytes());
    format!("journal_mode wal\nintegrity_check ok\ncount {rows}\nrows_sha256 {digest}\n")
}

#[test]
fn sqlite_wal_sync() {
    sqlite_wal(Mode::Sync);
}

#[test]
fn sqlite_wal_async() {
    sqlite_wal(Mode::Async);
}

fn sqlite_wal(mode: Mode) {
    if !common::can_mount() {
        return;
    }
    let dirs = TestDirs::new(1);
    let mount = Mount::new(&dirs, mode);
    let db = dirs.mnt.join("app.db");

    let out = common::python_ok(
        WRITE,
        &[
            path_str(&db),
            &TRANSACTIONS.to_string(),
            &ROWS_PER_TRANSACTION.to_string(),
        ],
    );
    let rows = TRANSACTIONS * ROWS_PER_TRANSACTION;
    assert_eq!(
        out,
        format!("journal_mode wal\nother_connection_count {rows}\n")
    );
    // Closing the last connection checkpoints the WAL and deletes -wal and -shm.
    assert_eq!(list_dir(&dirs.mnt), ["app.db"]);

    let expected = expected_check_output();
    let out = common::python_ok(CHECK, &[path_str(&db), "rw"]);
    assert_eq!(out, expected, "database read through the mount");
    assert_eq!(list_dir(&dirs.mnt), ["app.db"]);

    assert_mirrors_match(&mount);

    let copy = dirs.mirrors[0].join("app.db");
    let out = common::python_ok(CHECK, &[path_str(&copy), "ro"]);
    assert_eq!(out, expected, "mirror's copy of the database");
}
