//! Printer transports (file, serial, usb, network, none), printer status by DLE EOT, and
//! the dedicated thread that owns the printer.
//!
//! All printer I/O is blocking (as the `escpos` crate's is) and runs on one thread per
//! printer, reached through [`PrinterHandle`]; the async runtime only awaits replies.
//!
//! Two-way transports (serial, network) ask the printer for its status with `DLE EOT 1`
//! (printer), `DLE EOT 2` (offline cause) and `DLE EOT 4` (roll paper sensor) before and
//! after each slip. A slip is not sent to a printer that reports paper out, cover open or
//! offline: such a printer would hold the data and print it when it recovers, and the retry
//! would then print the slip twice. One-way transports (usb, file) can only tell "the device
//! is not there" (offline) from "unknown".

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use super::config::{parse_address, PrinterConfig, PrinterKind};

/// What the printer said about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrinterStatus {
    /// Online with paper, or (file transport) the directory is writable.
    Ready,
    /// The roll is out (or the printer stopped at the paper end).
    PaperOut,
    /// The cover is open.
    CoverOpen,
    /// Offline, unplugged, switched off or unreachable.
    Offline,
    /// The transport cannot ask (one-way), or the printer did not answer DLE EOT.
    Unknown,
    /// `[printer] kind = "none"`: slips stay in the journal.
    Disabled,
}

impl PrinterStatus {
    /// The stored and exported form (`READY`, `PAPER_OUT`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PrinterStatus::Ready => "READY",
            PrinterStatus::PaperOut => "PAPER_OUT",
            PrinterStatus::CoverOpen => "COVER_OPEN",
            PrinterStatus::Offline => "OFFLINE",
            PrinterStatus::Unknown => "UNKNOWN",
            PrinterStatus::Disabled => "DISABLED",
        }
    }

    /// True when printing now cannot succeed: do not send the slip.
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            PrinterStatus::PaperOut
                | PrinterStatus::CoverOpen
                | PrinterStatus::Offline
                | PrinterStatus::Disabled
        )
    }
}

impl std::fmt::Display for PrinterStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One slip to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The print journal's id of the slip.
    pub slip_id: i64,
    /// A file-name-safe name (the file transport's file stem).
    pub name: String,
    /// The ESC/POS bytes.
    pub bytes: Vec<u8>,
    /// The plain-text preview (the file transport writes it next to the bytes).
    pub preview: String,
}

/// Why a slip did not print; [`PrintError::status`] is what to report and store.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    /// The printer reported a fault; nothing (more) was sent.
    #[error("printer not ready: {0}")]
    NotReady(PrinterStatus),
    /// The device could not be opened or reached.
    #[error("printer unreachable: {0}")]
    Unreachable(io::Error),
    /// Writing failed part-way, or the printer stopped answering.
    #[error("printer i/o failed: {0}")]
    Io(io::Error),
    /// The printer thread is gone (only at shutdown).
    #[error("printer thread stopped")]
    Stopped,
}

impl PrintError {
    /// The printer status this failure implies.
    pub fn status(&self) -> PrinterStatus {
        match self {
            PrintError::NotReady(s) => *s,
            PrintError::Unreachable(_) => PrinterStatus::Offline,
            PrintError::Io(e) if e.kind() == io::ErrorKind::TimedOut => PrinterStatus::Unknown,
            PrintError::Io(_) => PrinterStatus::Offline,
            PrintError::Stopped => PrinterStatus::Unknown,
        }
    }
}

/// A way to a printer. Implementations block; they run on the printer thread.
pub trait Transport: Send + 'static {
    /// For logs: `network 10.0.0.5:9100`, `usb /dev/usb/lp0`, ...
    fn describe(&self) -> String;
    /// Asks the printer how it is (DLE EOT on two-way transports).
    fn status(&mut self) -> PrinterStatus;
    /// Prints one slip; returns the status seen afterwards.
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError>;
}

/// Builds the transport `[printer]` asks for.
pub fn open_transport(cfg: &PrinterConfig) -> Box<dyn Transport> {
    match cfg.kind {
        PrinterKind::File => Box::new(FileTransport {
            dir: cfg.path.clone(),
        }),
        PrinterKind::Serial => Box::new(SerialTransport {
            path: cfg.device.clone().unwrap_or_default(),
            baud: cfg.baud,
            io_timeout: cfg.io_timeout,
        }),
        PrinterKind::Usb => Box::new(UsbTransport {
            path: cfg.device.clone().unwrap_or_default(),
        }),
        PrinterKind::Network => {
            let (host, port) = cfg
                .address
                .as_deref()
                .and_then(parse_address)
                .unwrap_or_else(|| (String::new(), 9100));
            Box::new(NetworkTransport {
                host,
                port,
                connect_timeout: cfg.connect_timeout,
                io_timeout: cfg.io_timeout,
            })
        }
        PrinterKind::None => Box::new(NoPrinter),
    }
}

