//! The barcode scanner: bytes from a serial port, a HID keyboard-wedge device or stdin,
//! cut into frames at CR, LF or TAB, validated as payment codes, de-duplicated, and
//! delivered as [`ScanEvent`]s.
//!
//! Each source runs on a thread of its own (device reads block) and hands events to the
//! async world through a bounded `tokio::sync::mpsc` channel. The framing
//! ([`FrameAssembler`]), the validation and de-duplication ([`ScanFilter`]) and the read loop
//! ([`pump`]) are plain code over `std::io::Read`, tested on byte streams and pty pairs.
//!
//! A scan never loses, duplicates or mangles a code: partial reads are reassembled; a frame
//! left incomplete when the device vanishes is reported and discarded, never glued to the
//! next one; the same code within `dedup_window` is taken once. A full code is never logged:
//! rejected input is reported masked.
//!
//! A scanned slip is told apart from a payment code: text that is not a valid code but has the
//! shape of a `paymentRequestId` (the slip's barcode, `domain::request_id`) is delivered as
//! [`ScanEvent::Slip`], and the daemon looks that payment up instead of paying with it.
//!
//! Binding a code to the payment that is `AWAITING_CODE` is the engine's job.

pub mod evdev;
pub mod serial;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{ScannerConfig, ScannerKind};
use crate::domain::code::{mask, CodeRules, PaymentCode};
use crate::domain::request_id::looks_like_payment_request_id;

/// Events buffered between a scanner thread and the engine.
const CHANNEL_CAPACITY: usize = 32;
/// How long a blocking read waits before the thread looks at the shutdown token.
pub const READ_POLL: Duration = Duration::from_millis(100);

/// What the scanner delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEvent {
    /// A valid payment code (masked in `Debug` and `Display`). It may still be a slip's
    /// barcode when the code rules allow codes as long as a request id: the daemon checks
    /// the store before paying with anything [`looks_like_payment_request_id`] accepts.
    Code(PaymentCode),
    /// A slip's barcode: a `paymentRequestId` (not secret, not a payment code).
    Slip(String),
    /// Input that is not a payment code: the cashier-readable reason and the input masked.
    Rejected {
        /// Why, for the cashier ("too short: 12 digits, need 17–32").
        reason: String,
        /// The input with all but its first and last 4 characters starred.
        masked: String,
    },
}

/// One frame cut from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The bytes between two terminators (never empty).
    Data(Vec<u8>),
    /// More than the bound arrived without a terminator; this many bytes were dropped.
    TooLong(usize),
}

/// Cuts a byte stream into frames at CR, LF or TAB. CRLF gives one frame (empty frames are
/// skipped); bytes beyond `max_len` before a terminator turn the frame into
/// [`Frame::TooLong`], reported when its terminator arrives.
#[derive(Debug)]
pub struct FrameAssembler {
    buf: Vec<u8>,
    max_len: usize,
    overflow: Option<usize>,
}

impl FrameAssembler {
    /// An assembler accepting frames of at most `max_len` bytes.
    pub fn new(max_len: usize) -> FrameAssembler {
        FrameAssembler {
            buf: Vec::with_capacity(max_len),
            max_len,
            overflow: None,
        }
    }

    /// Feeds bytes; completed frames are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        for &b in bytes {
            if matches!(b, b'\r' | b'\n' | b'\t') {
                if let Some(n) = self.overflow.take() {
                    out.push(Frame::TooLong(n));
                } else if !self.buf.is_empty() {
                    out.push(Frame::Data(std::mem::take(&mut self.buf)));
                }
                continue;
            }
            match &mut self.overflow {
                Some(n) => *n += 1,
                None if self.buf.len() >= self.max_len => {
                    self.overflow = Some(self.buf.len() + 1);
                    self.buf.clear();
                }
                None => self.buf.push(b),
            }
        }
    }

    /// Drops an unfinished frame (the device went away). Returns its length, if any.
    pub fn reset(&mut self) -> Option<usize> {
        let n = self.overflow.take().unwrap_or(self.buf.len());
        self.buf.clear();
        (n > 0).then_some(n)
    }
}

/// Validates frames as payment codes and drops the same code seen again within the window.
pub struct ScanFilter {
    rules: CodeRules,
    window: Duration,
    max_len: usize,
    /// A digest of the last code and when it was last seen; the clear code is not kept.
    last: Option<([u8; 32], Instant)>,
}

impl ScanFilter {
    /// A filter for `rules`, de-duplicating within `window`; `max_len` is the frame bound
    /// (for the message of an over-long frame).
    pub fn new(rules: CodeRules, window: Duration, max_len: usize) -> ScanFilter {
        ScanFilter {
            rules,
            window,
            max_len,
            last: None,
        }
    }

