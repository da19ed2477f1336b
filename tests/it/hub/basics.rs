//! The hub's database and command line: migrations once under the advisory lock, a newer
//! schema refused, the registry through the binary, `config check` and the timeout rule.

use std::process::Command;

use super::harness::{hub_key_path, TestHub};
use super::pg::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_at_once_migrate_once() {
    let db = TestDb::new().await;
    let pools = futures_pools(&db, 4).await;
    let mut set = tokio::task::JoinSet::new();
    for p in pools.clone() {
        set.spawn(async move { posd::hub::db::migrate(&p).await.unwrap() });
    }
    let applied: Vec<usize> = set.join_all().await;
    assert_eq!(
        applied.iter().sum::<usize>(),
        posd::hub::db::MIGRATIONS.len(),
        "exactly one instance applies each migration: {applied:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM hub_schema_migrations").await,
        posd::hub::db::MIGRATIONS.len() as i64
    );
    // A second start applies nothing.
    assert_eq!(posd::hub::db::migrate(&pools[0]).await.unwrap(), 0);
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    posd::hub::db::migrate(&pool).await.unwrap();
    pool.get()
        .await
        .unwrap()
        .execute(
            "INSERT INTO hub_schema_migrations (version, name) VALUES (99, 'future')",
            &[],
        )
        .await
        .unwrap();
    let e = posd::hub::db::migrate(&pool).await.unwrap_err().to_string();
    assert!(e.contains("newer than this posd knows"), "{e}");
}

async fn futures_pools(db: &TestDb, n: usize) -> Vec<deadpool_postgres::Pool> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(db.pool().await);
    }
    v
}

fn posd(args: &[&str], config: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_posd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("POSD_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_registry_through_the_binary() {
    let db = TestDb::new().await;
    let hub = TestHub::new(&db, "http://127.0.0.1:9", "", "");
    let key = hub_key_path("terminal_a_public.pem");
    let key = key.to_str().unwrap();
    let add = [
        "hub",
        "terminal",
        "add",
        "--client-id",
        "T_A",
        "--public-key",
        key,
        "--merchant-id",
        "M0001",
        "--store-id",
        "S01",
        "--terminal-id",
        "T0001",
        "--name",
        "till 1",
        "--max-amount",
        "50000",
    ];
    let (code, out, err) = posd(&add, &hub.config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registered terminal T_A"), "{out}");
    // The same id again is refused and changes nothing.
    let (code, _, err) = posd(&add, &hub.config);
    assert_ne!(code, 0);
    assert!(err.contains("already registered"), "{err}");
    // A file that is not a key is refused before the database.
    let cfg = hub.config.to_str().unwrap();
    let (code, _, err) = posd(
        &[
            "hub",
            "terminal",
            "add",
            "--client-id",
            "T_X",
            "--public-key",
            cfg,
            "--merchant-id",
            "M",
            "--store-id",
            "S",
        ],
        &hub.config,
    );
    assert_ne!(code, 0);
    assert!(err.contains("not an RSA key"), "{err}");
    assert_eq!(db.count("SELECT count(*) FROM hub_terminals").await, 1);

    let (code, out, _) = posd(&["hub", "terminal", "list", "--json"], &hub.config);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["client_id"], "T_A");
    assert_eq!(list[0]["terminal_id"], "T0001");
    assert_eq!(list[0]["max_amount_minor"], 50000);
    assert_eq!(list[0]["enabled"], true);

    let (code, _, _) = posd(&["hub", "terminal", "disable", "T_A"], &hub.config);
    assert_eq!(code, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM hub_terminals WHERE NOT enabled")
            .await,
        1
    );
    let (code, _, _) = posd(&["hub", "terminal", "enable", "T_A"], &hub.config);
    assert_eq!(code, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM hub_terminals WHERE enabled")
            .await,
        1
    );
    let (code, _, err) = posd(&["hub", "terminal", "disable", "NOPE"], &hub.config);
    assert_ne!(code, 0);
    assert!(err.contains("no terminal"), "{err}");
}

#[tokio::test]
async fn config_check_enforces_the_timeout_rule() {
    let db = TestDb::new().await;
    let ok = TestHub::new(&db, "http://127.0.0.1:9", "", "");
    let (code, out, err) = posd(&["hub", "config", "check"], &ok.config);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("hub config ok"), "{out}");

    let text = std::fs::read_to_string(&ok.config).unwrap().replace(
        "active_cancel_after = \"60s\"",
        "active_cancel_after = \"10s\"",
    );
    std::fs::write(&ok.config, text).unwrap();
    let (code, _, err) = posd(&["hub", "config", "check"], &ok.config);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("active_cancel_after") && err.contains("terminal_decision_time"),
        "{err}"
    );
}

#[tokio::test]
async fn keys_generate_writes_a_pair_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_posd"))
            .args(["hub", "keys", "generate", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let private = out.join("hub_private.pem");
    assert_eq!(super::super::support::mode_of(&private), 0o600);
    posd::gateway::sign::PrivateKey::load(&private).unwrap();
    let second = run();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("never overwrites"));
}