/// Sends `DLE EOT n` and reads the one-byte reply; `None` if there is none or it is not a
/// status byte (bits 0 and 7 clear, bits 1 and 4 set).
fn ask<S: Read + Write>(s: &mut S, n: u8) -> Option<u8> {
    s.write_all(&[0x10, 0x04, n]).ok()?;
    s.flush().ok()?;
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            _ => return None,
        }
    }
    (b[0] & 0x93 == 0x12).then_some(b[0])
}

/// The printer's status from DLE EOT 1, 4 and (when offline) 2.
pub fn query_status<S: Read + Write>(s: &mut S) -> PrinterStatus {
    let Some(printer) = ask(s, 1) else {
        return PrinterStatus::Unknown;
    };
    // Not every printer has a roll sensor query; no answer means "no news".
    if let Some(paper) = ask(s, 4) {
        if paper & 0x60 == 0x60 {
            return PrinterStatus::PaperOut;
        }
    }
    if printer & 0x08 == 0 {
        return PrinterStatus::Ready;
    }
    match ask(s, 2) {
        Some(cause) if cause & 0x04 != 0 => PrinterStatus::CoverOpen,
        Some(cause) if cause & 0x20 != 0 => PrinterStatus::PaperOut,
        _ => PrinterStatus::Offline,
    }
}

/// The two-way print: status, bytes, status.
fn print_two_way<S: Read + Write>(s: &mut S, job: &Job) -> Result<PrinterStatus, PrintError> {
    let before = query_status(s);
    if before.is_fault() {
        return Err(PrintError::NotReady(before));
    }
    s.write_all(&job.bytes).map_err(PrintError::Io)?;
    s.flush().map_err(PrintError::Io)?;
    let after = query_status(s);
    if after.is_fault() {
        // The paper ran out or the cover opened during the slip: print it again in full
        // once the printer recovers rather than leave a torn slip as the only copy.
        return Err(PrintError::NotReady(after));
    }
    Ok(after)
}

/// Raw TCP to port 9100; one connection per slip.
pub struct NetworkTransport {
    /// Host name or IP.
    pub host: String,
    /// TCP port, usually 9100.
    pub port: u16,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Read/write deadline.
    pub io_timeout: Duration,
}

