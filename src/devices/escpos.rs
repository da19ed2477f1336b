//! The ESC/POS renderer: laid-out receipt lines plus a printer profile to the bytes a
//! printer prints, and [`dump`], which shows such bytes as readable commands for tests and
//! snapshots.
//!
//! The `escpos` crate builds the standard commands. Three of its gaps are filled here: it has no
//! CODE128, so CODE128 is sent as raw `GS k 73` with code set C packed here (two digits per byte;
//! `{C` followed by ASCII digits would print a different, valid barcode) and its width computed
//! from the profile before printing ([`plan_barcode`]); the cash drawer pulse is the full 5-byte
//! `ESC p m t1 t2`; and text is cleaned up to the profile's encoding first, because the crate
//! silently sends an unencodable character as UTF-8.

use std::sync::{Arc, Mutex};

use escpos::driver::Driver;
use escpos::printer::Printer;
use escpos::printer_options::PrinterOptions;
use escpos::utils::{
    Encoder, JustifyMode, Protocol, QRCodeCorrectionLevel, QRCodeModel, QRCodeOption,
};

use super::profile::{Cut, Profile, TextEncoding};
use super::receipt::{Align, Line};

/// Height of the CODE128 bars in dots (10 mm at 203 dpi).
const BARCODE_HEIGHT: u8 = 80;
/// Quiet zone on each side of a CODE128 symbol, in modules (the standard asks for 10).
pub const QUIET_ZONE_MODULES: u32 = 10;
/// The widest CODE128 module used even when a wider one would fit (3 dots reads well).
pub const MAX_MODULE: u8 = 3;
/// The narrowest CODE128 module printed, whatever a profile allows: a 1-dot module
/// (0.125 mm) does not scan reliably, and Epson-class firmware accepts 2 to 6 only.
pub const MIN_MODULE: u8 = 2;
/// What replaces a character the printer's encoding cannot print.
const REPLACEMENT: char = '?';

/// A `Driver` that keeps the bytes in memory; the renderer never touches a device.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<u8>>>);

impl Driver for Collect {
    fn name(&self) -> String {
        "memory".into()
    }
    fn write(&self, data: &[u8]) -> escpos::errors::Result<()> {
        // A poisoned lock means a panic inside this module's own short push; keep the bytes.
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(())
    }
    fn read(&self, _buf: &mut [u8]) -> escpos::errors::Result<usize> {
        Ok(0)
    }
    fn flush(&self) -> escpos::errors::Result<()> {
        Ok(())
    }
}

/// Renders laid-out lines to ESC/POS bytes for one printer profile: `ESC @`, the Chinese
/// mode if the profile wants it, the lines, feed and cut.
pub fn render(lines: &[Line], profile: &Profile) -> Vec<u8> {
    match try_render(lines, profile) {
        Ok(bytes) => bytes,
        Err(e) => {
            // Every input is cleaned up before it reaches the crate, so this is a bug in this
            // module. Fall back to plain text so the slip still prints.
            tracing::error!(error = %e, "escpos renderer failed, printing plain text");
            plain(lines, profile)
        }
    }
}

