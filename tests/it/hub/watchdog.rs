//! The hub under systemd: `READY=1` once migrated and listening, then `WATCHDOG=1` only while
//! its database answers; no ping while PostgreSQL refuses connections, pings again once it
//! takes them; `STOPPING=1` on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use super::harness::{register, TestHub, Upstream};
use super::pg::TestDb;

/// Messages received within `within`.
fn receive(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

fn pings(seen: &[String]) -> usize {
    seen.iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_pinged_only_while_the_database_answers() {
    let db = TestDb::new().await;
    let up = Upstream::start(Duration::from_secs(60)).await;
    register(&db, "T_A", "terminal_a").await;
    let mut hub = TestHub::new(&db, &up.base_url(), "", "");
    let sock_path = hub.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    hub.start_with_env(
        None,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            // Pings every 100 ms.
            ("WATCHDOG_USEC", "200000".to_string()),
        ],
    )
    .await;
    let seen = receive(&sock, Duration::from_millis(1500));
    let ready = seen
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {seen:?}"));
    assert!(pings(&seen[..ready]) == 0, "no ping before READY: {seen:?}");
    assert!(pings(&seen[ready..]) >= 3, "pings after READY: {seen:?}");

    // PostgreSQL takes no connections for this database and the hub's sessions end.
    let admin = db.admin().await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            db.name()
        ))
        .await
        .unwrap();
    db.terminate_sessions().await;
    // Let a ping already on its way arrive, then none may come.
    let _ = receive(&sock, Duration::from_millis(400));
    let silent = receive(&sock, Duration::from_millis(1000));
    assert_eq!(
        pings(&silent),
        0,
        "no ping while the database refuses: {silent:?}\n{}",
        hub.log()
    );
    assert!(
        hub.log().contains("not pinging the watchdog"),
        "{}",
        hub.log()
    );

    // The database is back: pings resume.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            db.name()
        ))
        .await
        .unwrap();
    let back = receive(&sock, Duration::from_millis(1500));
    assert!(
        pings(&back) >= 3,
        "pings once the database answers: {back:?}"
    );

    // SIGTERM: STOPPING=1.
    let pid = hub.pid().expect("running");
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    hub.wait_exit(Duration::from_secs(20)).await;
    let end = receive(&sock, Duration::from_millis(200));
    assert!(
        end.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "{end:?}"
    );
}

#[test]
fn the_hub_unit_is_notify_with_a_watchdog() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/posd-hub.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for required in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "ExecStartPre=/usr/bin/posd hub config check --config /etc/posd/hub.toml",
        "ExecStart=/usr/bin/posd hub run --config /etc/posd/hub.toml",
        "Restart=on-failure",
        "User=posd-hub",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            lines.contains(&required),
            "{required} missing from {path:?}"
        );
    }
}