impl NetworkTransport {
    fn connect(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in (self.host.as_str(), self.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.io_timeout))?;
                    s.set_write_timeout(Some(self.io_timeout))?;
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl Transport for NetworkTransport {
    fn describe(&self) -> String {
        format!("network {}:{}", self.host, self.port)
    }
    fn status(&mut self) -> PrinterStatus {
        match self.connect() {
            Ok(mut s) => query_status(&mut s),
            Err(_) => PrinterStatus::Offline,
        }
    }
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError> {
        let mut s = self.connect().map_err(PrintError::Unreachable)?;
        print_two_way(&mut s, job)
    }
}

/// A printer on a serial port (RS-232, USB-serial); opened per slip so an unplugged and
/// replugged printer is found again.
pub struct SerialTransport {
    /// The port, e.g. `/dev/posd-printer`.
    pub path: PathBuf,
    /// Line speed.
    pub baud: u32,
    /// Read/write deadline.
    pub io_timeout: Duration,
}

impl SerialTransport {
    fn open(&self) -> io::Result<Box<dyn serialport::SerialPort>> {
        serialport::new(self.path.to_string_lossy(), self.baud)
            .timeout(self.io_timeout)
            .open()
            .map_err(io::Error::from)
            .inspect(|p| {
                // A status byte left over from an earlier session must not answer our query.
                let _ = p.clear(serialport::ClearBuffer::Input);
            })
    }
}

impl Transport for SerialTransport {
    fn describe(&self) -> String {
        format!("serial {} at {} baud", self.path.display(), self.baud)
    }
    fn status(&mut self) -> PrinterStatus {
        match self.open() {
            Ok(mut p) => query_status(&mut p),
            Err(_) => PrinterStatus::Offline,
        }
    }
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError> {
        let mut p = self.open().map_err(PrintError::Unreachable)?;
        print_two_way(&mut p, job)
    }
}

/// A USB printer-class device (`/dev/usb/lp0`). One-way: the kernel's usblp reads block
/// without a deadline, so status is only "there" (unknown) or "not there" (offline).
pub struct UsbTransport {
    /// The device node, e.g. `/dev/posd-printer`.
    pub path: PathBuf,
}

impl Transport for UsbTransport {
    fn describe(&self) -> String {
        format!("usb {}", self.path.display())
    }
    fn status(&mut self) -> PrinterStatus {
        match OpenOptions::new().write(true).open(&self.path) {
            Ok(_) => PrinterStatus::Unknown,
            Err(_) => PrinterStatus::Offline,
        }
    }
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError> {
        let mut f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(PrintError::Unreachable)?;
        f.write_all(&job.bytes).map_err(PrintError::Io)?;
        f.flush().map_err(PrintError::Io)?;
        Ok(PrinterStatus::Unknown)
    }
}

/// Slips as files: `<name>.bin` (the ESC/POS bytes) and `<name>.txt` (a preview).
pub struct FileTransport {
    /// The directory, created if missing.
    pub dir: PathBuf,
}

impl Transport for FileTransport {
    fn describe(&self) -> String {
        format!("file {}", self.dir.display())
    }
    fn status(&mut self) -> PrinterStatus {
        match std::fs::create_dir_all(&self.dir) {
            Ok(()) => PrinterStatus::Ready,
            Err(_) => PrinterStatus::Offline,
        }
    }
    fn print(&mut self, job: &Job) -> Result<PrinterStatus, PrintError> {
        std::fs::create_dir_all(&self.dir).map_err(PrintError::Unreachable)?;
        let write = |ext: &str, data: &[u8]| -> io::Result<()> {
            // Write then rename, so a crash never leaves half a slip under the final name.
            let tmp = self.dir.join(format!(".{}.{ext}.tmp", job.name));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, self.dir.join(format!("{}.{ext}", job.name)))
        };
        write("txt", job.preview.as_bytes()).map_err(PrintError::Io)?;
        write("bin", &job.bytes).map_err(PrintError::Io)?;
        Ok(PrinterStatus::Ready)
    }
}

/// `[printer] kind = "none"`.
pub struct NoPrinter;

impl Transport for NoPrinter {
    fn describe(&self) -> String {
        "none".into()
    }
    fn status(&mut self) -> PrinterStatus {
        PrinterStatus::Disabled
    }
    fn print(&mut self, _job: &Job) -> Result<PrinterStatus, PrintError> {
        Err(PrintError::NotReady(PrinterStatus::Disabled))
    }
}

enum Command {
    Print(Job, oneshot::Sender<Result<PrinterStatus, PrintError>>),
    Status(oneshot::Sender<PrinterStatus>),
}

/// The printer thread: owns the transport, serialises every use of the device, and answers
/// over oneshot channels so async callers never block. The thread ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct PrinterHandle {
    tx: std::sync::mpsc::Sender<Command>,
}

impl PrinterHandle {
    /// Starts the printer thread over `transport`.
    pub fn spawn(mut transport: Box<dyn Transport>) -> io::Result<PrinterHandle> {
        let (tx, rx) = std::sync::mpsc::channel::<Command>();
        std::thread::Builder::new()
            .name("posd-printer".into())
            .spawn(move || {
                let what = transport.describe();
                tracing::info!(printer = %what, "printer thread started");
                for cmd in rx {
                    match cmd {
                        Command::Print(job, reply) => {
                            let r = transport.print(&job);
                            let _ = reply.send(r);
                        }
                        Command::Status(reply) => {
                            let _ = reply.send(transport.status());
                        }
                    }
                }
                tracing::info!(printer = %what, "printer thread stopped");
            })?;
        Ok(PrinterHandle { tx })
    }

