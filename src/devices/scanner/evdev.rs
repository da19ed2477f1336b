//! USB HID keyboard-wedge scanners read from `/dev/input/event*`: the device is grabbed
//! exclusively (EVIOCGRAB) so the scanner's keystrokes never reach the desktop or a focused
//! window, and key codes are decoded by their position on a US keyboard, independent of the
//! keyboard layout the system has configured. Enter, keypad Enter and Tab end a code.

use std::io::{self, Read};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    interrupted, pump, sleep_unless_shutdown, FrameAssembler, ScanEvent, ScanFilter, StreamEnd,
};
use crate::devices::config::ScannerConfig;

/// Pause between polls of a non-blocking input device that has nothing to say.
const IDLE_POLL: Duration = Duration::from_millis(10);

/// `EV_KEY` from linux/input-event-codes.h.
const EV_KEY: u16 = 0x01;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTSHIFT: u16 = 54;

/// Turns key events into the bytes a scanner typed. Only key presses produce bytes; shift
/// is tracked for letters and symbols (which are rejected as codes anyway, but must not be
/// mistaken for digits).
#[derive(Debug, Default)]
pub struct KeyDecoder {
    shift: bool,
}

impl KeyDecoder {
    /// A decoder with no key held.
    pub fn new() -> KeyDecoder {
        KeyDecoder::default()
    }

    /// Feeds one `EV_KEY` event (`value` 1 = press, 0 = release, 2 = autorepeat) and returns
    /// the byte it typed, if any. Enter and keypad Enter give `\r`, Tab gives `\t`.
    pub fn key(&mut self, code: u16, value: i32) -> Option<u8> {
        if code == KEY_LEFTSHIFT || code == KEY_RIGHTSHIFT {
            self.shift = value != 0;
            return None;
        }
        if value != 1 {
            return None;
        }
        let (plain, shifted) = keymap(code)?;
        Some(if self.shift { shifted } else { plain })
    }
}

/// The US-position character of a key code, unshifted and shifted.
fn keymap(code: u16) -> Option<(u8, u8)> {
    const ROW_DIGITS: &[u8; 10] = b"1234567890";
    const ROW_SHIFTED: &[u8; 10] = b"!@#$%^&*()";
    Some(match code {
        2..=11 => {
            let i = usize::from(code - 2);
            (ROW_DIGITS[i], ROW_SHIFTED[i])
        }
        // Keypad digits do not depend on NumLock here: a scanner that sends them means digits.
        71 => (b'7', b'7'),
        72 => (b'8', b'8'),
        73 => (b'9', b'9'),
        75 => (b'4', b'4'),
        76 => (b'5', b'5'),
        77 => (b'6', b'6'),
        79 => (b'1', b'1'),
        80 => (b'2', b'2'),
        81 => (b'3', b'3'),
        82 => (b'0', b'0'),
        28 | 96 => (b'\r', b'\r'),
        15 => (b'\t', b'\t'),
        57 => (b' ', b' '),
        12 => (b'-', b'_'),
        13 => (b'=', b'+'),
        74 => (b'-', b'-'),
        78 => (b'+', b'+'),
        83 => (b'.', b'.'),
        98 => (b'/', b'/'),
        55 => (b'*', b'*'),
        _ => {
            let letter = letter(code)?;
            (letter.to_ascii_lowercase(), letter)
        }
    })
}

/// Letters by key code (QWERTY positions).
fn letter(code: u16) -> Option<u8> {
    const ROWS: [(u16, &[u8]); 3] = [(16, b"QWERTYUIOP"), (30, b"ASDFGHJKL"), (44, b"ZXCVBNM")];
    ROWS.iter().find_map(|(start, row)| {
        let i = usize::from(code.checked_sub(*start)?);
        row.get(i).copied()
    })
}

/// Adapts a grabbed input device to `Read`: key events become the typed bytes.
struct KeyStream {
    device: evdev::Device,
    decoder: KeyDecoder,
    pending: Vec<u8>,
}

