//! The serial scanner end to end over pseudo-terminal pairs: the test holds the master (the
//! "scanner"), `posd::devices::scanner::spawn` opens the slave by path through a symlink
//! (as udev's /dev/posd-scanner would be), and the symlink is re-pointed to a new pair to
//! play an unplug and replug. An unplug removes the symlink before the pair goes, as udev
//! does: the kernel reuses a freed pty's number at once, so a link left pointing at it could
//! name another test's pty.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use posd::devices::config::{ScannerConfig, ScannerKind};
use posd::devices::scanner::{spawn, ScanEvent};
use posd::domain::code::CodeRules;
use serialport::{SerialPort, TTYPort};
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

const A: &str = "281234567890123456";
const B: &str = "25987654321098765432";
const C: &str = "30111122223333444455556666";

/// A plugged-in "scanner": a pty pair whose slave is reachable at a symlink. The test writes
/// on the master; it keeps its own slave handle open (never read from; it tells how much input
/// waits) because writing to a
/// master whose slave is closed fails. [`unplug`] takes it away.
struct Plugged {
    master: TTYPort,
    slave: TTYPort,
}

fn plug(link: &Path) -> Plugged {
    let (master, slave) = TTYPort::pair().expect("pseudo-terminal pair");
    let name = slave.name().expect("the slave has a path");
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
    Plugged { master, slave }
}

/// The scanner is pulled out: udev removes its link, then the device is gone.
fn unplug(link: &Path, plugged: Plugged) {
    std::fs::remove_file(link).unwrap();
    drop(plugged);
}

fn config(link: PathBuf) -> ScannerConfig {
    ScannerConfig {
        kind: ScannerKind::Serial,
        device: Some(link),
        baud: 9600,
        dedup_window: Duration::from_millis(300),
        max_frame_len: 40,
        reconnect_interval: Duration::from_millis(20),
    }
}

async fn next(rx: &mut Receiver<ScanEvent>) -> ScanEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a scan event within 5 s")
        .expect("the scanner channel is open")
}

async fn next_code(rx: &mut Receiver<ScanEvent>) -> String {
    match next(rx).await {
        ScanEvent::Code(c) => c.expose().to_string(),
        other => panic!("expected a code, got {other:?}"),
    }
}

async fn next_rejection(rx: &mut Receiver<ScanEvent>) -> (String, String) {
    match next(rx).await {
        ScanEvent::Rejected { reason, masked } => (reason, masked),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn send(p: &mut Plugged, bytes: &[u8]) {
    p.master.write_all(bytes).unwrap();
    p.master.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_scanner_frames_validates_dedups_and_survives_an_unplug() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("posd-scanner");
    let mut master = plug(&link);
    let shutdown = CancellationToken::new();
    let mut rx = spawn(
        &config(link.clone()),
        &CodeRules::default(),
        shutdown.clone(),
    );

    // A code split across two reads, CR-terminated.
    send(&mut master, &A.as_bytes()[..7]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&mut master, format!("{}\r", &A[7..]).as_bytes());
    assert_eq!(next_code(&mut rx).await, A);

    // CRLF, then TAB; the LF of the CRLF is not an empty scan.
    send(&mut master, format!("{B}\r\n{C}\t").as_bytes());
    assert_eq!(next_code(&mut rx).await, B);
    assert_eq!(next_code(&mut rx).await, C);

    // A garbage line is rejected with its reason, masked.
    send(&mut master, b"HELLO-WORLD-123456\r\n");
    let (reason, masked) = next_rejection(&mut rx).await;
    assert!(reason.starts_with("not a payment code"), "{reason}");
    assert_eq!(masked, "HELL**********3456");

    // An over-long line is rejected whole, and the next code is intact.
    send(&mut master, format!("{}\r{A}\r", "2".repeat(90)).as_bytes());
    let (reason, masked) = next_rejection(&mut rx).await;
    assert!(reason.contains("over 40 characters (90)"), "{reason}");
    assert!(masked.is_empty());
    // A was last seen long enough ago (more than the 300 ms window) to count again.
    assert_eq!(next_code(&mut rx).await, A);

    // The same code twice within the window is taken once.
    send(&mut master, format!("{B}\r{B}\r{C}\r").as_bytes());
    assert_eq!(next_code(&mut rx).await, B);
    assert_eq!(next_code(&mut rx).await, C, "the second B was a duplicate");

    // Unplug mid-code: the half code is reported, never glued to what follows.
    send(&mut master, b"2899");
    // A hangup discards input not yet read: unplug only once the scanner has read it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while master.slave.bytes_to_read().unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scanner never read the half code"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unplug(&link, master);
    let (reason, _) = next_rejection(&mut rx).await;
    assert!(reason.starts_with("scan interrupted"), "{reason}");

    // Replug (a new pty behind the same name): scanning goes on.
    let mut master = plug(&link);
    send(&mut master, format!("{A}\r\n").as_bytes());
    assert_eq!(next_code(&mut rx).await, A);

    shutdown.cancel();
    // The thread looks at the token every READ_POLL (100 ms); 5 s is for a loaded machine.
    let closed = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(closed, Ok(None)),
        "the channel closes at shutdown, with nothing more on it: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_scanner_waits_for_a_device_that_is_not_there_yet() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("posd-scanner");
    let shutdown = CancellationToken::new();
    let mut rx = spawn(
        &config(link.clone()),
        &CodeRules::default(),
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut master = plug(&link);
    send(&mut master, format!("{C}\r").as_bytes());
    assert_eq!(next_code(&mut rx).await, C);
    shutdown.cancel();
}

#[tokio::test]
async fn no_scanner_stays_silent_until_shutdown() {
    let shutdown = CancellationToken::new();
    let cfg = ScannerConfig {
        kind: ScannerKind::None,
        ..Default::default()
    };
    let mut rx = spawn(&cfg, &CodeRules::default(), shutdown.clone());
    assert!(tokio::time::timeout(Duration::from_millis(50), rx.recv())
        .await
        .is_err());
    shutdown.cancel();
    assert_eq!(rx.recv().await, None);
}
