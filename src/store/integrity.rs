//! The database file's safety: the health probe's write, `PRAGMA quick_check`, the guard that
//! refuses an empty store where the state directory shows prior use, the online backup, and
//! the WAL checkpoint on clean shutdown.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Store, StoreError};

/// The file beside the database that says a store was initialised in this state directory.
pub const MARKER_FILE: &str = "posd.store";

/// `<db><suffix>`: the `-wal` / `-shm` file of a database.
pub fn sidecar(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes and commits the health probe's row through the writer (group commit, real fsync):
/// fails when the database cannot be written (read-only, full disk, corrupt pages, a lock
/// held past the busy timeout).
/// `now_ms` is the caller's clock (epoch ms).
pub async fn probe_write(store: &Store, now_ms: i64) -> anyhow::Result<()> {
    store
        .call(move |c| {
            c.execute(
                "INSERT INTO health_probe (id, at) VALUES (1, ?1) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [now_ms],
            )?;
            Ok(())
        })
        .await
}

/// `PRAGMA quick_check` on its own read-only connection (so it never holds the store's
/// connections): `Ok` when SQLite answers `ok`, else the first problems it lists.
pub fn quick_check(path: &Path) -> Result<(), String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(super::BUSY_TIMEOUT)
        .map_err(|e| e.to_string())?;
    quick_check_on(&conn)
}

/// `PRAGMA quick_check` on `conn`.
pub fn quick_check_on(conn: &Connection) -> Result<(), String> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| e.to_string())?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(rows.join("; "))
    }
}

impl Store {
    /// Runs [`quick_check`] on this store's file on a blocking thread (in memory: on the
    /// reader connection).
    pub async fn quick_check(&self) -> Result<(), String> {
        if self.in_memory() {
            let reader = self.reader.clone();
            return tokio::task::spawn_blocking(move || {
                quick_check_on(&reader.lock().unwrap_or_else(|p| p.into_inner()))
            })
            .await
            .map_err(|e| e.to_string())?;
        }
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || quick_check(&path))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Folds the WAL back into the database file and truncates it (clean shutdown): the file
    /// alone then holds every commit.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        if self.in_memory() {
            return Ok(());
        }
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let (busy, _log, _done): (i64, i64, i64) =
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        anyhow::ensure!(
            busy == 0,
            "another connection kept the WAL busy; the next start folds it in"
        );
        Ok(())
    }
}

/// Why a database looks empty, and what says it should not be.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// No schema: the file is missing, 0 bytes, or has no migrations applied.
    pub empty: bool,
    /// Signs this state directory was used before (for the refusal's message).
    pub evidence: Vec<String>,
}

/// Looks at the database and its state directory before opening it for the daemon.
///
/// Prior use is shown by: the marker file, a database file that exists (even 0 bytes), a
/// `-wal` or `-shm` left beside it, or slips in the printer's file directory. Key files are
/// not evidence (an installer provisions them before the first start), nor is the sandbox's
/// database (`posd sandbox` may run before the first `posd run`).
pub fn inspect(db: &Path, state_dir: &Path, slip_dir: Option<&Path>) -> Inspection {
    let mut evidence = Vec::new();
    let marker = state_dir.join(MARKER_FILE);
    if marker.exists() {
        evidence.push(format!("the marker {}", marker.display()));
    }
    let meta = std::fs::metadata(db).ok();
    if let Some(m) = &meta {
        if m.len() == 0 {
            evidence.push(format!("the 0-byte file {}", db.display()));
        } else {
            evidence.push(format!("the file {}", db.display()));
        }
    }
    for suffix in ["-wal", "-shm"] {
        let p = sidecar(db, suffix);
        if p.exists() {
            evidence.push(format!("the leftover {}", p.display()));
        }
    }
    if let Some(dir) = slip_dir {
        let slips = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
                    .count()
            })
            .unwrap_or(0);
        if slips > 0 {
            evidence.push(format!("{slips} slip(s) in {}", dir.display()));
        }
    }
    let empty = match &meta {
        None => true,
        Some(m) if m.len() == 0 => true,
        Some(_) => schema_of(db).is_none_or(|v| v == 0),
    };
    Inspection { empty, evidence }
}

