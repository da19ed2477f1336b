//! SQLite: the durable record of every payment, its journal, refunds and the reversal queue.
//! The only module that touches rusqlite.
//!
//! # Durability
//! WAL with `synchronous=FULL`: a commit that returned is on disk and survives power loss.
//! Every state change is one `BEGIN IMMEDIATE` transaction that checks the expected current
//! state (compare-and-set) and appends its journal event (rules 1 and 5).
//!
//! # Concurrency
//! A writer connection (group commit, see [`Store::call`]) and a reader connection per
//! process (reads batched the same way, each batch one snapshot, see [`Store::read`]), each
//! behind a mutex and used from `spawn_blocking`; other processes (a back-office command while
//! the daemon runs) wait on the busy timeout.
//!
//! # Time
//! The store reads no clock: every time it writes (epoch ms) comes from its caller, who takes
//! it from `engine::clock`.
//!
//! # Files
//! Directories posd creates are 0750 (keys 0700) and the database file is 0600, whatever the
//! umask (SQLite gives `-wal` and `-shm` the database file's mode). Integrity checks, the
//! empty-store guard, the online backup and the shutdown checkpoint are in [`integrity`].
//!
//! # Compatibility
//! Migrations live in `migrations/NN-name/up.sql` and are applied on open, in name order. A
//! database whose schema is newer than this binary knows is refused, never downgraded.

pub mod idempotency;
pub mod integrity;
pub mod journal;
pub mod notifications;
pub mod payments;
pub mod print_journal;
pub mod queue;
pub mod refunds;
pub mod transition;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use include_dir::{include_dir, Dir};
use rusqlite::Connection;
use rusqlite_migration::{Migrations, M};

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
    #[error(
        "database {path} is empty, but {evidence} show this terminal was used before: starting \
         afresh would lose its history and any reversal still owed. Restore the database from a \
         backup (README, \"Backup and restore\"), or start once with `posd run --init-store` to \
         begin a new, empty store on purpose"
    )]
    EmptyButUsed { path: PathBuf, evidence: String },
    #[error(
        "database {path} failed its integrity check ({detail}); stop using it: restore it from \
         a backup (README, \"Backup and restore\")"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "database {path} can only be opened read-only (a read-only filesystem, or the file or \
         its directory not writable by posd's user): posd records every payment before it acts, \
         so it takes no sale on it. Make it writable (remount the filesystem read-write, or fix \
         the owner and mode) and start posd again; nothing was changed"
    )]
    ReadOnly { path: PathBuf },
}

/// A handle to the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    /// Jobs waiting for the writer connection, and whether a batch runner is at work
    /// (group commit, see [`Store::call`]).
    pending: Arc<Mutex<Pending>>,
    /// Transactions committed through this handle (each one fsync): with the jobs committed,
    /// how much group commit shares (metrics, benchmarks).
    commits: Arc<Commits>,
    /// A second connection for reads, so that a status query never waits behind a commit's
    /// fsync (WAL lets readers run beside the writer). In memory it is the same connection.
    reader: Arc<Mutex<Connection>>,
    /// Reads waiting for the reader connection, and whether a read runner is at work (see
    /// [`Store::read`]).
    reads: Arc<Mutex<Queue<dyn ReadJob>>>,
    path: PathBuf,
}

/// Mode of the directories posd creates (the state directory and its parents).
pub const DIR_MODE: u32 = 0o750;
/// Mode of the directories that hold keys.
pub const KEY_DIR_MODE: u32 = 0o700;
/// Mode of the database file (and so of its `-wal` and `-shm`).
pub const DB_FILE_MODE: u32 = 0o600;

/// The migrations in name order (`NN-name/up.sql`). Numbers are reserved per area and may
/// land out of order, so they are not required to be consecutive; the schema version is the
/// count applied. Checked by `migrations_are_valid`.
fn migrations() -> Migrations<'static> {
    let mut dirs: Vec<&'static Dir<'static>> = MIGRATIONS_DIR.dirs().collect();
    dirs.sort_by_key(|d| d.path());
    Migrations::new(
        dirs.into_iter()
            .map(|d| {
                let sql = d
                    .get_file(d.path().join("up.sql"))
                    .and_then(|f| f.contents_utf8())
                    .expect("every migration has a UTF-8 up.sql (checked by a test)");
                M::up(sql)
            })
            .collect(),
    )
}