    /// Prints one slip on the printer thread.
    pub async fn print(&self, job: Job) -> Result<PrinterStatus, PrintError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Print(job, reply))
            .map_err(|_| PrintError::Stopped)?;
        rx.await.map_err(|_| PrintError::Stopped)?
    }

    /// Asks the printer for its status on the printer thread.
    pub async fn status(&self) -> PrinterStatus {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Status(reply)).is_err() {
            return PrinterStatus::Unknown;
        }
        rx.await.unwrap_or(PrinterStatus::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A printer on the other end of a byte stream: answers DLE EOT n from a table.
    struct Fake {
        replies: [Option<u8>; 5],
        pending: VecDeque<u8>,
        written: Vec<u8>,
    }

    impl Fake {
        fn new(r1: Option<u8>, r2: Option<u8>, r4: Option<u8>) -> Fake {
            Fake {
                replies: [None, r1, r2, None, r4],
                pending: VecDeque::new(),
                written: Vec::new(),
            }
        }
    }

    impl Write for Fake {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let [0x10, 0x04, n] = buf {
                if let Some(r) = self.replies.get(usize::from(*n)).copied().flatten() {
                    self.pending.push_back(r);
                }
                return Ok(3);
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Read for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.pending.pop_front() {
                Some(b) => {
                    buf[0] = b;
                    Ok(1)
                }
                None => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply")),
            }
        }
    }

    #[test]
    fn dle_eot_tells_faults_apart_from_unknown() {
        // Replies seen from emupos: online 0x16, offline 0x1e, paper 0x12, paper out 0x7e.
        let cases = [
            (
                Fake::new(Some(0x16), Some(0x12), Some(0x12)),
                PrinterStatus::Ready,
            ),
            (
                Fake::new(Some(0x1e), Some(0x12), Some(0x7e)),
                PrinterStatus::PaperOut,
            ),
            (
                Fake::new(Some(0x1e), Some(0x32), Some(0x12)),
                PrinterStatus::PaperOut,
            ),
            (
                Fake::new(Some(0x1e), Some(0x16), Some(0x12)),
                PrinterStatus::CoverOpen,
            ),
            (
                Fake::new(Some(0x1e), Some(0x12), Some(0x12)),
                PrinterStatus::Offline,
            ),
            (Fake::new(Some(0x1e), None, None), PrinterStatus::Offline),
            (Fake::new(Some(0x16), None, None), PrinterStatus::Ready),
            (Fake::new(None, None, None), PrinterStatus::Unknown),
            (
                Fake::new(Some(0xff), Some(0x12), Some(0x12)),
                PrinterStatus::Unknown,
            ),
        ];
        for (mut fake, want) in cases {
            assert_eq!(query_status(&mut fake), want, "replies {:x?}", fake.replies);
        }
    }

    #[test]
    fn nothing_is_sent_to_a_printer_that_is_out_of_paper() {
        let job = Job {
            slip_id: 1,
            name: "s".into(),
            bytes: b"\x1b@slip".to_vec(),
            preview: String::new(),
        };
        let mut fake = Fake::new(Some(0x1e), Some(0x12), Some(0x7e));
        let e = print_two_way(&mut fake, &job).unwrap_err();
        assert_eq!(e.status(), PrinterStatus::PaperOut);
        assert!(fake.written.is_empty());
        let mut fake = Fake::new(Some(0x16), Some(0x12), Some(0x12));
        assert_eq!(
            print_two_way(&mut fake, &job).unwrap(),
            PrinterStatus::Ready
        );
        assert_eq!(fake.written, job.bytes);
        // A printer that never answers DLE EOT still gets the slip.
        let mut fake = Fake::new(None, None, None);
        assert_eq!(
            print_two_way(&mut fake, &job).unwrap(),
            PrinterStatus::Unknown
        );
        assert_eq!(fake.written, job.bytes);
    }

    #[test]
    fn one_way_transports_report_offline_when_the_device_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut usb = UsbTransport {
            path: dir.path().join("lp0"),
        };
        assert_eq!(usb.status(), PrinterStatus::Offline);
        let job = Job {
            slip_id: 1,
            name: "s".into(),
            bytes: b"x".to_vec(),
            preview: "x".into(),
        };
        assert_eq!(
            usb.print(&job).unwrap_err().status(),
            PrinterStatus::Offline
        );
        std::fs::write(dir.path().join("lp0"), b"").unwrap();
        assert_eq!(usb.status(), PrinterStatus::Unknown);
        assert_eq!(usb.print(&job).unwrap(), PrinterStatus::Unknown);
        assert_eq!(std::fs::read(dir.path().join("lp0")).unwrap(), b"x");
        assert_eq!(
            NoPrinter.print(&job).unwrap_err().status(),
            PrinterStatus::Disabled
        );
    }

    #[test]
    fn network_printer_that_refuses_is_offline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut t = NetworkTransport {
            host: "127.0.0.1".into(),
            port,
            connect_timeout: Duration::from_millis(200),
            io_timeout: Duration::from_millis(200),
        };
        assert_eq!(t.status(), PrinterStatus::Offline);
    }
}
