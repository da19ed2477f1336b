//! PostgreSQL for the hub tests: one fresh database per test on the server named by
//! `POSD_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432`). When no server answers,
//! a throwaway cluster is started once per test run with initdb/pg_ctl (as an unprivileged
//! user, on a free port); [`Server::at`] does the same for any URL, and stops and removes
//! its cluster when dropped. With no PostgreSQL installed the tests fail and say how to get
//! one; they never skip (under `CI=true` or not).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The URL the tests use: `POSD_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`.
pub fn env_url() -> String {
    std::env::var("POSD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The server's URL without a database name: the one at [`env_url`], or a throwaway cluster
/// kept for the whole run.
fn server_url() -> &'static str {
    static SERVER: OnceLock<Server> = OnceLock::new();
    &SERVER.get_or_init(|| Server::at(&env_url())).url
}

/// A PostgreSQL server for tests: the one that answers at a URL, or, when none does, a
/// throwaway cluster started for it (stopped and removed when the value is dropped).
pub struct Server {
    /// The server's URL without a database name.
    pub url: String,
    cluster: Option<Cluster>,
}

impl Server {
    /// The server at `url`, or a throwaway cluster when nothing answers there.
    pub fn at(url: &str) -> Server {
        if answers(url) {
            return Server {
                url: url.to_string(),
                cluster: None,
            };
        }
        eprintln!("no PostgreSQL answers at {url}; starting a throwaway cluster");
        let cluster = throwaway_cluster();
        Server {
            url: cluster.url.clone(),
            cluster: Some(cluster),
        }
    }

    /// The throwaway cluster's directory, if one was started.
    pub fn cluster_dir(&self) -> Option<&Path> {
        self.cluster.as_ref().map(|c| c.dir.as_path())
    }
}

/// A cluster made by initdb and run by pg_ctl, as an unprivileged user on a free port.
struct Cluster {
    url: String,
    dir: PathBuf,
    pg_ctl: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_unprivileged(&self.pg_ctl)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server takes connections at `url` (no database name).
pub fn answers(url: &str) -> bool {
    let url = format!("{}/postgres", url.trim_end_matches('/'));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg: tokio_postgres::Config = match url.parse() {
                Ok(c) => c,
                Err(_) => return false,
            };
            let mut cfg = cfg;
            cfg.connect_timeout(Duration::from_secs(2));
            matches!(
                tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls))
                    .await,
                Ok(Ok(_))
            )
        })
    })
    .join()
    .unwrap_or(false)
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
        .unwrap_or_default();
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        for d in dirs.flatten() {
            candidates.push(d.path().join("bin").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn as_unprivileged(tool: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(tool);
        c
    } else {
        Command::new(tool)
    }
}

/// initdb + pg_ctl start on a free port in a temp directory of its own.
fn throwaway_cluster() -> Cluster {
    let (Some(initdb), Some(pg_ctl)) = (find_tool("initdb"), find_tool("pg_ctl")) else {
        panic!(
            "the hub tests need PostgreSQL: none answers at POSD_TEST_PG_URL (default \
             postgres://postgres@127.0.0.1:5432) and initdb/pg_ctl are not installed. Install \
             it (Debian: apt-get install postgresql) or point POSD_TEST_PG_URL at a server with \
             trust auth for the role in the URL"
        );
    };
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "posd-hub-pg-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    if running_as_root() {
        // nobody must own the cluster: postgres refuses to run as root.
        let st = Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "chown of the throwaway cluster directory failed"
        );
    }
    let port = super::super::daemon::free_port();
    let st = as_unprivileged(&initdb)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let st = as_unprivileged(&pg_ctl)
        .arg("-D")
        .arg(&data)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            dir.display()
        ))
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "start"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "pg_ctl start failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let url = format!("postgres://postgres@127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers(&url) {
        assert!(
            Instant::now() < deadline,
            "the throwaway cluster does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Cluster { url, dir, pg_ctl }
}

/// A fresh database, dropped (best effort) when the value is dropped.
pub struct TestDb {
    /// `postgres://…/<name>`.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates the database on the tests' server.
    pub async fn new() -> TestDb {
        TestDb::on(server_url()).await
    }

    /// Creates the database on the server at `server` (a URL without a database name).
    pub async fn on(server: &str) -> TestDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let server = server.trim_end_matches('/').to_string();
        let name = format!(
            "posd_hub_t{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let (client, conn) =
            tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL server");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        TestDb {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to the server's `postgres` database (for `ALTER DATABASE` on this one,
    /// which a session inside it cannot always run).
    pub async fn admin(&self) -> tokio_postgres::Client {
        let server = self.url.rsplit_once('/').unwrap().0.to_string();
        let (client, conn) =
            tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the postgres database");
        tokio::spawn(conn);
        client
    }

    /// Ends every session on this database except the caller's (the hub's pool reconnects).
    pub async fn terminate_sessions(&self) {
        self.admin()
            .await
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 \
                 AND pid <> pg_backend_pid()",
                &[&self.name],
            )
            .await
            .unwrap();
    }

    /// A pool on it.
    pub async fn pool(&self) -> deadpool_postgres::Pool {
        posd::hub::db::connect(&self.url, 4).await.expect("pool")
    }

    /// Runs one statement (a test putting a row in the state it needs); the rows it changed.
    pub async fn execute(&self, sql: &str) -> u64 {
        let pool = self.pool().await;
        let c = pool.get().await.unwrap();
        c.execute(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One query result as i64 (counts in assertions).
    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.pool().await;
        let c = pool.get().await.unwrap();
        c.query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = self.url.rsplit_once('/').unwrap().0.to_string();
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&format!("{server}/postgres"), tokio_postgres::NoTls)
                        .await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