fn try_render(lines: &[Line], profile: &Profile) -> escpos::errors::Result<Vec<u8>> {
    let sink = Collect::default();
    let protocol = Protocol::new(Encoder::new(profile.encoding.codec()));
    let width = u8::try_from(profile.width).unwrap_or(u8::MAX);
    let mut p = Printer::new(
        sink.clone(),
        protocol,
        Some(PrinterOptions::new(None, None, width)),
    );
    p.init()?;
    if profile.kanji_mode {
        // FS &: enter the double-byte mode; the crate has no command for it.
        p.custom(&[0x1c, b'&'])?;
    }
    for line in lines {
        match line {
            Line::Text {
                text,
                align,
                bold,
                big,
            } => {
                p.justify(justify(*align))?;
                if *bold {
                    p.bold(true)?;
                }
                if *big {
                    p.size(2, 2)?;
                }
                p.write(&printable(text, profile.encoding))?;
                p.write("\n")?;
                if *big {
                    p.reset_size()?;
                }
                if *bold {
                    p.bold(false)?;
                }
            }
            Line::Blank => {
                p.write("\n")?;
            }
            Line::Barcode(data) => {
                p.justify(JustifyMode::CENTER)?;
                match plan_barcode(data, profile) {
                    BarcodePlan::Code128 { command, .. } => {
                        p.custom(&command)?;
                    }
                    BarcodePlan::Qr => {
                        // Too wide for CODE128 on this head: a QR code still lets the back
                        // office scan the id; the text line carries it too.
                        p.qrcode_option(
                            &printable(data, TextEncoding::Utf8),
                            QRCodeOption::new(QRCodeModel::Model2, 4, QRCodeCorrectionLevel::M),
                        )?;
                    }
                    BarcodePlan::TextOnly => {}
                }
                p.justify(JustifyMode::LEFT)?;
            }
        }
    }
    p.justify(JustifyMode::LEFT)?;
    p.feeds(profile.feed_before_cut)?;
    // GS V m n with m = 65 (full) or 66 (partial): feed n dots, then cut. The crate's own
    // `partial_cut` sends `GS V A 1`, which is a full cut after a 1-dot feed.
    match profile.cut {
        Cut::Full => {
            p.custom(&[0x1d, b'V', 65, 0])?;
        }
        Cut::Partial => {
            p.custom(&[0x1d, b'V', 66, 0])?;
        }
        Cut::None => {}
    }
    p.print()?;
    let bytes = std::mem::take(&mut *sink.0.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(bytes)
}

/// The fallback when the crate fails: the text lines, LF-separated, cleaned to the encoding.
fn plain(lines: &[Line], profile: &Profile) -> Vec<u8> {
    let mut out = vec![0x1b, b'@'];
    let text: String = super::receipt::to_text(lines, profile.width)
        .lines()
        .map(|l| printable(l, profile.encoding) + "\n")
        .collect();
    let (bytes, _, _) = profile.encoding.codec().encode(&text);
    out.extend_from_slice(&bytes);
    out.extend_from_slice(&[b'\n'; 4]);
    out
}

fn justify(a: Align) -> JustifyMode {
    match a {
        Align::Left => JustifyMode::LEFT,
        Align::Center => JustifyMode::CENTER,
    }
}

/// The cash drawer pulse for the profile's drawer port (`ESC p m t1 t2`), or `None` if the
/// profile has no drawer. The `escpos` crate's own command is 3 bytes and swallows the next
/// two bytes of the slip.
pub fn drawer_kick(profile: &Profile) -> Option<Vec<u8>> {
    let d = profile.drawer?;
    let m = if d.pin == 5 { 1 } else { 0 };
    let t = |ms: u16| u8::try_from(ms.div_ceil(2)).unwrap_or(u8::MAX);
    Some(vec![0x1b, b'p', m, t(d.on_ms), t(d.off_ms)])
}

/// Cleans text up to what `encoding` can print: control characters are dropped, common
/// typographic characters are replaced by ASCII look-alikes, and anything else the encoding
/// cannot encode becomes `?`. The result always encodes without loss, so nothing reaches
/// the printer as raw UTF-8 on a GB18030, GBK or Big5 printer.
pub fn printable(text: &str, encoding: TextEncoding) -> String {
    let codec = encoding.codec();
    let mut out = String::with_capacity(text.len());
    let mut buf = [0u8; 4];
    let encodable = |s: &str| !codec.encode(s).2;
    for c in text.chars() {
        if c.is_control() {
            continue;
        }
        if c.is_ascii() || encodable(c.encode_utf8(&mut buf)) {
            out.push(c);
            continue;
        }
        let stand_in = match c {
            '\u{2018}' | '\u{2019}' => "'",
            '\u{201c}' | '\u{201d}' => "\"",
            '\u{2013}' | '\u{2014}' | '\u{2212}' => "-",
            '\u{2026}' => "...",
            '\u{a5}' => "\u{ffe5}",
            '\u{a0}' => " ",
            _ => "",
        };
        if !stand_in.is_empty() && encodable(stand_in) {
            out.push_str(stand_in);
        } else {
            out.push(REPLACEMENT);
        }
    }
    out
}

/// How a slip's identifier is printed on one profile, decided before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BarcodePlan {
    /// CODE128: the full command (`GS w`, `GS h`, `GS H 0`, `GS k 73 n data`), the module
    /// width in dots and the symbol's width in dots with its quiet zones.
    Code128 {
        /// The bytes to send.
        command: Vec<u8>,
        /// Dots per module.
        module: u8,
        /// Width of symbol plus quiet zones, in dots; never more than the profile's `dots`.
        dots: u32,
    },
    /// A QR code of the same value: CODE128 does not fit the head.
    Qr,
    /// Neither fits or the printer draws neither: the text line alone carries the id.
    TextOnly,
}

