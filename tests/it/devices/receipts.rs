//! Receipt bytes: byte-exact snapshots per profile (`UPDATE_SNAPSHOTS=1` rewrites them),
//! Chinese names decoded back, the CODE128 payload, forbidden fields, and an emupos render of
//! every shipped profile at its head width, read back with zbarimg.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::NaiveDateTime;
use posd::devices::escpos::{decode_code128, dump, render};
use posd::devices::profile::{Profile, TextEncoding};
use posd::devices::receipt::{layout, to_text, SlipData, SlipKind};
use posd::domain::money::{Amount, Currency};
use sha2::{Digest, Sha256};

use super::external_tool;

/// A paymentRequestId of the current layout (36 digits).
const PRID: &str = "126112114030500000100004200000012347";
/// A paymentRequestId of the older layout, as existing databases hold them.
const OLD_ID: &str = "20261121140305T000100000000123400000042123456";

fn slip(kind: SlipKind, merchant: &str, store: &str) -> SlipData {
    SlipData {
        kind,
        merchant_name: merchant.into(),
        store_name: store.into(),
        terminal_id: "T0001".into(),
        amount: Amount::parse("12.34", Currency::from_code("CNY").unwrap()).unwrap(),
        payment_request_id: PRID.into(),
        payment_id: Some("2026112119074102000000000012345".into()),
        refund_request_id: (kind == SlipKind::Refund)
            .then(|| "R20261121140305T000100000000050000000043000001".to_string()),
        local_time: NaiveDateTime::parse_from_str("2026-11-21 14:03:05", "%Y-%m-%d %H:%M:%S")
            .unwrap(),
        copy: false,
    }
}

fn chinese(kind: SlipKind) -> SlipData {
    slip(kind, "上海茶叶有限公司", "南京东路店（二楼）")
}

fn bytes_for(s: &SlipData, profile: &Profile) -> Vec<u8> {
    render(&layout(s, profile.width), profile)
}