/// Creates `dir` and its missing parents with `mode`, whatever the umask; directories that
/// exist already are left as they are.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d);
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the database file 0600 if it is missing, and takes group and other access away
/// from it and its `-wal`/`-shm` if an older posd or a wide umask left them readable.
fn private_db_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(DB_FILE_MODE)
            .open(path)?;
    }
    for p in [
        path.to_path_buf(),
        integrity::sidecar(path, "-wal"),
        integrity::sidecar(path, "-shm"),
    ] {
        if let Ok(meta) = std::fs::metadata(&p) {
            if meta.permissions().mode() & 0o777 != DB_FILE_MODE {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(DB_FILE_MODE))?;
            }
        }
    }
    Ok(())
}

/// Number of migrations this binary knows.
pub fn schema_version() -> usize {
    MIGRATIONS_DIR.dirs().count()
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies the migrations.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir_with_mode(dir, DIR_MODE).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        private_db_file(path).map_err(|source| StoreError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
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
            commits: Arc::default(),
            reader: Arc::new(Mutex::new(reader)),
            reads: Arc::default(),
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
            commits: Arc::default(),
            reads: Arc::default(),
            path,
        })
    }

    /// Whether SQLite opened the writer connection read-only (a read-only filesystem or file
    /// mode). Such a connection stays read-only after the cause is fixed, so a daemon on it
    /// could never record a payment.
    pub fn read_only(&self) -> bool {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(true)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this store lives in memory (tests): no file to check, back up or checkpoint.
    pub fn in_memory(&self) -> bool {
        self.path == Path::new(":memory:")
    }

    /// Runs `f` on the writer connection, inside a transaction, and returns once that
    /// transaction is durably committed.
    ///
    /// Group commit: every call queues its job. When no batch runner is at work, the call
    /// starts one on a blocking thread; it runs all queued jobs in one `BEGIN IMMEDIATE …
    /// COMMIT`, each inside its own savepoint (a job that fails is rolled back alone), hands
    /// each caller its result only after that one `COMMIT` (one fsync), and goes on with the
    /// jobs queued meanwhile until none are left. So while one fsync is on its way to disk the
    /// next batch gathers, one thread does all the writing, and a lone call is not delayed.
    pub async fn call<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        submit(&self.pending, Box::new(Work { f, reply }), || {
            let commits = self.commits.clone();
            Runner {
                conn: self.conn.clone(),
                queue: self.pending.clone(),
                batch: move |c: &mut Connection, jobs| run_batch(c, jobs, &commits),
                stopped: WRITER_STOPPED,
                done: false,
            }
        });
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database job was dropped before it finished"))?
    }

    /// Runs a read-only `f` on the reader connection, and sees every commit that returned
    /// before the call.
    ///
    /// Reads queue like the writer's jobs: when no read runner is at work, the call starts one
    /// on a blocking thread; it takes every queued read and runs them in one read transaction,
    /// answering each as soon as it has run, and goes on with the reads queued meanwhile until
    /// none are left. So a read sees one snapshot from its first statement to its last (a
    /// payment and its journal agree), a burst of reads (the long-polls of many sales) takes
    /// one thread and one snapshot's locks instead of a thread each waiting on the
    /// connection, and a read that fails or panics is answered alone.
    pub async fn read<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<R> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        submit(&self.reads, Box::new(Work { f, reply }), || Runner {
            conn: self.reader.clone(),
            queue: self.reads.clone(),
            batch: |c: &mut Connection, jobs| read_batch(c, jobs),
            stopped: READER_STOPPED,
            done: false,
        });
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the database read was dropped before it finished"))?
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
        if out.is_ok() {
            self.commits.add(1);
        }
        out
    }

    /// Jobs queued for the next batch (tests).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .jobs
            .len()
    }

    /// Transactions committed through this handle and the jobs they carried, since it opened.
    pub fn commit_counts(&self) -> CommitCounts {
        CommitCounts {
            transactions: self.commits.transactions.load(Ordering::Relaxed),
            jobs: self.commits.jobs.load(Ordering::Relaxed),
        }
    }
}