impl Read for KeyStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.device.fetch_events() {
                Ok(events) => {
                    for ev in events {
                        if ev.event_type().0 == EV_KEY {
                            if let Some(b) = self.decoder.key(ev.code(), ev.value()) {
                                self.pending.push(b);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(IDLE_POLL);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
            if self.pending.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

fn open(path: &std::path::Path) -> io::Result<evdev::Device> {
    let mut device = evdev::Device::open(path)?;
    device.set_nonblocking(true)?;
    device.grab()?;
    Ok(device)
}

/// The evdev scanner thread: open and grab, read frames, reopen after an unplug.
pub fn run(
    cfg: &ScannerConfig,
    mut frames: FrameAssembler,
    mut filter: ScanFilter,
    tx: mpsc::Sender<ScanEvent>,
    shutdown: CancellationToken,
) {
    let Some(path) = cfg.device.clone() else {
        tracing::error!("[scanner] kind = \"evdev\" needs a device; no scans from the scanner");
        return;
    };
    let mut warned = false;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let device = match open(&path) {
            Ok(d) => d,
            Err(e) => {
                if !warned {
                    tracing::warn!(device = %path.display(), error = %e,
                        "scanner input device not available (or grabbed by another program), retrying");
                    warned = true;
                }
                if !sleep_unless_shutdown(cfg.reconnect_interval, &shutdown) {
                    return;
                }
                continue;
            }
        };
        warned = false;
        tracing::info!(device = %path.display(), name = device.name().unwrap_or("?"), "scanner grabbed");
        let mut stream = KeyStream {
            device,
            decoder: KeyDecoder::new(),
            pending: Vec::new(),
        };
        let end = pump(&mut stream, &mut frames, &mut filter, &tx, &shutdown);
        drop(stream);
        match end {
            StreamEnd::Shutdown | StreamEnd::ReceiverGone => return,
            StreamEnd::Eof => tracing::warn!(device = %path.display(), "scanner disconnected"),
            StreamEnd::Failed(e) => {
                tracing::warn!(device = %path.display(), error = %e, "scanner disconnected")
            }
        }
        if let Some(n) = frames.reset() {
            if !interrupted(&tx, n) {
                return;
            }
        }
        if !sleep_unless_shutdown(cfg.reconnect_interval, &shutdown) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Presses and releases each key code in turn.
    fn typed(codes: &[u16]) -> Vec<u8> {
        let mut d = KeyDecoder::new();
        let mut out = Vec::new();
        for &c in codes {
            out.extend(d.key(c, 1));
            out.extend(d.key(c, 0));
        }
        out
    }

    #[test]
    fn digit_row_and_keypad_give_digits_and_enter_tab_end_the_code() {
        // "2812" on the digit row, "90" on the keypad, then Enter / keypad Enter / Tab.
        assert_eq!(typed(&[3, 9, 2, 3, 73, 82, 28]), b"281290\r");
        assert_eq!(typed(&[3, 9, 96]), b"28\r");
        assert_eq!(typed(&[3, 9, 15]), b"28\t");
    }

    #[test]
    fn shift_and_autorepeat_do_not_produce_digits() {
        let mut d = KeyDecoder::new();
        assert_eq!(d.key(KEY_LEFTSHIFT, 1), None);
        assert_eq!(d.key(3, 1), Some(b'@'));
        assert_eq!(d.key(30, 1), Some(b'A'));
        assert_eq!(d.key(KEY_LEFTSHIFT, 0), None);
        assert_eq!(d.key(30, 1), Some(b'a'));
        assert_eq!(d.key(3, 2), None, "autorepeat is not a keystroke");
        assert_eq!(d.key(3, 0), None);
        assert_eq!(d.key(250, 1), None, "unknown keys type nothing");
    }

    #[test]
    fn letters_follow_key_positions() {
        assert_eq!(typed(&[16, 30, 44, 25, 38, 50]), b"qazplm");
    }
}