/// The schema version of an existing database file, or `None` when it cannot be read. Read
/// only: closing a read-write connection would checkpoint or delete the `-wal` it looked at.
fn schema_of(db: &Path) -> Option<i64> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.busy_timeout(super::BUSY_TIMEOUT).ok()?;
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .ok()
}

/// Refuses a database file posd's user cannot open for writing (a read-only filesystem, or
/// the file's mode): SQLite would open it read-only, and stay so after the cause is fixed.
fn writable(db: &Path) -> Result<(), StoreError> {
    use std::io::ErrorKind;
    match std::fs::OpenOptions::new().write(true).open(db) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied
            ) =>
        {
            Err(StoreError::ReadOnly {
                path: db.to_path_buf(),
            })
        }
        Err(source) => Err(StoreError::Dir {
            path: db.to_path_buf(),
            source,
        }),
    }
}

/// Opens the daemon's store: refuses an empty database where the state directory shows prior
/// use (unless `init_store`, which first moves the old files aside), refuses a database it
/// could open only read-only, runs `quick_check`, and writes the marker. `now_ms` (the caller's clock, epoch ms) names the files moved aside
/// and dates the marker.
pub fn open_for_daemon(
    db: &Path,
    state_dir: &Path,
    slip_dir: Option<&Path>,
    init_store: bool,
    now_ms: i64,
) -> Result<Store, StoreError> {
    writable(db)?;
    let found = inspect(db, state_dir, slip_dir);
    if found.empty && !found.evidence.is_empty() {
        if !init_store {
            return Err(StoreError::EmptyButUsed {
                path: db.to_path_buf(),
                evidence: found.evidence.join(", "),
            });
        }
        let stamp = now_ms;
        for suffix in ["", "-wal", "-shm"] {
            let p = sidecar(db, suffix);
            if p.exists() {
                let aside = sidecar(db, &format!(".{stamp}.replaced{suffix}"));
                std::fs::rename(&p, &aside).map_err(|source| StoreError::Dir {
                    path: p.clone(),
                    source,
                })?;
                tracing::warn!(from = %p.display(), to = %aside.display(), "--init-store: moved the old database file aside");
            }
        }
        tracing::warn!(path = %db.display(), evidence = %found.evidence.join(", "), "--init-store: starting a new, empty store");
    }
    let store = Store::open(db)?;
    if store.read_only() {
        return Err(StoreError::ReadOnly {
            path: db.to_path_buf(),
        });
    }
    quick_check(db).map_err(|detail| StoreError::Corrupt {
        path: db.to_path_buf(),
        detail,
    })?;
    let marker = state_dir.join(MARKER_FILE);
    if !marker.exists() || (found.empty && init_store) {
        let text = format!(
            "posd store {} initialised at {}; do not delete: with it, posd refuses to start on an empty database\n",
            db.display(),
            chrono::DateTime::from_timestamp_millis(now_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        std::fs::write(&marker, text).map_err(|source| StoreError::Dir {
            path: marker.clone(),
            source,
        })?;
    }
    Ok(store)
}

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0} exists; choose a new file name (a backup never overwrites)")]
    Exists(PathBuf),
    #[error("the database {0} does not exist or has no schema; nothing to back up")]
    NoDatabase(PathBuf),
    #[error("cannot write the backup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup of {path} failed: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("the backup {path} failed its check ({detail}); it was removed")]
    Check { path: PathBuf, detail: String },
}