/// What [`Store::commit_counts`] reports: `jobs / transactions` is how many callers one fsync
/// served on average.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Committed transactions (one fsync each).
    pub transactions: u64,
    /// Jobs those transactions carried.
    pub jobs: u64,
}

#[derive(Default)]
struct Commits {
    transactions: AtomicU64,
    jobs: AtomicU64,
}

impl Commits {
    fn add(&self, jobs: u64) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs, Ordering::Relaxed);
    }
}

/// The writer's queue (group commit, see [`Store::call`]).
type Pending = Queue<dyn Job>;

/// Jobs waiting for a connection, taken in batches by one runner at a time.
struct Queue<J: ?Sized> {
    /// Jobs for the next batch.
    jobs: Vec<Box<J>>,
    /// A runner is at work and will take `jobs`: a new call only queues.
    running: bool,
}

impl<J: ?Sized> Default for Queue<J> {
    fn default() -> Self {
        Queue {
            jobs: Vec::new(),
            running: false,
        }
    }
}

/// What a queue asks of its jobs: how to answer one that will never run.
trait Queued: Send {
    /// The job will not run (its batch could not start, or its runner stopped): answer with
    /// `why`.
    fn fail(self: Box<Self>, why: &str);
}

/// Queues `job`; when no runner is at work, takes the turn and starts the runner `runner`
/// makes on a blocking thread. The runner answers every job itself; its handle is not
/// awaited, so that a caller hears of its own job without waiting for later batches.
fn submit<J, B>(queue: &Mutex<Queue<J>>, job: Box<J>, runner: impl FnOnce() -> Runner<J, B>)
where
    J: ?Sized + Queued + 'static,
    B: FnMut(&mut Connection, Vec<Box<J>>) + Send + 'static,
{
    let start = {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.jobs.push(job);
        !std::mem::replace(&mut queue.running, true)
    };
    if start {
        let mut runner = runner();
        drop(tokio::task::spawn_blocking(move || runner.run()));
    }
}

/// The one runner of a queue: takes every queued job, runs them as one batch on its
/// connection, and repeats until the queue is empty.
struct Runner<J: ?Sized + Queued, B> {
    conn: Arc<Mutex<Connection>>,
    queue: Arc<Mutex<Queue<J>>>,
    /// Runs one batch (the writer's transaction, or the reader's snapshot).
    batch: B,
    /// What the jobs left queued are told if the runner stops early.
    stopped: &'static str,
    /// Set when the runner left the queue empty and gave up its turn.
    done: bool,
}

/// What a job queued for the writer is told when its runner stopped before running it.
const WRITER_STOPPED: &str =
    "the database writer stopped before this write ran; nothing was written, try again";
/// The same for a read.
const READER_STOPPED: &str = "the database reader stopped before this read ran; try again";

impl<J: ?Sized + Queued, B: FnMut(&mut Connection, Vec<Box<J>>)> Runner<J, B> {
    fn run(&mut self) {
        loop {
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.jobs.is_empty() {
                    queue.running = false;
                    self.done = true;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            (self.batch)(&mut conn, batch);
        }
    }
}

/// A runner dropped before it finished (it unwound, or its blocking task never ran because
/// the runtime was shutting down) gives up its turn, so the next call starts another, and
/// answers what is queued with an error, so that no caller waits for ever.
impl<J: ?Sized + Queued, B> Drop for Runner<J, B> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.running = false;
        for job in std::mem::take(&mut queue.jobs) {
            job.fail(self.stopped);
        }
    }
}

/// A queued writer job: runs inside the batch's transaction and answers after the commit.
trait Job: Queued {
    /// Runs the job inside its own savepoint; returns what to deliver after the commit.
    fn run(self: Box<Self>, conn: &mut Connection) -> Box<dyn Deliver>;
}

/// A job's result, held until the batch's commit.
trait Deliver: Send {
    /// Hands the result over, or the commit's error.
    fn deliver(self: Box<Self>, commit: Result<(), &str>);
}