    /// The event for a frame seen at `now`, or `None` for a repeat within the window.
    /// A repeat extends the window, so a scanner in continuous mode gives one code.
    pub fn frame(&mut self, frame: Frame, now: Instant) -> Option<ScanEvent> {
        let data = match frame {
            Frame::TooLong(n) => {
                return Some(ScanEvent::Rejected {
                    reason: format!(
                        "not a payment code: over {} characters ({n}) without an end of line; \
                         scan the customer's payment code again",
                        self.max_len
                    ),
                    masked: String::new(),
                })
            }
            Frame::Data(d) => d,
        };
        let text = String::from_utf8_lossy(&data);
        match PaymentCode::parse(&text, &self.rules) {
            Err(_) if looks_like_payment_request_id(text.trim()) => {
                let id = text.trim().to_string();
                if self.repeat(id.as_bytes(), now) {
                    tracing::debug!(slip = %id, "same slip scanned again, ignored");
                    return None;
                }
                Some(ScanEvent::Slip(id))
            }
            Err(e) => Some(ScanEvent::Rejected {
                reason: e.to_string(),
                masked: mask(text.trim()),
            }),
            Ok(code) => {
                if self.repeat(code.expose().as_bytes(), now) {
                    tracing::debug!(code = %code, "same code scanned again, ignored");
                    None
                } else {
                    Some(ScanEvent::Code(code))
                }
            }
        }
    }

    /// Whether `scan` is the last scan again within the window; remembers it either way.
    fn repeat(&mut self, scan: &[u8], now: Instant) -> bool {
        let digest: [u8; 32] = Sha256::digest(scan).into();
        let repeat = matches!(self.last, Some((d, t))
            if d == digest && now.saturating_duration_since(t) < self.window);
        self.last = Some((digest, now));
        repeat
    }
}

/// Why [`pump`] returned.
#[derive(Debug)]
pub enum StreamEnd {
    /// The stream ended (stdin closed, device gone).
    Eof,
    /// A read failed (device unplugged).
    Failed(io::Error),
    /// The shutdown token was cancelled.
    Shutdown,
    /// Nobody listens any more.
    ReceiverGone,
}

/// Reads `reader` until it ends, fails or shutdown, sending events for every frame. Read
/// timeouts (`TimedOut`, `WouldBlock`) are the moments it checks for shutdown.
pub fn pump<R: Read + ?Sized>(
    reader: &mut R,
    frames: &mut FrameAssembler,
    filter: &mut ScanFilter,
    tx: &mpsc::Sender<ScanEvent>,
    shutdown: &CancellationToken,
) -> StreamEnd {
    let mut buf = [0u8; 256];
    let mut out = Vec::new();
    loop {
        if shutdown.is_cancelled() {
            return StreamEnd::Shutdown;
        }
        match reader.read(&mut buf) {
            Ok(0) => return StreamEnd::Eof,
            Ok(n) => {
                frames.push(&buf[..n], &mut out);
                for frame in out.drain(..) {
                    if let Some(ev) = filter.frame(frame, Instant::now()) {
                        if !deliver(tx, ev) {
                            return StreamEnd::ReceiverGone;
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return StreamEnd::Failed(e),
        }
    }
}

/// One line about a scanned slip's payment, for the cashier: id, state, amount, refunds,
/// the gateway's payment id and why a human must act, when there is such a reason.
pub fn slip_summary(p: &crate::store::payments::PaymentRecord) -> String {
    let mut s = format!(
        "slip {}: {} {} {}",
        p.payment_request_id,
        p.state,
        p.amount.currency().code(),
        p.amount.to_decimal()
    );
    if p.refunded.minor() > 0 {
        s.push_str(&format!(", refunded {}", p.refunded.to_decimal()));
    }
    if let Some(id) = &p.payment_id {
        s.push_str(&format!(", paymentId {id}"));
    }
    if let Some(r) = &p.attention_reason {
        s.push_str(&format!(", needs attention: {r}"));
    }
    s
}

/// Sends an event from a scanner thread; false if the receiver is gone.
fn deliver(tx: &mpsc::Sender<ScanEvent>, ev: ScanEvent) -> bool {
    match &ev {
        ScanEvent::Code(c) => tracing::info!(code = %c, "scan"),
        ScanEvent::Slip(id) => tracing::info!(slip = %id, "slip scanned"),
        ScanEvent::Rejected { reason, masked } => {
            tracing::warn!(%reason, input = %masked, "scan rejected")
        }
    }
    tx.blocking_send(ev).is_ok()
}

/// Reports a frame cut short by the device going away.
fn interrupted(tx: &mpsc::Sender<ScanEvent>, n: usize) -> bool {
    deliver(
        tx,
        ScanEvent::Rejected {
            reason: format!(
                "scan interrupted: the scanner went away after {n} characters; scan the \
                 customer's payment code again"
            ),
            masked: String::new(),
        },
    )
}

/// Sleeps `d` in short steps; false if shutdown came first.
fn sleep_unless_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shutdown.is_cancelled() {
            return false;
        }
        std::thread::sleep(READ_POLL.min(until.saturating_duration_since(Instant::now())));
    }
    !shutdown.is_cancelled()
}

/// Starts the scanner `[scanner]` describes and returns its events. Call inside a tokio
/// runtime. The channel closes when the scanner is done for good: at shutdown, or when
/// stdin ends; `kind = "none"` keeps it open, silent, until shutdown. Serial and evdev
/// scanners reconnect inside, for as long as the daemon runs.
pub fn spawn(
    cfg: &ScannerConfig,
    rules: &CodeRules,
    shutdown: CancellationToken,
) -> mpsc::Receiver<ScanEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let filter = ScanFilter::new(rules.clone(), cfg.dedup_window, cfg.max_frame_len);
    let frames = FrameAssembler::new(cfg.max_frame_len);
    let cfg = cfg.clone();
    let started = match cfg.kind {
        ScannerKind::None => {
            tokio::spawn(async move {
                shutdown.cancelled().await;
                drop(tx);
            });
            return rx;
        }
        ScannerKind::Stdin => std::thread::Builder::new()
            .name("posd-scanner".into())
            .spawn(move || run_stdin(frames, filter, tx, shutdown)),
        ScannerKind::Serial => std::thread::Builder::new()
            .name("posd-scanner".into())
            .spawn(move || serial::run(&cfg, frames, filter, tx, shutdown)),
        ScannerKind::Evdev => std::thread::Builder::new()
            .name("posd-scanner".into())
            .spawn(move || evdev::run(&cfg, frames, filter, tx, shutdown)),
    };
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the scanner thread; scans only via the API");
    }
    rx
}