/// Chooses CODE128, QR or text only for `data` on `profile`: CODE128 at the widest module
/// from [`MIN_MODULE`] (or the profile's own minimum, if higher) up to [`MAX_MODULE`] whose
/// symbol with 10-module quiet zones fits `profile.dots`; otherwise a QR code if the printer
/// draws one; otherwise nothing but the text line.
pub fn plan_barcode(data: &str, profile: &Profile) -> BarcodePlan {
    if let Some((command, module, dots)) = code128_command(data, profile) {
        return BarcodePlan::Code128 {
            command,
            module,
            dots,
        };
    }
    if profile.qr && !data.is_empty() {
        BarcodePlan::Qr
    } else {
        BarcodePlan::TextOnly
    }
}

/// Modules of a CODE128 symbol of `symbols` symbol characters (start, data, code switches,
/// check) with its stop pattern and both quiet zones: 11·symbols + 13 + 2·10.
pub fn code128_modules(symbols: u32) -> u32 {
    symbols * 11 + 13 + 2 * QUIET_ZONE_MODULES
}

/// A CODE128 symbol as ESC/POS data for `GS k 73`. An all-digit, even-length identifier (the
/// 36-digit `paymentRequestId`) goes out as `{C` and one byte per digit pair, valued 0–99;
/// other text uses code set B with set C for long digit runs. Returns the data bytes and the
/// number of symbol characters (start, data, code switches and check; the stop is
/// separate), or `None` for text CODE128 cannot carry.
///
/// Set C values 16 then 4, 5 or 20 are the bytes DLE EOT / DLE ENQ / DLE DC4: printers may
/// take them for real-time commands inside barcode data. Such data is packed with the digit
/// pairs shifted by one (the first and last digit in set B), and only if that still holds the
/// pattern, in set B alone. Every packing is decoded back and compared before it is used, so
/// a wrong packing never reaches paper.
pub fn code128_data(data: &str) -> Option<(Vec<u8>, u32)> {
    if data.is_empty() || !data.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let checked = |(payload, symbols): (Vec<u8>, u32)| {
        (decode_code128(&payload).as_deref() == Some(data) && !real_time_bytes(&payload))
            .then_some((payload, symbols))
    };
    let digits = data.bytes().all(|b| b.is_ascii_digit());
    if digits && data.len() % 2 == 0 {
        if let Some(p) = checked(set_c(b"", data.as_bytes(), b"")) {
            return Some(p);
        }
        if data.len() >= 4 {
            let b = data.as_bytes();
            let (first, middle, last) = (&b[..1], &b[1..b.len() - 1], &b[b.len() - 1..]);
            if let Some(p) = checked(set_c(first, middle, last)) {
                return Some(p);
            }
        }
    } else if let Some(p) = checked(code128_packed(data)) {
        return Some(p);
    }
    checked(set_b(data))
}

