//! SQLite: the durable record of every payment, its journal, refunds and the reversal queue.
//! The only module that touches rusqlite.
//!
//! # Durability
//! WAL with `synchronous=FULL`: a commit that returned is on disk and survives power loss.
//! Every state change is one `BEGIN IMMEDIATE` transaction that checks the expected current
//! state (compare-and-set) and appends its journal event (rules 1 and 5).
//!
//! # Concurrency
//! One connection per process behind a mutex, used from `spawn_blocking`; other processes
//! (a back-office command while the daemon runs) wait on the busy timeout.
//!
//! # Compatibility
//! Migrations live in `migrations/NN-name/up.sql` and are applied on open. A database whose
//! schema is newer than this binary knows is refused, never downgraded.

pub mod journal;
pub mod notifications;
pub mod payments;
pub mod print_journal;
pub mod queue;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use include_dir::{include_dir, Dir};
use rusqlite::Connection;
use rusqlite_migration::Migrations;

static MIGRATIONS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/migrations");

/// How long a writer waits for another process's transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the store could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory of the database {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this posd knows ({known}); \
         run the newer posd or restore a backup — posd never downgrades a database"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        known: usize,
    },
    #[error("database {path}: migration failed: {message}")]
    Migration { path: PathBuf, message: String },
}

/// A handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Jobs waiting for the writer connection (group commit, see [`Store::call`]).
    pending: Arc<Mutex<Vec<Box<dyn Job>>>>,
    /// A second connection for reads, so that a status query never waits behind a commit's
    /// fsync (WAL lets readers run beside the writer). In memory it is the same connection.
    reader: Arc<Mutex<Connection>>,
    path: PathBuf,
}

fn migrations() -> Migrations<'static> {
    Migrations::from_directory(&MIGRATIONS_DIR)
        .expect("migrations/ is well formed (checked by a test)")
}

/// Number of migrations this binary knows.
pub fn schema_version() -> usize {
    MIGRATIONS_DIR.dirs().count()
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let sq = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sq)?;
        configure(&mut conn, true).map_err(sq)?;
        migrate(&mut conn, path)?;
        let mut reader = Connection::open(path).map_err(sq)?;
        configure(&mut reader, true).map_err(sq)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            pending: Arc::default(),
            reader: Arc::new(Mutex::new(reader)),
            path: path.to_path_buf(),
        })
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let sq = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(sq)?;
        configure(&mut conn, false).map_err(sq)?;
        migrate(&mut conn, &path)?;
        let conn = Arc::new(Mutex::new(conn));
        Ok(Store {
            reader: conn.clone(),
            conn,
            pending: Arc::default(),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the writer connection, inside a transaction, and returns once that
    /// transaction is durably committed.
    ///
    /// Group commit: every call queues its job; whichever blocking task takes the connection
    /// runs all queued jobs in one `BEGIN IMMEDIATE … COMMIT`, each inside its own savepoint
    /// (a job that fails is rolled back alone), and only after the one `COMMIT` (one fsync)
    /// hands each caller its result. Concurrent sales share fsyncs; a lone call is not delayed.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(BatchJob { f, reply }));
        let conn = self.conn.clone();
        let pending = self.pending.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            let batch = std::mem::take(&mut *pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                run_batch(&mut guard, batch);
            }
        })
        .await?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database job was dropped before it finished"))?
    }

    /// Runs a read-only `f` on the read connection on a blocking thread.
    pub async fn read<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let conn = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await?
    }

    /// Runs `f` on the writer connection on this thread, in its own transaction (CLI
    /// commands, tests).
    pub fn call_blocking<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        guard.execute_batch("BEGIN IMMEDIATE")?;
        let out = f(&mut guard);
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        if let Err(e) = guard.execute_batch(end) {
            let _ = guard.execute_batch("ROLLBACK");
            return Err(e.into());
        }
        out
    }
}

/// A queued writer job: runs inside the batch's transaction and answers after the commit.
trait Job: Send {
    /// Runs the job inside its own savepoint; returns what to deliver after the commit.
    fn run(self: Box<Self>, conn: &mut Connection) -> Box<dyn Deliver>;
    /// The batch could not start: answer with the error.
    fn fail(self: Box<Self>, why: &str);
}

/// A job's result, held until the batch's commit.
trait Deliver: Send {
    /// Hands the result over, or the commit's error.
    fn deliver(self: Box<Self>, commit: Result<(), &str>);
}

struct BatchJob<F, R> {
    f: F,
    reply: tokio::sync::oneshot::Sender<anyhow::Result<R>>,
}

struct Held<R> {
    result: anyhow::Result<R>,
    reply: tokio::sync::oneshot::Sender<anyhow::Result<R>>,
}

impl<F, R> Job for BatchJob<F, R>
where
    F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Connection) -> Box<dyn Deliver> {
        let BatchJob { f, reply } = *self;
        let result = match conn.execute_batch("SAVEPOINT posd_job") {
            Err(e) => Err(e.into()),
            Ok(()) => {
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut *conn)))
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "a database job panicked; it was rolled back"
                        ))
                    });
                let end = if out.is_ok() {
                    "RELEASE posd_job"
                } else {
                    "ROLLBACK TO posd_job; RELEASE posd_job"
                };
                match conn.execute_batch(end) {
                    Ok(()) => out,
                    Err(e) => Err(e.into()),
                }
            }
        };
        Box::new(Held { result, reply })
    }

    fn fail(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(anyhow::anyhow!("{why}")));
    }
}

impl<R: Send + 'static> Deliver for Held<R> {
    fn deliver(self: Box<Self>, commit: Result<(), &str>) {
        let out = match commit {
            Ok(()) => self.result,
            Err(e) => Err(anyhow::anyhow!(
                "the transaction could not be committed: {e}"
            )),
        };
        let _ = self.reply.send(out);
    }
}

/// Runs queued jobs in one transaction and answers them after its commit.
fn run_batch(conn: &mut Connection, batch: Vec<Box<dyn Job>>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let why = format!("cannot begin a transaction: {e}");
        for job in batch {
            job.fail(&why);
        }
        return;
    }
    let held: Vec<Box<dyn Deliver>> = batch.into_iter().map(|job| job.run(conn)).collect();
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            for h in held {
                h.deliver(Ok(()));
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            let why = e.to_string();
            for h in held {
                h.deliver(Err(&why));
            }
        }
    }
}

fn configure(conn: &mut Connection, file: bool) -> rusqlite::Result<()> {
    if file {
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: usize = conn
        .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
        .map_err(|source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        })? as usize;
    let known = schema_version();
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    migrations()
        .to_latest(conn)
        .map_err(|e| StoreError::Migration {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The current time in Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
        assert!(schema_version() >= 1);
    }

    #[test]
    fn opens_with_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("sub/posd.sqlite3")).unwrap();
        store
            .call_blocking(|c| {
                let mode: String = c.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
                let sync: i64 = c.pragma_query_value(None, "synchronous", |r| r.get(0))?;
                let fk: i64 = c.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
                assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posd.sqlite3");
        drop(Store::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 999).unwrap();
        drop(c);
        let err = Store::open(&path)
            .err()
            .expect("newer schema refused")
            .to_string();
        assert!(err.contains("newer than this posd knows"), "{err}");
        // Reopening again still refuses: nothing was changed.
        assert!(Store::open(&path).is_err());
    }
}
