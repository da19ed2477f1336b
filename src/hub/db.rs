//! The hub's PostgreSQL: the connection pool and the schema migrations, applied on start in
//! one transaction under an advisory lock so that instances starting at once migrate once.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// The schema, in order. A version is never edited once released; a new one is appended.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "hub", include_str!("migrations/01-hub.sql"))];

/// The advisory lock key the migrations run under (`posd_hub` in ASCII).
pub const MIGRATION_LOCK: i64 = 0x706f_7364_5f68_7562;

/// Opens a pool of `size` connections to `url` (connections open lazily) and checks that
/// the server answers.
pub async fn connect(url: &str, size: usize) -> anyhow::Result<Pool> {
    let pg: tokio_postgres::Config = url
        .parse()
        .with_context(|| format!("database.url {url:?} is not a PostgreSQL URL"))?;
    let mut pg = pg;
    pg.connect_timeout(Duration::from_secs(5));
    pg.application_name("posd-hub");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .context("cannot build the database pool")?;
    let client = pool
        .get()
        .await
        .with_context(|| format!("cannot connect to the hub database {}", redact(url)))?;
    client
        .simple_query("SELECT 1")
        .await
        .context("the hub database does not answer")?;
    Ok(pool)
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Applies the migrations this binary knows and the database lacks, in one transaction
/// under `pg_advisory_xact_lock`; returns how many this call applied (0 when another
/// instance did it first). Refuses a database whose schema is newer than this binary.
pub async fn migrate(pool: &Pool) -> anyhow::Result<usize> {
    let mut client = pool.get().await.context("no database connection")?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("cannot take the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS hub_schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM hub_schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        anyhow::bail!(
            "the hub database has schema version {current}, newer than this posd knows ({known}); \
             run the newer posd (a hub never downgrades its database)"
        );
    }
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("hub migration {version} ({name}) failed"))?;
        tx.execute(
            "INSERT INTO hub_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await.context("cannot commit the migrations")?;
    if applied > 0 {
        tracing::info!(applied, version = known, "hub database migrated");
    }
    Ok(applied)
}