/// `{C` + digit pairs, with `head` before it and `tail` after it in set B.
fn set_c(head: &[u8], pairs: &[u8], tail: &[u8]) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(pairs.len() / 2 + 8);
    let mut symbols = 2u32; // start and check
    if !head.is_empty() {
        out.extend_from_slice(b"{B");
        out.extend_from_slice(head);
        symbols += u32::try_from(head.len()).unwrap_or(u32::MAX / 4) + 1;
    }
    out.extend_from_slice(b"{C");
    for pair in pairs.chunks_exact(2) {
        out.push((pair[0] - b'0') * 10 + (pair[1] - b'0'));
        symbols += 1;
    }
    if !tail.is_empty() {
        out.extend_from_slice(b"{B");
        out.extend_from_slice(tail);
        symbols += u32::try_from(tail.len()).unwrap_or(u32::MAX / 4) + 1;
    }
    (out, symbols)
}

/// All of `data` in code set B (`{` doubled).
fn set_b(data: &str) -> (Vec<u8>, u32) {
    let mut out = b"{B".to_vec();
    for b in data.bytes() {
        if b == b'{' {
            out.push(b'{');
        }
        out.push(b);
    }
    let symbols = 2 + u32::try_from(data.len()).unwrap_or(u32::MAX / 2);
    (out, symbols)
}

/// Whether `GS k` data holds DLE followed by EOT, ENQ or DC4.
fn real_time_bytes(payload: &[u8]) -> bool {
    payload
        .windows(2)
        .any(|w| w[0] == 0x10 && matches!(w[1], 0x04 | 0x05 | 0x14))
}

