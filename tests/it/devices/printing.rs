//! The print journal and the print worker on the real `Store` and its migrations: a payment
//! is recorded at once whatever the printer does (its slip row commits with the final state,
//! through `store::payments::apply`, as the engine does it); a slip that cannot print stays
//! pending and prints when the printer is back; paper out is told apart from unknown over a
//! real TCP connection; reprints are copies.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use posd::devices::config::{PrinterConfig, PrinterKind};
use posd::devices::print_worker::{PrintWorker, WorkerSettings};
use posd::devices::printer::{Job, PrintError, PrinterStatus, Transport};
use posd::devices::profile::Profile;
use posd::devices::receipt::{SlipData, SlipKind};
use posd::domain::machine::State;
use posd::domain::money::{Amount, Currency};
use posd::engine::clock::SystemClock;
use posd::store::payments::{self, Change, NewPayment};
use posd::store::print_journal::{self, SlipStatus};
use posd::store::Store;
use tokio_util::sync::CancellationToken;

use super::wait_until;

const LIMIT: Duration = Duration::from_secs(5);

fn slip(prid: &str) -> SlipData {
    SlipData {
        kind: SlipKind::Sale,
        merchant_name: "Tea House Ltd".into(),
        store_name: "Store 1".into(),
        terminal_id: "T0001".into(),
        amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
        payment_request_id: prid.into(),
        payment_id: Some("2026112119074102000000000012345".into()),
        refund_request_id: None,
        local_time: NaiveDateTime::parse_from_str("2026-11-21 14:03:05", "%Y-%m-%d %H:%M:%S")
            .unwrap(),
        copy: false,
    }
}

/// The daemon's store on a file: every migration applied, foreign keys on.
fn database(dir: &std::path::Path) -> Store {
    Store::open(&dir.join("posd.sqlite3")).unwrap()
}

/// What the engine does when a sale succeeds: the pay intent, then the move to SUCCEEDED
/// with its slip row in the same transaction. Returns the slip's id.
fn record_sale(store: &Store, prid: &str) -> i64 {
    let prid = prid.to_string();
    store
        .call_blocking(move |c| {
            let new = NewPayment {
                order_ref: None,
                amount: Amount::parse("12.34", Currency::from_code("CNY")?)?,
                state: State::Paying,
                code_masked: Some("2812**********3456".into()),
                terminal_time: "2026-11-21T14:03:05+08:00".into(),
                pay_expires_at: None,
            };
            payments::create(c, &new, 0, |_| prid.clone())?;
            let change = Change {
                to: Some(State::Succeeded),
                cause: "pay answered S".into(),
                slip: Some(slip(&prid)),
                ..Change::default()
            };
            let moved = payments::apply(c, &prid, State::Paying, &change, 0)?;
            assert!(moved.is_some(), "compare-and-set from PAYING");
            let row = print_journal::latest_for_payment(c, &prid)?.expect("the slip row");
            Ok(row.id)
        })
        .unwrap()
}

fn row(store: &Store, id: i64) -> print_journal::SlipRow {
    store
        .call_blocking(move |c| Ok(print_journal::get(c, id)?))
        .unwrap()
        .expect("slip row")
}

fn reprint(store: &Store, prid: &str) -> Option<i64> {
    let prid = prid.to_string();
    store
        .call_blocking(move |c| Ok(print_journal::reprint(c, &prid)?))
        .unwrap()
}

fn fast() -> WorkerSettings {
    WorkerSettings {
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        status_poll: Duration::from_millis(30),
        open_drawer: false,
    }
}

#[derive(Default)]
struct FakeState {
    status: Option<PrinterStatus>,
    hold: Duration,
    printed: Vec<Job>,
}

/// A printer whose status the test sets, that can hang in the middle of a print.
#[derive(Clone, Default)]
struct FakePrinter(Arc<Mutex<FakeState>>);

impl FakePrinter {
    fn set(&self, status: PrinterStatus) {
        self.0.lock().unwrap().status = Some(status);
    }
    fn printed(&self) -> Vec<i64> {
        self.0
            .lock()
            .unwrap()
            .printed
            .iter()
            .map(|j| j.slip_id)
            .collect()
    }
}