/// Standard input: one code per line, for the sandbox and trials. Ends at end of input.
fn run_stdin(
    mut frames: FrameAssembler,
    mut filter: ScanFilter,
    tx: mpsc::Sender<ScanEvent>,
    shutdown: CancellationToken,
) {
    tracing::info!("reading payment codes from standard input");
    let stdin = io::stdin();
    let mut lock = stdin.lock();
    let end = pump(&mut lock, &mut frames, &mut filter, &tx, &shutdown);
    // A last line without a newline still counts when stdin ends.
    let mut out = Vec::new();
    frames.push(b"\n", &mut out);
    for frame in out {
        if let Some(ev) = filter.frame(frame, Instant::now()) {
            deliver(&tx, ev);
        }
    }
    tracing::info!(?end, "standard input closed, no more scans from it");
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "281234567890123456";
    const B: &str = "259876543210987654";

    fn frames_of(chunks: &[&[u8]], max: usize) -> Vec<Frame> {
        let mut asm = FrameAssembler::new(max);
        let mut out = Vec::new();
        for c in chunks {
            asm.push(c, &mut out);
        }
        out
    }

    fn data(s: &str) -> Frame {
        Frame::Data(s.as_bytes().to_vec())
    }

    #[test]
    fn terminators_cr_lf_crlf_tab_each_end_one_frame() {
        let input = format!("{A}\r{B}\n{A}\r\n{B}\t\r\n\n");
        assert_eq!(
            frames_of(&[input.as_bytes()], 64),
            vec![data(A), data(B), data(A), data(B)]
        );
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let input = format!("{A}\r\n{B}\r");
        let bytes = input.as_bytes();
        for cut in 1..bytes.len() {
            let (x, y) = bytes.split_at(cut);
            assert_eq!(
                frames_of(&[x, y], 64),
                vec![data(A), data(B)],
                "cut at {cut}"
            );
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(frames_of(&one_by_one, 64), vec![data(A), data(B)]);
    }

    #[test]
    fn over_long_frames_are_dropped_whole_and_the_next_one_is_intact() {
        let long = "2".repeat(100);
        let input = format!("{long}\r{A}\r");
        assert_eq!(
            frames_of(&[input.as_bytes()], 64),
            vec![Frame::TooLong(100), data(A)]
        );
        // Exactly at the bound is fine.
        let at = "2".repeat(64);
        assert_eq!(
            frames_of(&[format!("{at}\r").as_bytes()], 64),
            vec![data(&at)]
        );
        let mut asm = FrameAssembler::new(64);
        let mut out = Vec::new();
        asm.push(b"2812345", &mut out);
        assert_eq!(asm.reset(), Some(7));
        asm.push(format!("{A}\r").as_bytes(), &mut out);
        assert_eq!(out, vec![data(A)], "no glued partial frame");
    }

    #[test]
    fn filter_validates_and_dedups_within_the_window() {
        let mut f = ScanFilter::new(CodeRules::default(), Duration::from_secs(2), 64);
        let t0 = Instant::now();
        let code = |e: Option<ScanEvent>| match e {
            Some(ScanEvent::Code(c)) => c.expose().to_string(),
            other => panic!("expected a code, got {other:?}"),
        };
        assert_eq!(code(f.frame(data(A), t0)), A);
        assert_eq!(f.frame(data(A), t0 + Duration::from_millis(500)), None);
        // Continuous mode: every repeat extends the window.
        assert_eq!(f.frame(data(A), t0 + Duration::from_millis(2400)), None);
        assert_eq!(code(f.frame(data(A), t0 + Duration::from_millis(4500))), A);
        assert_eq!(code(f.frame(data(B), t0 + Duration::from_millis(4600))), B);
        assert_eq!(code(f.frame(data(A), t0 + Duration::from_millis(4700))), A);
        match f.frame(data("2812345678 garbage"), t0) {
            Some(ScanEvent::Rejected { reason, masked }) => {
                assert!(reason.starts_with("not a payment code"), "{reason}");
                assert_eq!(masked, "2812**********bage");
            }
            other => panic!("{other:?}"),
        }
        match f.frame(Frame::TooLong(300), t0) {
            Some(ScanEvent::Rejected { reason, .. }) => {
                assert!(reason.contains("over 64 characters (300)"))
            }
            other => panic!("{other:?}"),
        }
        let mut off = ScanFilter::new(CodeRules::default(), Duration::ZERO, 64);
        assert!(off.frame(data(A), t0).is_some() && off.frame(data(A), t0).is_some());
    }

    #[test]
    fn a_slip_barcode_is_a_slip_not_a_code_nor_a_rejection() {
        let mut f = ScanFilter::new(CodeRules::default(), Duration::from_secs(2), 64);
        let t0 = Instant::now();
        let id = "126112114030500000100004200000012347";
        let old = "20261121140305T000100000000123400000042123456";
        assert_eq!(f.frame(data(id), t0), Some(ScanEvent::Slip(id.to_string())));
        assert_eq!(f.frame(data(id), t0), None, "repeat within the window");
        assert_eq!(
            f.frame(data(old), t0),
            Some(ScanEvent::Slip(old.to_string()))
        );
        // A payment code is still a code, and 36 digits that are no request id are rejected.
        assert!(matches!(f.frame(data(A), t0), Some(ScanEvent::Code(_))));
        assert!(matches!(
            f.frame(data(&"9".repeat(36)), t0),
            Some(ScanEvent::Rejected { .. })
        ));
        // Codes as long as a request id: the code wins here, the daemon checks the store.
        let rules = CodeRules {
            max_len: 40,
            prefixes: vec!["12".into()],
            ..CodeRules::default()
        };
        let mut long = ScanFilter::new(rules, Duration::from_secs(2), 64);
        assert!(matches!(long.frame(data(id), t0), Some(ScanEvent::Code(_))));
    }

    #[test]
    fn rejected_input_never_carries_a_full_code() {
        let mut f = ScanFilter::new(CodeRules::default(), Duration::from_secs(2), 64);
        let long = "2".repeat(40);
        let Some(ScanEvent::Rejected { masked, .. }) = f.frame(data(&long), Instant::now()) else {
            panic!("40 digits must be rejected");
        };
        assert!(!masked.contains(&long[..10]));
    }

    #[test]
    fn pump_reads_a_stream_to_its_end() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        let input = format!("{A}\r\nhello\r\n{A}\r\n");
        let mut reader = io::Cursor::new(input.into_bytes());
        let mut f = ScanFilter::new(CodeRules::default(), Duration::from_secs(2), 64);
        let end = pump(
            &mut reader,
            &mut FrameAssembler::new(64),
            &mut f,
            &tx,
            &CancellationToken::new(),
        );
        assert!(matches!(end, StreamEnd::Eof));
        drop(tx);
        let got: Vec<ScanEvent> = rt.block_on(async {
            let mut v = Vec::new();
            while let Some(e) = rx.recv().await {
                v.push(e);
            }
            v
        });
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], ScanEvent::Code(c) if c.expose() == A));
        assert!(
            matches!(&got[1], ScanEvent::Rejected { reason, .. } if reason.contains("letters"))
        );
    }
}