/// Mixed text: code set B, with set C for digit runs of six or more (four at the end).
fn code128_packed(data: &str) -> (Vec<u8>, u32) {
    let bytes = data.as_bytes();
    let digit_run = |from: usize| {
        bytes[from..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut symbols = 2u32; // start and check
    let mut i = 0;
    let mut set_c = {
        let run = digit_run(0);
        run >= 4 || (run == bytes.len() && run >= 2 && run % 2 == 0)
    };
    out.extend_from_slice(if set_c { b"{C" } else { b"{B" });
    while i < bytes.len() {
        if set_c {
            if digit_run(i) >= 2 {
                out.push((bytes[i] - b'0') * 10 + (bytes[i + 1] - b'0'));
                symbols += 1;
                i += 2;
                continue;
            }
            out.extend_from_slice(b"{B");
            symbols += 1;
            set_c = false;
            continue;
        }
        let run = digit_run(i);
        let at_end = i + run == bytes.len();
        if run >= 6 || (at_end && run >= 4) {
            // An odd run keeps its first digit in set B so set C takes whole pairs.
            if run % 2 == 1 {
                out.push(bytes[i]);
                symbols += 1;
                i += 1;
            }
            out.extend_from_slice(b"{C");
            symbols += 1;
            set_c = true;
            continue;
        }
        if bytes[i] == b'{' {
            out.extend_from_slice(b"{{");
        } else {
            out.push(bytes[i]);
        }
        symbols += 1;
        i += 1;
    }
    (out, symbols)
}

/// The full barcode command (`GS w`, `GS h`, `GS H 0`, `GS k 73 n data`) with the widest
/// module up to [`MAX_MODULE`] that fits the paper, the module and the width in dots; `None`
/// if the profile has no CODE128 or the symbol does not fit even at the narrowest module.
pub fn code128_command(data: &str, profile: &Profile) -> Option<(Vec<u8>, u8, u32)> {
    if !profile.code128 {
        return None;
    }
    let (payload, symbols) = code128_data(data)?;
    let n = u8::try_from(payload.len()).ok()?;
    let modules = code128_modules(symbols);
    let narrowest = profile.min_module.max(MIN_MODULE);
    let module = (narrowest..=MAX_MODULE.max(narrowest))
        .rev()
        .find(|m| modules * u32::from(*m) <= profile.dots)?;
    let mut cmd = vec![
        0x1d,
        b'w',
        module,
        0x1d,
        b'h',
        BARCODE_HEIGHT,
        0x1d,
        b'H',
        0,
        0x1d,
        b'k',
        73,
        n,
    ];
    cmd.extend_from_slice(&payload);
    Some((cmd, module, modules * u32::from(module)))
}

/// Decodes `GS k 73` data back to the text it encodes (code sets B and C only, as
/// [`code128_data`] writes them). Used by tests to read the barcode back out of the bytes.
pub fn decode_code128(payload: &[u8]) -> Option<String> {
    let mut out = String::new();
    let mut set_c = false;
    let mut i = 0;
    while i < payload.len() {
        if payload[i] == b'{' {
            match payload.get(i + 1)? {
                b'B' => set_c = false,
                b'C' => set_c = true,
                b'{' if !set_c => out.push('{'),
                _ => return None,
            }
            i += 2;
            continue;
        }
        if set_c {
            if payload[i] > 99 {
                return None;
            }
            out.push_str(&format!("{:02}", payload[i]));
        } else {
            out.push(payload[i] as char);
        }
        i += 1;
    }
    Some(out)
}

/// Shows ESC/POS bytes as one command or text run per line, losslessly: the commands the
/// renderer emits by name with their parameters, text decoded with `encoding`, anything
/// else as hex. The snapshot format of receipt tests.
pub fn dump(bytes: &[u8], encoding: TextEncoding) -> String {
    let mut out = String::new();
    let mut i = 0;
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let (name, len): (&str, usize) = match rest {
            [0x1b, b'@', ..] => ("ESC @", 2),
            [0x1c, b'&', ..] => ("FS &", 2),
            [0x1b, b'a', ..] => ("ESC a", 3),
            [0x1b, b'E', ..] => ("ESC E", 3),
            [0x1b, b'd', ..] => ("ESC d", 3),
            [0x1b, b'p', ..] => ("ESC p", 5),
            [0x1d, b'!', ..] => ("GS !", 3),
            [0x1d, b'w', ..] => ("GS w", 3),
            [0x1d, b'h', ..] => ("GS h", 3),
            [0x1d, b'H', ..] => ("GS H", 3),
            [0x1d, b'V', 65 | 66, ..] => ("GS V", 4),
            [0x1d, b'V', ..] => ("GS V", 3),
            [0x1d, b'k', 73, n, ..] => {
                let end = (4 + usize::from(*n)).min(rest.len());
                let data = decode_code128(&rest[4..end]).unwrap_or_else(|| "?".into());
                out.push_str(&format!(
                    "GS k CODE128 {:?} [{}]\n",
                    data,
                    hex(&rest[3..end])
                ));
                i += end;
                continue;
            }
            [0x1d, b'(', b'k', pl, ph, ..] => {
                let len = 5 + usize::from(*pl) + 256 * usize::from(*ph);
                ("GS ( k", len)
            }
            [b'\n', ..] => ("LF", 1),
            [b, ..] if *b < 0x20 || *b == 0x7f => ("BYTE", 1),
            _ => {
                let end = rest
                    .iter()
                    .position(|b| *b < 0x20 || *b == 0x7f)
                    .unwrap_or(rest.len());
                let (text, _, bad) = encoding.codec().decode(&rest[..end]);
                if bad {
                    out.push_str(&format!("UNDECODABLE [{}]\n", hex(&rest[..end])));
                } else {
                    out.push_str(&format!("TEXT {text:?}\n"));
                }
                i += end;
                continue;
            }
        };
        let len = len.min(rest.len());
        out.push_str(name);
        let params = if name == "BYTE" {
            &rest[..1]
        } else {
            &rest[name_len(name)..len]
        };
        if !params.is_empty() {
            out.push(' ');
            out.push_str(&hex(params));
        }
        out.push('\n');
        i += len;
    }
    out
}

/// Bytes of the command itself (not its parameters) for the names [`dump`] knows.
fn name_len(name: &str) -> usize {
    match name {
        "LF" | "BYTE" => 1,
        "GS ( k" => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::receipt::{layout, tests::sample, SlipKind};

    fn p80() -> Profile {
        Profile::load("generic-80mm").unwrap()
    }

    /// A 36-digit paymentRequestId of the current layout.
    const ID: &str = "126112114030500000100004200000012347";
    /// A 45-character id of the older layout, still in existing databases.
    const OLD_ID: &str = "20261121140305T000100000000123400000042123456";

    #[test]
    fn code128_round_trips_and_packs_digits() {
        for s in [
            ID,
            OLD_ID,
            "12",
            "123",
            "ABC-123456",
            "A{B}",
            "9999999999999999999999999999999999999999999999999999999999999999",
            "R20261121140305T00010000000012340000004212345",
        ] {
            let (payload, symbols) = code128_data(s).unwrap();
            assert_eq!(decode_code128(&payload).as_deref(), Some(s), "{s}");
            assert!(symbols as usize <= s.len() + 4);
        }
        // The 36-digit id: {C and 18 bytes valued 0–99, one per digit pair.
        let (payload, symbols) = code128_data(ID).unwrap();
        let mut want = b"{C".to_vec();
        want.extend([
            12, 61, 12, 11, 40, 30, 50, 0, 0, 10, 0, 4, 20, 0, 0, 1, 23, 47,
        ]);
        assert_eq!(payload, want);
        assert_eq!(symbols, 20);
        let (_, symbols) = code128_data(OLD_ID).unwrap();
        // 7 pairs, B, T, C, 15 pairs, plus start and check.
        assert_eq!(symbols, 27);
        assert_eq!(code128_data("é"), None);
        assert_eq!(code128_data(""), None);
        let (payload, _) = code128_data("17041234").unwrap();
        assert_eq!(payload, [b'{', b'C', 17, 4, 12, 34]);
    }

    #[test]
    fn real_time_command_bytes_never_reach_the_barcode_data() {
        // "1604" in set C would be the bytes DLE EOT: the pairs are shifted by one digit.
        let (payload, symbols) = code128_data("16041234").unwrap();
        assert_eq!(
            payload,
            [b'{', b'B', b'1', b'{', b'C', 60, 41, 23, b'{', b'B', b'4']
        );
        // Start B, "1", Code C, three pairs, Code B, "4", check.
        assert_eq!(symbols, 9);
        // Shifted, "1605916059" still holds DLE ENQ: set B alone.
        let (payload, _) = code128_data("1605916059").unwrap();
        assert_eq!(payload, b"{B1605916059");
        // "16" not followed by 04, 05 or 20 is harmless.
        let (payload, _) = code128_data("116052").unwrap();
        assert_eq!(payload, [b'{', b'C', 11, 60, 52]);
        for s in ["16041234", "1605916059", "116052", "1620"] {
            let (payload, _) = code128_data(s).unwrap();
            assert_eq!(decode_code128(&payload).as_deref(), Some(s));
            assert!(!real_time_bytes(&payload), "{s}: {payload:?}");
        }
    }

    /// The pitfall the self-check guards: `{C` followed by ASCII digits is a valid barcode of
    /// other digits. Decoding such a payload shows it, and a packer that produced it would be
    /// refused.
    #[test]
    fn wrong_set_c_packing_is_caught() {
        let wrong: Vec<u8> = [b"{C".as_slice(), b"12345678"].concat();
        assert_eq!(
            decode_code128(&wrong).as_deref(),
            Some("4950515253545556"),
            "ASCII digits after {{C are pairs 49, 50, ..."
        );
        assert_ne!(decode_code128(&wrong).as_deref(), Some("12345678"));
        // The right packing decodes to the id; the renderer compares before printing.
        let (right, _) = code128_data("12345678").unwrap();
        assert_eq!(right, [b'{', b'C', 12, 34, 56, 78]);
        assert_eq!(decode_code128(&right).as_deref(), Some("12345678"));
        // Values above 99 are not set C at all.
        assert_eq!(decode_code128(&[b'{', b'C', 100]), None);
    }

    #[test]
    fn width_is_computed_from_the_profile_before_printing() {
        // 20 symbols: 20 * 11 + 13 + 20 quiet = 253 modules.
        assert_eq!(code128_modules(20), 253);
        let mut p = p80();
        let BarcodePlan::Code128 {
            command,
            module,
            dots,
        } = plan_barcode(ID, &p)
        else {
            panic!("CODE128 fits 576 dots");
        };
        assert_eq!((module, dots), (2, 506));
        assert_eq!(&command[..3], &[0x1d, b'w', 2]);
        // Short data gets the wider 3-dot module.
        let BarcodePlan::Code128 { module, .. } = plan_barcode("ABC-123456", &p) else {
            panic!()
        };
        assert_eq!(module, 3);
        // 512 dots still fit; 505 do not, and the QR code takes over.
        p.dots = 512;
        assert!(matches!(
            plan_barcode(ID, &p),
            BarcodePlan::Code128 { dots: 506, .. }
        ));
        p.dots = 505;
        assert_eq!(plan_barcode(ID, &p), BarcodePlan::Qr);
        // A profile that allows 1-dot modules still gets 2 dots at least.
        p.min_module = 1;
        assert_eq!(plan_barcode(ID, &p), BarcodePlan::Qr);
        // The older 45-character ids need 660 dots: QR on 576 dots.
        p.dots = 576;
        assert_eq!(plan_barcode(OLD_ID, &p), BarcodePlan::Qr);
        p.qr = false;
        assert_eq!(plan_barcode(OLD_ID, &p), BarcodePlan::TextOnly);
        p.code128 = false;
        p.qr = true;
        assert_eq!(plan_barcode("ABC", &p), BarcodePlan::Qr);
    }

    #[test]
    fn every_shipped_profile_of_512_dots_or_more_prints_the_id_as_code128() {
        for name in Profile::names() {
            let p = Profile::load(&name).unwrap();
            let plan = plan_barcode(ID, &p);
            if p.dots >= 512 {
                assert!(
                    matches!(plan, BarcodePlan::Code128 { dots, .. } if dots <= p.dots),
                    "{name}: {plan:?}"
                );
            } else {
                assert_eq!(plan, BarcodePlan::Qr, "{name}");
            }
        }
    }

    #[test]
    fn unencodable_characters_are_replaced_never_sent_as_utf8() {
        assert_eq!(
            printable("茶叶 ¥5 – “ok”", TextEncoding::Gb18030),
            "茶叶 ¥5 – “ok”"
        );
        assert_eq!(
            printable("茶叶 ¥5 – ok…", TextEncoding::Gbk),
            "茶叶 ￥5 – ok…"
        );
        assert_eq!(printable("茶 😀 ñ\u{7}", TextEncoding::Gbk), "茶 ? ?");
        assert_eq!(printable("臺灣 简", TextEncoding::Big5), "臺灣 ?");
        let mut s = sample(SlipKind::Sale);
        s.store_name = "臺北店 😀".into();
        let mut big5 = Profile::load("generic-80mm-big5").unwrap();
        let bytes = render(&layout(&s, 48), &big5);
        let text = dump(&bytes, TextEncoding::Big5);
        assert!(text.contains("TEXT \"臺北店 ?\""), "{text}");
        assert!(!text.contains("UNDECODABLE"), "{text}");
        // No UTF-8 sequence of the emoji anywhere in the bytes.
        assert!(!bytes.windows(4).any(|w| w == "😀".as_bytes()));
        big5.encoding = TextEncoding::Gbk;
        let bytes = render(&layout(&s, 48), &big5);
        assert!(dump(&bytes, TextEncoding::Gbk).contains("TEXT \"臺北店 ?\""));
    }

    #[test]
    fn drawer_kick_is_five_bytes() {
        assert_eq!(drawer_kick(&p80()), Some(vec![0x1b, b'p', 0, 25, 250]));
        assert_eq!(drawer_kick(&Profile::load("generic-58mm").unwrap()), None);
    }

    #[test]
    fn dump_is_lossless_for_rendered_slips() {
        let bytes = render(&layout(&sample(SlipKind::Sale), 48), &p80());
        let d = dump(&bytes, TextEncoding::Gb18030);
        assert!(d.starts_with("ESC @\nFS &\n"), "{d}");
        assert!(d.ends_with("ESC d 04\nGS V 42 00\n"), "{d}");
        assert!(!d.contains("BYTE") && !d.contains("UNDECODABLE"), "{d}");
    }
}
