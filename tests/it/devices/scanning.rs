//! The serial scanner end to end over pseudo-terminal pairs: the test holds the master (the
//! "scanner"), `posd::devices::scanner::spawn` opens the slave by path through a symlink
//! (as udev's /dev/posd-scanner would be), and the symlink is re-pointed to a new pair to
//! play an unplug and replug. An unplug removes the symlink before the pair goes, as udev
//! does: the kernel reuses a freed pty's number at once, so a link left pointing at it could
//! name another test's pty. Both ends are opened close-on-exec: a master inherited by a
//! process another test spawns meanwhile (a daemon, `pg_ctl`) would outlive the unplug, and
//! the scanner would never see the hangup.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use posd::devices::config::{ScannerConfig, ScannerKind};
use posd::devices::scanner::{spawn, ScanEvent};
use posd::domain::code::CodeRules;
use rustix::pty::OpenptFlags;
use rustix::termios::OptionalActions;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

const A: &str = "281234567890123456";
const B: &str = "25987654321098765432";
const C: &str = "30111122223333444455556666";

/// A plugged-in "scanner": a pty pair whose slave is reachable at a symlink. The test writes
/// on the master; it keeps its own slave handle open (never read from; it tells how much input
/// waits) because writing to a master whose slave is closed fails. [`unplug`] takes it away.
struct Plugged {
    master: File,
    slave: File,
}

/// A raw pty pair, both ends close-on-exec from the moment they exist (serialport's own
/// `TTYPort::pair` opens them inheritable).
fn pty_pair() -> (File, File, PathBuf) {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("pseudo-terminal master");
    rustix::pty::grantpt(&master).expect("grantpt");
    rustix::pty::unlockpt(&master).expect("unlockpt");
    let name = rustix::pty::ptsname(&master, Vec::new()).expect("the slave has a path");
    let name = PathBuf::from(name.into_string().expect("a UTF-8 pty path"));
    // std opens with O_CLOEXEC; O_NOCTTY keeps it from becoming the test's terminal.
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&name)
        .expect("pseudo-terminal slave");
    let mut raw = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
    raw.make_raw();
    rustix::termios::tcsetattr(&slave, OptionalActions::Now, &raw).expect("tcsetattr");
    (File::from(master), slave, name)
}

/// Bytes written on the master that the slave's reader has not taken yet. What the master
/// writes reaches the slave's input queue through the kernel's flip buffer, in a work item of
/// its own; a poll of the slave runs that work first, so a count of 0 after it means read, not
/// "still on its way".
fn waiting_input(slave: &File) -> u64 {
    let mut fds = [rustix::event::PollFd::new(
        slave,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, Some(&rustix::time::Timespec::default())).expect("poll");
    rustix::io::ioctl_fionread(slave).expect("FIONREAD")
}

fn plug(link: &Path) -> Plugged {
    let (master, slave, name) = pty_pair();
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

    // A process started meanwhile (as other tests start daemons) must not hold the pty open
    // past the unplug.
    let mut bystander = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .expect("sleep");

    // Unplug mid-code: the half code is reported, never glued to what follows.
    send(&mut master, b"2899");
    // A hangup discards input not yet read: unplug only once the scanner has read it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while waiting_input(&master.slave) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the scanner never read the half code"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unplug(&link, master);
    let (reason, _) = next_rejection(&mut rx).await;
    assert!(reason.starts_with("scan interrupted"), "{reason}");
    let _ = bystander.kill();
    let _ = bystander.wait();

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