/// Copies the database `db` to `out` with SQLite's online backup (safe while the daemon runs:
/// the copy is one consistent snapshot), 0600, fsynced, then checked with `quick_check`.
/// Written to a temporary name and renamed, so `out` is complete or absent.
pub fn backup(db: &Path, out: &Path) -> Result<BackupReport, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    if out.exists() {
        return Err(BackupError::Exists(out.to_path_buf()));
    }
    if !db.exists() || schema_of(db).is_none_or(|v| v == 0) {
        return Err(BackupError::NoDatabase(db.to_path_buf()));
    }
    let sq = |source| BackupError::Sqlite {
        path: db.to_path_buf(),
        source,
    };
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(sq)?;
    src.busy_timeout(super::BUSY_TIMEOUT).map_err(sq)?;
    let tmp = sidecar(out, ".partial");
    let _ = std::fs::remove_file(&tmp);
    let io = |source| BackupError::Io {
        path: out.to_path_buf(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(super::DB_FILE_MODE))
        .map_err(io)?;
    let copied = (|| {
        let mut dst = Connection::open(&tmp)?;
        {
            let b = rusqlite::backup::Backup::new(&src, &mut dst)?;
            // All pages in one step: one read transaction, one consistent snapshot.
            loop {
                match b.step(-1)? {
                    rusqlite::backup::StepResult::Done => break,
                    _ => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        dst.pragma_update(None, "journal_mode", "DELETE")?;
        let pages: i64 = dst.pragma_query_value(None, "page_count", |r| r.get(0))?;
        let version: i64 = dst.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let payments: i64 = dst.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))?;
        Ok::<_, rusqlite::Error>((pages, version, payments, dst))
    })();
    let (pages, version, payments, dst) = match copied {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(sq(e));
        }
    };
    if let Err(detail) = quick_check_on(&dst) {
        drop(dst);
        let _ = std::fs::remove_file(&tmp);
        return Err(BackupError::Check {
            path: out.to_path_buf(),
            detail,
        });
    }
    drop(dst);
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, out).map_err(io)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|f| f.sync_all());
    }
    Ok(BackupReport {
        pages,
        schema_version: version,
        payments,
    })
}