impl Transport for FakePrinter {
    fn describe(&self) -> String {
        "fake".into()
    }
    fn status(&mut self) -> PrinterStatus {
        self.0
            .lock()
            .unwrap()
            .status
            .unwrap_or(PrinterStatus::Ready)
    }
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError> {
        let hold = self.0.lock().unwrap().hold;
        std::thread::sleep(hold);
        let status = self.status();
        if status.is_fault() {
            return Err(PrintError::NotReady(status));
        }
        self.0.lock().unwrap().printed.push(job.clone());
        Ok(status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printer_offline_at_sale_time_slip_waits_and_prints_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path());
    let printer = FakePrinter::default();
    printer.set(PrinterStatus::Offline);
    let shutdown = CancellationToken::new();
    let worker = PrintWorker::spawn_with(
        Box::new(printer.clone()),
        Profile::load("generic-80mm").unwrap(),
        fast(),
        store.clone(),
        Arc::new(SystemClock),
        shutdown.clone(),
    )
    .unwrap();

    let id = record_sale(&store, "P1");
    worker.wake();
    wait_until("the failed attempt to be recorded", LIMIT, || {
        row(&store, id).attempts >= 1
    })
    .await;
    let r = row(&store, id);
    assert_eq!(r.status, SlipStatus::Pending);
    assert_eq!(r.printer_status.as_deref(), Some("OFFLINE"));
    assert_eq!(worker.status(), PrinterStatus::Offline);
    assert!(printer.printed().is_empty());

    // While the printer is stuck mid-job, recording payments is not delayed.
    printer.0.lock().unwrap().hold = Duration::from_millis(400);
    printer.set(PrinterStatus::Ready);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let t = Instant::now();
    let id2 = record_sale(&store, "P2");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "recording took {:?}",
        t.elapsed()
    );

    wait_until("both slips printed", LIMIT, || {
        row(&store, id).status == SlipStatus::Printed
            && row(&store, id2).status == SlipStatus::Printed
    })
    .await;
    let mut printed = printer.printed();
    printed.sort();
    assert_eq!(printed, vec![id, id2], "each slip printed exactly once");
    assert_eq!(worker.status(), PrinterStatus::Ready);
    shutdown.cancel();
    worker.join().await;
}

/// What the fake network printer answers to DLE EOT.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ready,
    PaperOut,
    /// Never answers DLE EOT (a printer without status support).
    Silent,
}

