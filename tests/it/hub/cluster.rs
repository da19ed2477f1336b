//! The tests' PostgreSQL fallback, exercised: with no server at the URL (a dead port, given
//! to this test alone rather than through the process environment), a throwaway cluster is
//! made with initdb and started with pg_ctl as an unprivileged user; the hub migrates on it
//! and serves a pay end to end; dropping it stops the cluster and removes its directory.

use std::time::Duration;

use super::super::daemon::free_port;
use super::harness::{code, hub_state, pay_body, register, Signer, TestHub, Upstream};
use super::pg::{answers, Server, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_server_at_the_url_a_throwaway_cluster_serves_the_hub_and_is_removed_after() {
    let dead = format!("postgres://postgres@127.0.0.1:{}", free_port());
    assert!(!answers(&dead), "the port must be dead for this test");
    let server = tokio::task::spawn_blocking(move || Server::at(&dead))
        .await
        .unwrap();
    let dir = server
        .cluster_dir()
        .expect("a throwaway cluster was started")
        .to_path_buf();
    assert!(
        dir.join("data/PG_VERSION").is_file(),
        "initdb ran in {dir:?}"
    );
    assert!(
        answers(&server.url),
        "the cluster answers at {}",
        server.url
    );

    let db = TestDb::on(&server.url).await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    let mut hub = TestHub::new(&db, &up.base_url(), "", "");
    hub.start(None).await;
    assert!(
        db.count("SELECT count(*) FROM hub_schema_migrations").await >= 1,
        "the hub migrated the fresh database on start"
    );
    register(&db, "T_A", "terminal_a").await;
    let r = Signer::new("T_A", "terminal_a")
        .send(&hub.base, "pay", &pay_body("C_00", &code("00")), 0)
        .await;
    assert_eq!(r.status(), "S", "{:?}", r.body);
    assert_eq!(hub_state(&db, "C_00").await.as_deref(), Some("SUCCEEDED"));
    hub.kill();
    drop(db);

    let url = server.url.clone();
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    assert!(!dir.exists(), "the cluster's directory is removed");
    assert!(!answers(&url), "the cluster is stopped");
}
