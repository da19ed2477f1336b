//! The terminal registry: who may talk to the hub, with which public key, for which merchant,
//! store and terminal id, within which limits. Read from the database on every request, so a
//! disabled terminal is refused by every instance from the next request on.

use anyhow::Context as _;
use deadpool_postgres::Pool;
use serde::Serialize;

use crate::gateway::sign::PublicKey;

/// One registered terminal.
#[derive(Debug, Clone, Serialize)]
pub struct Terminal {
    /// Its `Client-Id` at the hub.
    pub client_id: String,
    /// A name for people.
    pub name: Option<String>,
    /// The terminal's public key, SPKI DER in Base64.
    pub public_key: String,
    /// `order.merchant.referenceMerchantId` it must send.
    pub merchant_id: String,
    /// `order.merchant.store.referenceStoreId` it must send.
    pub store_id: String,
    /// `order.env.storeTerminalId` it must send.
    pub terminal_id: String,
    /// Largest pay in minor units, if limited.
    pub max_amount_minor: Option<i64>,
    /// Whether requests are accepted.
    pub enabled: bool,
}

impl Terminal {
    /// The parsed public key.
    pub fn key(&self) -> anyhow::Result<PublicKey> {
        PublicKey::from_text(&self.public_key, &format!("terminal {}", self.client_id))
            .context("the registered public key does not parse")
    }
}

/// What `terminal add` registers.
#[derive(Debug, Clone)]
pub struct NewTerminal {
    /// See [`Terminal`].
    pub client_id: String,
    /// See [`Terminal`].
    pub name: Option<String>,
    /// The public key (already parsed, so a bad file is refused before the database).
    pub public_key: PublicKey,
    /// See [`Terminal`].
    pub merchant_id: String,
    /// See [`Terminal`].
    pub store_id: String,
    /// See [`Terminal`]; defaults to the client id.
    pub terminal_id: Option<String>,
    /// See [`Terminal`].
    pub max_amount_minor: Option<i64>,
}

/// Checks an id given on the command line: 1–64 printable ASCII characters, no spaces.
pub fn check_id(what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty() || value.len() > 64 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        anyhow::bail!("{what} {value:?} must be 1–64 printable ASCII characters without spaces");
    }
    Ok(())
}

const COLUMNS: &str = "client_id, name, public_key, merchant_id, store_id, terminal_id, \
                       max_amount_minor, enabled";

fn from_row(r: &tokio_postgres::Row) -> Terminal {
    Terminal {
        client_id: r.get(0),
        name: r.get(1),
        public_key: r.get(2),
        merchant_id: r.get(3),
        store_id: r.get(4),
        terminal_id: r.get(5),
        max_amount_minor: r.get(6),
        enabled: r.get(7),
    }
}

/// Registers a terminal; refuses a client id that is already registered.
pub async fn add(pool: &Pool, t: &NewTerminal) -> anyhow::Result<Terminal> {
    check_id("--client-id", &t.client_id)?;
    check_id("--merchant-id", &t.merchant_id)?;
    check_id("--store-id", &t.store_id)?;
    let terminal_id = t.terminal_id.clone().unwrap_or_else(|| t.client_id.clone());
    check_id("--terminal-id", &terminal_id)?;
    if let Some(max) = t.max_amount_minor {
        if max <= 0 {
            anyhow::bail!("--max-amount must be above 0");
        }
    }
    let client = pool.get().await?;
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO hub_terminals (client_id, name, public_key, merchant_id, store_id, \
                 terminal_id, max_amount_minor) VALUES ($1,$2,$3,$4,$5,$6,$7) \
                 ON CONFLICT (client_id) DO NOTHING RETURNING {COLUMNS}"
            ),
            &[
                &t.client_id,
                &t.name,
                &t.public_key.to_base64(),
                &t.merchant_id,
                &t.store_id,
                &terminal_id,
                &t.max_amount_minor,
            ],
        )
        .await?;
    match row {
        Some(r) => Ok(from_row(&r)),
        None => anyhow::bail!(
            "terminal {:?} is already registered; `posd hub terminal list` shows it",
            t.client_id
        ),
    }
}

/// One terminal by client id.
pub async fn get(
    client: &impl tokio_postgres::GenericClient,
    id: &str,
) -> anyhow::Result<Option<Terminal>> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM hub_terminals WHERE client_id = $1"),
            &[&id],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Every terminal, by client id.
pub async fn list(pool: &Pool) -> anyhow::Result<Vec<Terminal>> {
    let client = pool.get().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM hub_terminals ORDER BY client_id"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Enables or disables a terminal; an unknown id is an error.
pub async fn set_enabled(pool: &Pool, id: &str, enabled: bool) -> anyhow::Result<()> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE hub_terminals SET enabled = $2, updated_at = now() WHERE client_id = $1",
            &[&id, &enabled],
        )
        .await?;
    if n == 0 {
        anyhow::bail!("no terminal {id:?} is registered; `posd hub terminal list` shows them");
    }
    Ok(())
}