/// A raw TCP printer on 127.0.0.1:0 that answers DLE EOT 1, 2 and 4 as an Epson does
/// (values seen from emupos) and keeps everything else it receives.
fn network_printer(mode: Arc<Mutex<Mode>>, received: Arc<Mutex<Vec<u8>>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { return };
            let (mode, received) = (mode.clone(), received.clone());
            std::thread::spawn(move || {
                let mut data = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                    while let Some(at) = data
                        .windows(3)
                        .position(|w| w[0] == 0x10 && w[1] == 0x04 && (1..=4).contains(&w[2]))
                    {
                        let n = data[at + 2];
                        let reply = match (*mode.lock().unwrap(), n) {
                            (Mode::Silent, _) => None,
                            (Mode::Ready, 1) => Some(0x16),
                            (Mode::Ready, _) => Some(0x12),
                            (Mode::PaperOut, 1) => Some(0x1e),
                            (Mode::PaperOut, 2) => Some(0x32),
                            (Mode::PaperOut, _) => Some(0x7e),
                        };
                        received.lock().unwrap().extend_from_slice(&data[..at]);
                        data.drain(..at + 3);
                        if let Some(r) = reply {
                            let _ = s.write_all(&[r]);
                        }
                    }
                }
                received.lock().unwrap().extend_from_slice(&data);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paper_out_is_told_apart_from_unknown_over_tcp_and_reprints_are_copies() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path());
    let mode = Arc::new(Mutex::new(Mode::PaperOut));
    let received = Arc::new(Mutex::new(Vec::new()));
    let port = network_printer(mode.clone(), received.clone());
    let cfg = PrinterConfig {
        kind: PrinterKind::Network,
        address: Some(format!("127.0.0.1:{port}")),
        connect_timeout: Duration::from_millis(500),
        io_timeout: Duration::from_millis(150),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        status_poll: Duration::from_millis(30),
        ..PrinterConfig::default()
    };
    cfg.validate().unwrap();
    let shutdown = CancellationToken::new();
    let worker =
        PrintWorker::spawn(&cfg, store.clone(), Arc::new(SystemClock), shutdown.clone()).unwrap();
    let prid = "126112114030500000100004200000012347";
    let id = record_sale(&store, prid);
    worker.wake();

    wait_until("paper out to be recorded", LIMIT, || {
        row(&store, id).printer_status.as_deref() == Some("PAPER_OUT")
    })
    .await;
    assert_eq!(worker.status(), PrinterStatus::PaperOut);
    assert_eq!(row(&store, id).status, SlipStatus::Pending);
    assert!(
        received.lock().unwrap().is_empty(),
        "nothing is sent to a printer without paper"
    );

    // A printer that does not answer DLE EOT is "unknown", not a fault: the slip goes out.
    *mode.lock().unwrap() = Mode::Silent;
    wait_until("the slip to print", LIMIT, || {
        row(&store, id).status == SlipStatus::Printed
    })
    .await;
    assert_eq!(worker.status(), PrinterStatus::Unknown);
    let bytes = std::mem::take(&mut *received.lock().unwrap());
    assert!(
        bytes.starts_with(&[0x1b, b'@']),
        "the slip's ESC/POS bytes arrived"
    );
    let text = posd::devices::escpos::dump(&bytes, posd::devices::profile::TextEncoding::Gb18030);
    assert!(text.contains(&format!("GS k CODE128 \"{prid}\"")), "{text}");

    // Reprint: a copy of the latest slip, marked COPY.
    *mode.lock().unwrap() = Mode::Ready;
    let copy = reprint(&store, prid).expect("the payment has a slip");
    worker.wake();
    wait_until("the copy to print", LIMIT, || {
        row(&store, copy).status == SlipStatus::Printed
    })
    .await;
    let bytes = std::mem::take(&mut *received.lock().unwrap());
    let text = posd::devices::escpos::dump(&bytes, posd::devices::profile::TextEncoding::Gb18030);
    assert!(text.contains("*** COPY ***"), "{text}");
    wait_until("status ready", LIMIT, || {
        worker.status() == PrinterStatus::Ready
    })
    .await;
    assert_eq!(reprint(&store, "no-such-payment"), None);
    shutdown.cancel();
    worker.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_printer_writes_bin_and_txt_per_slip() {
    let dir = tempfile::tempdir().unwrap();
    let store = database(dir.path());
    let receipts = dir.path().join("receipts");
    let cfg = PrinterConfig {
        path: receipts.clone(),
        status_poll: Duration::from_millis(30),
        ..PrinterConfig::default()
    };
    let shutdown = CancellationToken::new();
    let worker =
        PrintWorker::spawn(&cfg, store.clone(), Arc::new(SystemClock), shutdown.clone()).unwrap();
    let id = record_sale(&store, "P7");
    let copy = reprint(&store, "P7").unwrap();
    worker.wake();
    wait_until("both slips on disk", LIMIT, || {
        row(&store, copy).status == SlipStatus::Printed
    })
    .await;
    assert_eq!(row(&store, id).status, SlipStatus::Printed);
    let txt = std::fs::read_to_string(receipts.join(format!("P7-{id}-sale.txt"))).unwrap();
    assert!(
        txt.contains("SALE") && txt.contains("[barcode P7]") && !txt.contains("COPY"),
        "{txt}"
    );
    let txt = std::fs::read_to_string(receipts.join(format!("P7-{copy}-sale-copy.txt"))).unwrap();
    assert!(txt.contains("*** COPY ***"), "{txt}");
    let bin = std::fs::read(receipts.join(format!("P7-{id}-sale.bin"))).unwrap();
    assert!(bin.starts_with(&[0x1b, b'@', 0x1c, b'&']));
    assert_eq!(worker.status(), PrinterStatus::Ready);
    shutdown.cancel();
    worker.join().await;
}

/// The journal's foreign key holds on the real schema, and a failed transaction leaves no
/// slip: the row commits or rolls back with the payment's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slip_needs_its_payment_and_rolls_back_with_its_transaction() {
    let store = Store::open_in_memory().unwrap();
    let orphan = store.call_blocking(|c| Ok(print_journal::enqueue(c, &slip("NOPE")).is_err()));
    assert!(orphan.unwrap(), "a slip needs its payment (foreign key)");
    let id = record_sale(&store, "P9");
    let failed: anyhow::Result<()> = store.call_blocking(|c| {
        print_journal::enqueue(c, &slip("P9"))?;
        anyhow::bail!("the transition failed after the slip was written")
    });
    assert!(failed.is_err());
    let pending = store
        .call_blocking(|c| Ok(print_journal::pending(c)?))
        .unwrap();
    assert_eq!(
        pending.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![id],
        "the rolled-back slip is gone"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = PrinterConfig {
        path: dir.path().to_path_buf(),
        status_poll: Duration::from_millis(30),
        ..PrinterConfig::default()
    };
    let shutdown = CancellationToken::new();
    let worker =
        PrintWorker::spawn(&cfg, store.clone(), Arc::new(SystemClock), shutdown.clone()).unwrap();
    worker.wake();
    wait_until("the slip to print", LIMIT, || {
        row(&store, id).status == SlipStatus::Printed
    })
    .await;
    assert!(dir.path().join(format!("P9-{id}-sale.bin")).exists());
    shutdown.cancel();
    worker.join().await;
}