/// A caller's closure and where its answer goes: a [`Job`] when it takes the writer, a
/// [`ReadJob`] when it takes the reader.
struct Work<F, R> {
    f: F,
    reply: tokio::sync::oneshot::Sender<anyhow::Result<R>>,
}

impl<F: Send, R: Send> Queued for Work<F, R> {
    fn fail(self: Box<Self>, why: &str) {
        let _ = self.reply.send(Err(anyhow::anyhow!("{why}")));
    }
}

struct Held<R> {
    result: anyhow::Result<R>,
    reply: tokio::sync::oneshot::Sender<anyhow::Result<R>>,
}

impl<F, R> Job for Work<F, R>
where
    F: FnOnce(&mut Connection) -> anyhow::Result<R> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &mut Connection) -> Box<dyn Deliver> {
        let Work { f, reply } = *self;
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

/// A queued read: runs on the reader connection and answers at once.
trait ReadJob: Queued {
    fn run(self: Box<Self>, conn: &Connection);
}

impl<F, R> ReadJob for Work<F, R>
where
    F: FnOnce(&Connection) -> anyhow::Result<R> + Send,
    R: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) {
        let Work { f, reply } = *self;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a database read panicked")));
        let _ = reply.send(out);
    }
}

/// Runs `batch` in one read transaction: one snapshot for all of it, taken after every read
/// in it was queued.
fn read_batch(conn: &Connection, batch: Vec<Box<dyn ReadJob>>) {
    if let Err(e) = conn.execute_batch("BEGIN") {
        let why = format!("cannot begin a read: {e}");
        for job in batch {
            job.fail(&why);
        }
        return;
    }
    for job in batch {
        job.run(conn);
    }
    // Nothing was written: ending the transaction only lets the snapshot go.
    if conn.execute_batch("COMMIT").is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// Runs `batch` in one transaction and answers its jobs after the commit, counted in
/// `commits` when it commits.
fn run_batch(conn: &mut Connection, batch: Vec<Box<dyn Job>>, commits: &Commits) {
    let jobs = batch.len() as u64;
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
            commits.add(jobs);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
        assert!(schema_version() >= 1);
        let mut numbers: Vec<&str> = MIGRATIONS_DIR
            .dirs()
            .map(|d| {
                let name = d.path().to_str().expect("UTF-8 migration name");
                let (nn, rest) = name.split_at(2);
                assert!(
                    nn.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with('-'),
                    "migration {name} must be named NN-name"
                );
                assert!(
                    d.get_file(d.path().join("up.sql")).is_some(),
                    "{name}/up.sql"
                );
                nn
            })
            .collect();
        let count = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), count, "two migrations share a number");
    }

    #[test]
    fn files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a/b/posd.sqlite3");
        // A permissive umask, as a shell or a unit without UMask= may leave it.
        let old = umask(0o000);
        let opened = Store::open(&db);
        umask(old);
        let store = opened.unwrap();
        store
            .call_blocking(|c| {
                c.execute_batch("INSERT INTO health_probe (id, at) VALUES (1, 1)")?;
                Ok(())
            })
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        assert_eq!(mode(&dir.path().join("a/b")), DIR_MODE);
        assert_eq!(mode(&db), DB_FILE_MODE);
        assert_eq!(mode(&integrity::sidecar(&db, "-wal")), DB_FILE_MODE);
        // An existing readable file is tightened on open.
        drop(store);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&db).unwrap());
        assert_eq!(mode(&db), DB_FILE_MODE);
    }

    /// Sets the process umask and returns the old one (process-wide: only this test sets it).
    fn umask(mask: u32) -> u32 {
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)).as_raw_mode()
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

    /// Starts a call running `sql` that holds the writer, inside its batch, until the sender
    /// is used; returns once it holds it.
    async fn hold_the_writer(
        store: &Store,
        sql: &'static str,
    ) -> (
        tokio::task::JoinHandle<anyhow::Result<usize>>,
        std::sync::mpsc::Sender<()>,
    ) {
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let call = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(move |c| {
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok(c.execute(sql, [])?)
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        (call, release_tx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_queued_behind_a_commit_share_the_next_one_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.sqlite3")).unwrap();
        store
            .call_blocking(|c| Ok(c.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")?))
            .unwrap();
        let before = store.commit_counts();
        let (first, release) = hold_the_writer(&store, "INSERT INTO t VALUES (0)").await;
        let mut good = Vec::new();
        for v in 1..=8i64 {
            let store = store.clone();
            good.push(tokio::spawn(async move {
                store
                    .call(move |c| Ok(c.execute("INSERT INTO t VALUES (?1)", [v])?))
                    .await?;
                // Answered only after the commit: the other connection sees the row.
                store
                    .read(move |c| {
                        Ok(
                            c.query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| {
                                r.get::<_, i64>(0)
                            })?,
                        )
                    })
                    .await
            }));
        }
        let failing = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|c| -> anyhow::Result<()> {
                        c.execute("INSERT INTO t VALUES (100)", [])?;
                        anyhow::bail!("refused by the job")
                    })
                    .await
            }
        });
        let panicking = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|c| -> anyhow::Result<()> {
                        c.execute("INSERT INTO t VALUES (200)", [])?;
                        panic!("a job that panics")
                    })
                    .await
            }
        });
        while store.queued() < 10 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1);
        for g in good {
            assert_eq!(
                g.await.unwrap().unwrap(),
                1,
                "the row is committed when the call returns"
            );
        }
        let err = failing.await.unwrap().unwrap_err().to_string();
        assert_eq!(err, "refused by the job");
        let err = panicking.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("panicked; it was rolled back"), "{err}");
        let after = store.commit_counts();
        assert_eq!(
            (
                after.transactions - before.transactions,
                after.jobs - before.jobs
            ),
            (2, 11),
            "the held job alone, then the ten queued behind it in one transaction"
        );
        // The failing and the panicking jobs were rolled back alone.
        let rows: Vec<i64> = store
            .read(|c| {
                let mut st = c.prepare("SELECT v FROM t ORDER BY v")?;
                let rows = st.query_map([], |r| r.get(0))?;
                Ok(rows.collect::<Result<_, _>>()?)
            })
            .await
            .unwrap();
        assert_eq!(rows, (0..=8).collect::<Vec<_>>());
        // The runner stopped when the queue was empty; the next call starts another.
        store
            .call(|c| Ok(c.execute("INSERT INTO t VALUES (9)", [])?))
            .await
            .unwrap();
        assert_eq!(store.commit_counts().transactions - before.transactions, 3);
    }

    #[tokio::test]
    async fn a_runner_that_never_ran_answers_the_queued_jobs_and_gives_up_its_turn() {
        let store = Store::open_in_memory().unwrap();
        // A write and a read queued while their runners hold the turn, as when the runtime
        // shuts down before a runner's blocking task starts.
        let (write_reply, write) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (read_reply, read) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        {
            let mut pending = store.pending.lock().unwrap();
            pending.running = true;
            pending.jobs.push(Box::new(Work {
                f: |_: &mut Connection| Ok(()),
                reply: write_reply,
            }));
            let mut reads = store.reads.lock().unwrap();
            reads.running = true;
            reads.jobs.push(Box::new(Work {
                f: |_: &Connection| Ok(()),
                reply: read_reply,
            }));
        }
        drop(Runner {
            conn: store.conn.clone(),
            queue: store.pending.clone(),
            batch: |_: &mut Connection, _: Vec<Box<dyn Job>>| unreachable!("never runs"),
            stopped: WRITER_STOPPED,
            done: false,
        });
        drop(Runner {
            conn: store.reader.clone(),
            queue: store.reads.clone(),
            batch: |_: &mut Connection, _: Vec<Box<dyn ReadJob>>| unreachable!("never runs"),
            stopped: READER_STOPPED,
            done: false,
        });
        let err = write.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("nothing was written, try again"), "{err}");
        let err = read.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("reader stopped before this read ran"), "{err}");
        // The turns are free: the next call starts a runner and commits, the next read runs.
        store.call(|_| Ok(())).await.unwrap();
        assert_eq!(store.commit_counts().transactions, 1);
        store.read(|_| Ok(())).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_keeps_one_snapshot_and_the_reads_queued_behind_it_see_every_commit_before_them()
    {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.sqlite3")).unwrap();
        store
            .call_blocking(|c| Ok(c.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")?))
            .unwrap();
        let count = |c: &Connection| -> rusqlite::Result<i64> {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        };
        // A read that counts, waits while a row is committed, and counts again.
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let held = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read(move |c| {
                        let before = count(c)?;
                        started_tx.send(()).unwrap();
                        release_rx.recv().unwrap();
                        Ok((before, count(c)?))
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
            .await
            .unwrap();
        store
            .call(|c| Ok(c.execute("INSERT INTO t VALUES (1)", [])?))
            .await
            .unwrap();
        // Reads queued behind it, after that commit: a good one, one that panics, one whose
        // SQL fails, and a good one again.
        let queued = |f: fn(&Connection) -> anyhow::Result<i64>| {
            let store = store.clone();
            tokio::spawn(async move { store.read(f).await })
        };
        let first = queued(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?));
        let panics = queued(|_| panic!("a read that panics"));
        let fails = queued(|c| Ok(c.query_row("SELECT nope FROM t", [], |r| r.get(0))?));
        let last = queued(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?));
        while store.reads.lock().unwrap().jobs.len() < 4 {
            tokio::task::yield_now().await;
        }
        release_tx.send(()).unwrap();
        assert_eq!(
            held.await.unwrap().unwrap(),
            (0, 0),
            "one snapshot from the read's first statement to its last"
        );
        assert_eq!(
            first.await.unwrap().unwrap(),
            1,
            "sees the commit before it"
        );
        let err = panics.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("panicked"), "{err}");
        let err = fails.await.unwrap().unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
        assert_eq!(
            last.await.unwrap().unwrap(),
            1,
            "answered alone, the others too"
        );
        // The runner gives up its turn with the queue empty (just after it answered the last
        // read, so wait for it); the next read starts another.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.reads.lock().unwrap().running {
            assert!(
                std::time::Instant::now() < deadline,
                "the runner kept its turn with nothing queued"
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(store.read(move |c| Ok(count(c)?)).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_read_batch_that_cannot_begin_answers_every_read_with_the_error() {
        // A connection that cannot start the batch's read transaction (one is already open).
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("BEGIN").unwrap();
        let (first_reply, first) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let (second_reply, second) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        let batch: Vec<Box<dyn ReadJob>> = vec![
            Box::new(Work {
                f: |_: &Connection| Ok(()),
                reply: first_reply,
            }),
            Box::new(Work {
                f: |_: &Connection| Ok(()),
                reply: second_reply,
            }),
        ];
        read_batch(&conn, batch);
        for answer in [first, second] {
            let err = answer.await.unwrap().unwrap_err().to_string();
            assert!(err.contains("cannot begin a read"), "{err}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_whose_commit_fails_answers_every_job_with_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("posd.sqlite3")).unwrap();
        store
            .call_blocking(|c| {
                Ok(c.execute_batch(
                    "CREATE TABLE p (id INTEGER PRIMARY KEY); \
                     CREATE TABLE k (p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)",
                )?)
            })
            .unwrap();
        // A deferred foreign key fails at COMMIT, after both jobs succeeded in their savepoints.
        let (first, release) = hold_the_writer(&store, "INSERT INTO p VALUES (5)").await;
        let a = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|c| Ok(c.execute("INSERT INTO k VALUES (7)", [])?))
                    .await
            }
        });
        let b = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(|c| Ok(c.execute("INSERT INTO p VALUES (1)", [])?))
                    .await
            }
        });
        while store.queued() < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap(), 1, "the batch before is kept");
        for r in [a.await.unwrap(), b.await.unwrap()] {
            let err = r.unwrap_err().to_string();
            assert!(err.contains("could not be committed"), "{err}");
        }
        let n: i64 = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT count(*) FROM p) + (SELECT count(*) FROM k)",
                    [],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(n, 1, "nothing of the failed batch is kept");
    }
}