/// The CODE128 payloads (`GS k 73 n data`) in a byte stream, decoded.
fn barcodes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= bytes.len() {
        if bytes[i..i + 3] == [0x1d, b'k', 73] {
            let n = usize::from(bytes[i + 3]);
            out.push(decode_code128(&bytes[i + 4..i + 4 + n]).expect("valid CODE128 data"));
            i += 4 + n;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn snapshots_per_profile_are_byte_exact() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/devices/snapshots");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for name in Profile::names() {
        let profile = Profile::load(&name).unwrap();
        for kind in [SlipKind::Sale, SlipKind::Cancel, SlipKind::Refund] {
            let bytes = bytes_for(&chinese(kind), &profile);
            let got = format!(
                "profile {name}, {} slip\nlen {} sha256 {:x}\n{}",
                kind.as_str(),
                bytes.len(),
                Sha256::digest(&bytes),
                dump(&bytes, profile.encoding)
            );
            let path = dir.join(format!("{name}-{}.txt", kind.as_str().to_lowercase()));
            if update {
                std::fs::write(&path, &got).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != got {
                mismatches.push(format!("{}:\n{got}", path.display()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "receipt bytes changed; review and rerun with UPDATE_SNAPSHOTS=1:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn chinese_names_decode_back_from_gb18030_and_gbk() {
    for (profile, codec) in [
        ("generic-80mm", encoding_rs::GB18030),
        ("generic-58mm", encoding_rs::GBK),
    ] {
        let p = Profile::load(profile).unwrap();
        let bytes = bytes_for(&chinese(SlipKind::Sale), &p);
        let merchant = codec.encode("上海茶叶有限公司").0;
        assert!(
            bytes.windows(merchant.len()).any(|w| w == &merchant[..]),
            "{profile}: merchant name not in {}",
            codec.name()
        );
        let d = dump(&bytes, p.encoding);
        assert!(d.contains("TEXT \"南京东路店（二楼）\""), "{profile}:\n{d}");
        assert!(!d.contains("UNDECODABLE"), "{profile}:\n{d}");
        // The UTF-8 form of the name must not be there: it would print as mojibake.
        let utf8 = "上海茶叶".as_bytes();
        assert!(
            !bytes.windows(utf8.len()).any(|w| w == utf8),
            "{profile} sent UTF-8"
        );
        assert!(
            bytes.starts_with(&[0x1b, b'@', 0x1c, b'&']),
            "ESC @ then FS &"
        );
    }
}

#[test]
fn code128_carries_the_payment_request_id_on_every_profile() {
    for name in Profile::names() {
        let p = Profile::load(&name).unwrap();
        for kind in [SlipKind::Sale, SlipKind::Cancel, SlipKind::Refund] {
            let bytes = bytes_for(&chinese(kind), &p);
            let text = dump(&bytes, p.encoding);
            if p.dots >= 512 {
                assert_eq!(barcodes(&bytes), vec![PRID.to_string()], "{name} {kind:?}");
                assert!(text.contains("GS w 02"), "{name}: 2-dot modules\n{text}");
                assert!(!text.contains("GS ( k"), "{name}: no QR beside CODE128");
            } else {
                // 58 mm: too narrow for CODE128 at 2 dots, a QR code carries the id.
                assert!(barcodes(&bytes).is_empty(), "{name}");
                assert_qr_holds(&bytes, PRID, &name);
            }
            // As text too, wrapped over two lines on narrow paper.
            let printed: String = to_text(&layout(&chinese(kind), p.width), p.width)
                .split_whitespace()
                .collect();
            assert!(
                printed.contains(PRID),
                "the id is printed as text too ({name})"
            );
        }
        // An id of the older layout is too wide for CODE128 anywhere: QR code and text.
        let mut old = chinese(SlipKind::Sale);
        old.payment_request_id = OLD_ID.into();
        let bytes = bytes_for(&old, &p);
        assert!(barcodes(&bytes).is_empty(), "{name}");
        assert_qr_holds(&bytes, OLD_ID, &name);
    }
}

/// The bytes hold a QR code (`GS ( k`) whose stored data is `id`.
fn assert_qr_holds(bytes: &[u8], id: &str, name: &str) {
    let text = dump(bytes, TextEncoding::Utf8);
    assert!(text.contains("GS ( k"), "{name}:\n{text}");
    assert!(
        bytes.windows(id.len()).any(|w| w == id.as_bytes()),
        "{name}: no QR data {id}"
    );
}

#[test]
fn slips_show_the_required_fields_and_nothing_forbidden() {
    let p = Profile::load("generic-80mm").unwrap();
    for kind in [SlipKind::Sale, SlipKind::Cancel, SlipKind::Refund] {
        let s = chinese(kind);
        let d = dump(&bytes_for(&s, &p), TextEncoding::Gb18030);
        for needle in [
            "上海茶叶有限公司",
            "南京东路店（二楼）",
            "Terminal",
            "T0001",
            kind.as_str(),
            "CNY 12.34",
            PRID,
            "2026112119074102000000000012345",
            "Alipay+",
            "2026-11-21 14:03:05",
        ] {
            assert!(d.contains(needle), "{kind:?}: {needle:?} missing:\n{d}");
        }
        let lower = d.to_lowercase();
        for forbidden in [
            "wallet", "issuer", "alipayhk", "gcash", "kakao", "actual", "customer", "code:",
        ] {
            assert!(
                !lower.contains(forbidden),
                "{kind:?}: {forbidden:?} must not be printed:\n{d}"
            );
        }
    }
}

/// Renders `bytes` with emupos at a head of `dots`; returns the receipt text, the PNG path and the event log.
fn emupos(
    python: &str,
    dir: &Path,
    name: &str,
    bytes: &[u8],
    dots: u32,
) -> (String, String, String) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/devices/escpos_render.py");
    let bin = dir.join(format!("{name}.bin"));
    std::fs::write(&bin, bytes).unwrap();
    let prefix = dir.join(name);
    let out = Command::new(python)
        .arg(&script)
        .arg(&bin)
        .arg(&prefix)
        .arg("epson-tm-t20iii")
        .arg(dots.to_string())
        .output()
        .expect("run the emupos renderer");
    let log = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{log}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("1 receipt(s)"), "{log}");
    assert!(
        !log.contains("printer.command.unknown"),
        "unknown ESC/POS command:\n{log}"
    );
    let text = std::fs::read_to_string(format!("{}-1.txt", prefix.display())).unwrap();
    (text, format!("{}-1.png", prefix.display()), log)
}

/// The symbols zbarimg finds in a PNG, as `TYPE:data` lines.
fn zbar(png: &str) -> Vec<String> {
    let zbarimg = std::env::var("POSD_ZBARIMG").unwrap_or_else(|_| "zbarimg".into());
    let z = Command::new(&zbarimg)
        .args(["-q", png])
        .output()
        .unwrap_or_else(|e| panic!("run {zbarimg} (Debian zbar-tools): {e}"));
    String::from_utf8_lossy(&z.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// Every shipped profile, rendered by emupos at that profile's head width and read back with
/// zbarimg, gives exactly the paymentRequestId: as CODE128 on 512 dots and wider, as a QR code
/// on 58 mm paper. emupos models Epson firmware (GS w 2..6, single-byte code pages), so the
/// names on these slips are ASCII.
#[test]
fn emupos_renders_every_profile_and_zbarimg_reads_exactly_the_id() {
    let Some(python) = external_tool("POSD_EMUPOS_PYTHON", "a Python 3.13 with emupos==0.4.0")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut s = slip(SlipKind::Sale, "Tea House Ltd", "Nanjing Road");
    s.copy = true;
    let names = Profile::names();
    assert!(names.len() >= 6, "{names:?}");
    for name in &names {
        let p = Profile::load(name).unwrap();
        let (text, png, _) = emupos(&python, dir.path(), name, &bytes_for(&s, &p), p.dots);
        for needle in [
            "Tea House Ltd",
            "Nanjing Road",
            "Alipay+",
            "SALE",
            "*** COPY ***",
            "CNY 12.34",
            "T0001",
        ] {
            assert!(text.contains(needle), "{name}: {needle:?} missing:\n{text}");
        }
        let want = if p.dots >= 512 {
            assert!(
                text.contains(&format!("[barcode CODE128 {PRID}]")),
                "{name}:\n{text}"
            );
            format!("CODE-128:{PRID}")
        } else {
            format!("QR-Code:{PRID}")
        };
        assert_eq!(zbar(&png), vec![want], "{name} at {} dots", p.dots);
    }

    // An older id on an 80 mm head: the QR code decodes to it.
    let epson = Profile::load("epson-tm-t20").unwrap();
    s.payment_request_id = OLD_ID.into();
    let (text, png, _) = emupos(&python, dir.path(), "old", &bytes_for(&s, &epson), 576);
    assert!(text.contains(OLD_ID), "{text}");
    assert_eq!(zbar(&png), vec![format!("QR-Code:{OLD_ID}")]);
}

/// The render check above catches a wrong code-set-C packing: `{C` followed by the id's ASCII
/// digits is a valid barcode that emupos draws and zbarimg reads — as other digits.
#[test]
fn a_wrong_set_c_packing_is_caught_by_the_render_check() {
    let Some(python) = external_tool("POSD_EMUPOS_PYTHON", "a Python 3.13 with emupos==0.4.0")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let digits = "12345678";
    let wrong: Vec<u8> = [
        b"\x1b@\x1dw\x02\x1dhP\x1dH\x00\x1dkI\x0a{C".as_slice(),
        digits.as_bytes(),
        b"\n\x1dVA\x00",
    ]
    .concat();
    let (_, png, _) = emupos(&python, dir.path(), "wrong", &wrong, 576);
    let read = zbar(&png);
    assert_eq!(read, vec!["CODE-128:4950515253545556".to_string()]);
    assert_ne!(read, vec![format!("CODE-128:{digits}")], "the check fails");

    let (right, _) = posd::devices::escpos::code128_data(digits).unwrap();
    let mut good = b"\x1b@\x1dw\x02\x1dhP\x1dH\x00\x1dkI".to_vec();
    good.push(u8::try_from(right.len()).unwrap());
    good.extend_from_slice(&right);
    good.extend_from_slice(b"\n\x1dVA\x00");
    let (_, png, _) = emupos(&python, dir.path(), "right", &good, 576);
    assert_eq!(zbar(&png), vec![format!("CODE-128:{digits}")]);
}