/// What a backup copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    /// Database pages.
    pub pages: i64,
    /// The copy's schema version.
    pub schema_version: i64,
    /// Payments in the copy.
    pub payments: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The tests' clock: a fixed instant, epoch ms.
    const NOW: i64 = 1_764_000_000_000;

    fn used_store(dir: &Path) -> PathBuf {
        let db = dir.join("posd.sqlite3");
        let store = open_for_daemon(&db, dir, None, false, NOW).unwrap();
        store
            .call_blocking(|c| {
                c.execute_batch(
                    "INSERT INTO payments (payment_request_id, amount_minor, currency, state, \
                     terminal_time, created_at, updated_at) \
                     VALUES ('P1', 100, 'CNY', 'SUCCEEDED', 't', 1, 1)",
                )?;
                Ok(())
            })
            .unwrap();
        store.checkpoint().unwrap();
        db
    }

    #[test]
    fn a_fresh_directory_initialises_and_writes_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("posd.sqlite3");
        let found = inspect(&db, dir.path(), None);
        assert!(found.empty && found.evidence.is_empty(), "{found:?}");
        drop(open_for_daemon(&db, dir.path(), None, false, NOW).unwrap());
        assert!(dir.path().join(MARKER_FILE).exists());
        // Reopening a store with its schema is fine.
        drop(open_for_daemon(&db, dir.path(), None, false, NOW).unwrap());
    }

    #[test]
    fn a_zero_byte_database_is_refused_then_initialised_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = used_store(dir.path());
        std::fs::write(&db, b"").unwrap();
        let e = open_for_daemon(&db, dir.path(), None, false, NOW)
            .err()
            .expect("an empty store where the marker says it was used is refused")
            .to_string();
        assert!(
            e.contains("is empty") && e.contains("--init-store") && e.contains("posd.store"),
            "{e}"
        );
        // Refusing changed nothing: the file is still 0 bytes.
        assert_eq!(std::fs::metadata(&db).unwrap().len(), 0);
        let store = open_for_daemon(&db, dir.path(), None, true, NOW).unwrap();
        let n: i64 = store
            .call_blocking(|c| Ok(c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 0);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains(".replaced"));
        assert!(aside, "the old file was moved aside, not deleted");
    }

    #[test]
    fn a_garbage_wal_over_a_never_checkpointed_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("posd.sqlite3");
        // The marker from an earlier run; the database was created but its content only ever
        // reached the WAL, which is now garbage.
        std::fs::write(dir.path().join(MARKER_FILE), "x").unwrap();
        {
            let c = Connection::open(&db).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        std::fs::write(sidecar(&db, "-wal"), vec![0xA5u8; 8192]).unwrap();
        let found = inspect(&db, dir.path(), None);
        assert!(found.empty, "{found:?}");
        let e = open_for_daemon(&db, dir.path(), None, false, NOW)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("-wal") && e.contains("--init-store"), "{e}");
        // Looking and refusing changed nothing: the garbage WAL is still there to examine.
        assert_eq!(
            std::fs::read(sidecar(&db, "-wal")).unwrap(),
            vec![0xA5u8; 8192]
        );
    }

    #[test]
    fn a_database_file_with_no_marker_counts_as_used() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("posd.sqlite3");
        std::fs::write(&db, b"").unwrap();
        assert!(open_for_daemon(&db, dir.path(), None, false, NOW).is_err());
        let slips = dir.path().join("receipts");
        std::fs::create_dir(&slips).unwrap();
        std::fs::write(slips.join("1.bin"), b"x").unwrap();
        std::fs::remove_file(&db).unwrap();
        let e = open_for_daemon(&db, dir.path(), Some(&slips), false, NOW)
            .err()
            .expect("slips are evidence")
            .to_string();
        assert!(e.contains("slip"), "{e}");
    }

    #[test]
    fn a_corrupted_page_fails_quick_check_and_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = used_store(dir.path());
        assert_eq!(quick_check(&db), Ok(()));
        corrupt(&db);
        assert!(quick_check(&db).is_err());
        let e = open_for_daemon(&db, dir.path(), None, false, NOW)
            .err()
            .expect("a corrupt database is refused")
            .to_string();
        assert!(e.contains("restore") || e.contains("malformed"), "{e}");
    }

    /// A directory that can be made read-only for this process: a tmpfs remounted read-only
    /// when this process may mount one (root ignores file modes), else file modes.
    struct ReadOnlyDir {
        dir: tempfile::TempDir,
        mounted: bool,
    }

    impl ReadOnlyDir {
        fn new() -> ReadOnlyDir {
            let dir = tempfile::tempdir().unwrap();
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ReadOnlyDir { dir, mounted }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        /// Read-only from now on (or writable again).
        fn set_read_only(&self, ro: bool) {
            use std::os::unix::fs::PermissionsExt;
            if self.mounted {
                let ok = std::process::Command::new("mount")
                    .args(["-o", if ro { "remount,ro" } else { "remount,rw" }])
                    .arg(self.path())
                    .status()
                    .unwrap();
                assert!(ok.success(), "remount");
                return;
            }
            let (file, dir) = if ro { (0o400, 0o500) } else { (0o600, 0o700) };
            std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            for e in std::fs::read_dir(self.path()).unwrap() {
                let p = e.unwrap().path();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(file)).unwrap();
            }
            std::fs::set_permissions(self.path(), std::fs::Permissions::from_mode(dir)).unwrap();
        }
    }

    impl Drop for ReadOnlyDir {
        fn drop(&mut self) {
            if self.mounted {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(self.path())
                    .status();
            } else {
                self.set_read_only(false);
            }
        }
    }

    /// Every file in `dir` with its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn a_database_that_can_only_be_read_is_refused_and_left_as_it_was() {
        // After a clean stop (no -wal), and after a crash: the WAL and its index left behind,
        // holding a commit the database file does not.
        for crashed in [false, true] {
            let ro = ReadOnlyDir::new();
            let db = used_store(ro.path());
            let open = crashed.then(|| {
                let c = Connection::open(&db).unwrap();
                c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
                c.execute("UPDATE payments SET state = 'REFUNDED'", [])
                    .unwrap();
                c
            });
            if let Some(c) = open {
                // What a SIGKILL leaves: the files as they are while the connection is open.
                for suffix in ["", "-wal", "-shm"] {
                    std::fs::copy(
                        sidecar(&db, suffix),
                        sidecar(&db, &format!("{suffix}.kept")),
                    )
                    .unwrap();
                }
                drop(c);
                for suffix in ["", "-wal", "-shm"] {
                    std::fs::rename(
                        sidecar(&db, &format!("{suffix}.kept")),
                        sidecar(&db, suffix),
                    )
                    .unwrap();
                }
                assert!(std::fs::metadata(sidecar(&db, "-wal")).unwrap().len() > 0);
            }
            ro.set_read_only(true);
            let before = snapshot(ro.path());
            let e = open_for_daemon(&db, ro.path(), None, false, NOW)
                .err()
                .expect("a database posd cannot write is refused")
                .to_string();
            assert!(
                e.contains("read-only") && e.contains("nothing was changed"),
                "crashed {crashed}, tmpfs {}: {e}",
                ro.mounted
            );
            assert_eq!(
                snapshot(ro.path()),
                before,
                "crashed {crashed}: refusing changed a file"
            );
            // Writable again: the same files open, with the commit the WAL held.
            ro.set_read_only(false);
            let store = open_for_daemon(&db, ro.path(), None, false, NOW).unwrap();
            let state: String = store
                .call_blocking(|c| Ok(c.query_row("SELECT state FROM payments", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(state, if crashed { "REFUNDED" } else { "SUCCEEDED" });
        }
    }

    /// Another process's write transaction on `db`, held until dropped.
    pub(crate) struct WriteLock(Connection);

    impl WriteLock {
        pub(crate) fn take(db: &Path) -> WriteLock {
            let c = Connection::open(db).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            WriteLock(c)
        }
    }

    impl Drop for WriteLock {
        fn drop(&mut self) {
            let _ = self.0.execute_batch("ROLLBACK");
        }
    }

    /// Overwrites every page but the first with garbage.
    pub(crate) fn corrupt(db: &Path) {
        let mut bytes = std::fs::read(db).unwrap();
        let page = 4096.min(bytes.len() / 2);
        for b in bytes.iter_mut().skip(page) {
            *b = 0x5A;
        }
        std::fs::write(db, bytes).unwrap();
    }

    #[test]
    fn backup_copies_a_consistent_private_checked_file_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = used_store(dir.path());
        let out = dir.path().join("copy.sqlite3");
        let r = backup(&db, &out).unwrap();
        assert_eq!(r.payments, 1);
        assert_eq!(r.schema_version as usize, super::super::schema_version());
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(quick_check(&out), Ok(()));
        assert!(matches!(backup(&db, &out), Err(BackupError::Exists(_))));
        assert!(matches!(
            backup(&dir.path().join("nope.sqlite3"), &dir.path().join("x")),
            Err(BackupError::NoDatabase(_))
        ));
        // Restoring is copying it back: the daemon's guard accepts it (it has a schema).
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&out, restored.path().join("posd.sqlite3")).unwrap();
        std::fs::write(restored.path().join(MARKER_FILE), "x").unwrap();
        let s = open_for_daemon(
            &restored.path().join("posd.sqlite3"),
            restored.path(),
            None,
            false,
            NOW,
        )
        .unwrap();
        let n: i64 = s
            .call_blocking(|c| Ok(c.query_row("SELECT count(*) FROM payments", [], |r| r.get(0))?))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn checkpoint_truncates_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("posd.sqlite3");
        let store = Store::open(&db).unwrap();
        store
            .call_blocking(|c| {
                c.execute_batch("INSERT INTO health_probe (id, at) VALUES (1, 1)")?;
                Ok(())
            })
            .unwrap();
        assert!(std::fs::metadata(sidecar(&db, "-wal")).unwrap().len() > 0);
        store.checkpoint().unwrap();
        assert_eq!(std::fs::metadata(sidecar(&db, "-wal")).unwrap().len(), 0);
    }
}
