//! Printer profiles: what one printer model can do (paper width, text encoding, CODE128 and
//! QR support, cutter, cash drawer). Profiles ship in `hardware/profiles/*.toml` and are
//! embedded at build time; an installation can also load its own from a path.

use std::path::Path;

use include_dir::{include_dir, Dir};
use serde::Deserialize;

/// The profiles shipped in `hardware/profiles/`, embedded into the binary.
static PROFILES: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/hardware/profiles");

/// The text encoding a printer's firmware expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TextEncoding {
    /// Simplified Chinese, every Unicode character encodable.
    #[serde(rename = "gb18030")]
    Gb18030,
    /// Simplified Chinese, the common subset (no `¥`, no rare characters).
    #[serde(rename = "gbk")]
    Gbk,
    /// Traditional Chinese.
    #[serde(rename = "big5")]
    Big5,
    /// UTF-8 firmware.
    #[serde(rename = "utf-8")]
    Utf8,
}

impl TextEncoding {
    /// The `encoding_rs` codec for this encoding.
    pub fn codec(self) -> &'static encoding_rs::Encoding {
        match self {
            TextEncoding::Gb18030 => encoding_rs::GB18030,
            TextEncoding::Gbk => encoding_rs::GBK,
            TextEncoding::Big5 => encoding_rs::BIG5,
            TextEncoding::Utf8 => encoding_rs::UTF_8,
        }
    }
}

/// How the slip is cut at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cut {
    /// `GS V A 0`.
    Full,
    /// `GS V A 1`.
    Partial,
    /// No cutter: feed only, the cashier tears the slip off.
    None,
}

/// The cash drawer port: which pin to pulse and for how long (`ESC p m t1 t2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drawer {
    /// Connector pin 2 or 5.
    pub pin: u8,
    /// Pulse on-time in milliseconds (sent in 2 ms units, at most 510).
    pub on_ms: u16,
    /// Pulse off-time in milliseconds (sent in 2 ms units, at most 510).
    pub off_ms: u16,
}

/// One printer model's capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The name used in `[printer] profile`.
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Characters per line in Font A (Chinese characters take two).
    pub width: usize,
    /// Printable dots per line.
    pub dots: u32,
    /// Text encoding of the firmware.
    pub encoding: TextEncoding,
    /// Send `FS &` after `ESC @` to enter the double-byte (Kanji/Chinese) mode.
    #[serde(default)]
    pub kanji_mode: bool,
    /// The printer draws CODE128 (`GS k 73`).
    pub code128: bool,
    /// Narrowest CODE128 module the printer accepts (`GS w`), 1 to 6.
    #[serde(default = "default_min_module")]
    pub min_module: u8,
    /// The printer draws QR codes (`GS ( k`).
    #[serde(default)]
    pub qr: bool,
    /// The cutter.
    pub cut: Cut,
    /// Lines fed before the cut.
    #[serde(default = "default_feed")]
    pub feed_before_cut: u8,
    /// The cash drawer port, if one is wired.
    #[serde(default)]
    pub drawer: Option<Drawer>,
}

fn default_min_module() -> u8 {
    2
}

fn default_feed() -> u8 {
    4
}

/// Why a profile could not be loaded. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No embedded profile has this name.
    #[error(
        "unknown printer profile {name:?}: use one of {known}, or a path to a profile .toml file"
    )]
    Unknown { name: String, known: String },
    /// The file could not be read.
    #[error("cannot read printer profile {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("printer profile {origin} is not valid: {message}")]
    Invalid { origin: String, message: String },
}

/// The largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 64 * 1024;

impl Profile {
    /// Loads a profile by name from the embedded set (`generic-80mm`, `generic-58mm`, ...),
    /// or, if `name` contains a `/` or ends in `.toml`, from that file.
    pub fn load(name: &str) -> Result<Profile, ProfileError> {
        if name.contains('/') || name.ends_with(".toml") {
            return Profile::load_path(Path::new(name));
        }
        let file =
            PROFILES
                .get_file(format!("{name}.toml"))
                .ok_or_else(|| ProfileError::Unknown {
                    name: name.to_string(),
                    known: Profile::names().join(", "),
                })?;
        let text = file.contents_utf8().ok_or_else(|| ProfileError::Invalid {
            origin: name.to_string(),
            message: "not UTF-8".into(),
        })?;
        Profile::parse(text, name)
    }

    /// Loads a profile from a TOML file: a regular file of at most [`MAX_PROFILE_BYTES`]
    /// (a device or a FIFO named by mistake — the printer's `device` given as its `profile` —
    /// would otherwise block the read or fill the memory).
    pub fn load_path(path: &Path) -> Result<Profile, ProfileError> {
        use std::io::Read as _;
        let io = |source| ProfileError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file; name a profile .toml file",
            )));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(MAX_PROFILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_PROFILE_BYTES {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_PROFILE_BYTES} bytes; a profile is a few lines"),
            )));
        }
        Profile::parse(&text, &path.display().to_string())
    }

    /// The names of the embedded profiles, sorted.
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = PROFILES
            .files()
            .filter_map(|f| {
                let p = f.path();
                (p.extension()? == "toml").then(|| p.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        names.sort();
        names
    }

    /// Parses and checks a profile's TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let p: Profile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        if !(16..=96).contains(&p.width) {
            return Err(invalid(format!(
                "width = {}: use 16 to 96 characters",
                p.width
            )));
        }
        if !(128..=2048).contains(&p.dots) {
            return Err(invalid(format!("dots = {}: use 128 to 2048", p.dots)));
        }
        if !(1..=6).contains(&p.min_module) {
            return Err(invalid(format!(
                "min_module = {}: use 1 to 6",
                p.min_module
            )));
        }
        if let Some(d) = p.drawer {
            if d.pin != 2 && d.pin != 5 {
                return Err(invalid(format!("drawer.pin = {}: use 2 or 5", d.pin)));
            }
            if d.on_ms > 510 || d.off_ms > 510 {
                return Err(invalid("drawer on_ms/off_ms: use 0 to 510".into()));
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_profile_loads() {
        let names = Profile::names();
        assert!(names.contains(&"generic-80mm".to_string()));
        assert!(names.contains(&"generic-58mm".to_string()));
        for n in names {
            let p = Profile::load(&n).unwrap();
            assert_eq!(p.name, n, "a profile's name must match its file name");
        }
        let p80 = Profile::load("generic-80mm").unwrap();
        assert_eq!((p80.width, p80.encoding), (48, TextEncoding::Gb18030));
        let p58 = Profile::load("generic-58mm").unwrap();
        assert_eq!((p58.width, p58.cut, p58.drawer), (32, Cut::None, None));
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let e = Profile::load("epson-tm-x").unwrap_err().to_string();
        assert!(e.contains("unknown printer profile \"epson-tm-x\""), "{e}");
        assert!(e.contains("generic-58mm, generic-80mm"), "{e}");
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let base = "name='x'\nwidth=48\ndots=576\nencoding='gbk'\ncode128=true\ncut='full'\n";
        assert!(Profile::parse(base, "x").is_ok());
        let e = Profile::parse(&base.replace("gbk", "latin1"), "x").unwrap_err();
        assert!(e.to_string().contains("unknown variant `latin1`"), "{e}");
        let e = Profile::parse(&format!("{base}paper='a4'\n"), "x").unwrap_err();
        assert!(e.to_string().contains("unknown field `paper`"), "{e}");
        let e = Profile::parse(&base.replace("width=48", "width=4"), "x").unwrap_err();
        assert!(e.to_string().contains("width = 4: use 16 to 96"), "{e}");
        let e = Profile::parse(
            &format!("{base}[drawer]\npin=3\non_ms=50\noff_ms=500\n"),
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("drawer.pin = 3"), "{e}");
    }

    #[test]
    fn loads_from_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            "name='mine'\nwidth=42\ndots=512\nencoding='utf-8'\ncode128=false\ncut='none'\n",
        )
        .unwrap();
        let p = Profile::load(path.to_str().unwrap()).unwrap();
        assert_eq!((p.name.as_str(), p.width, p.code128), ("mine", 42, false));
        let e = Profile::load("/nonexistent/p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read printer profile /nonexistent/p.toml"),
            "{e}"
        );
    }

    #[test]
    fn a_device_or_a_huge_file_named_as_the_profile_is_refused_without_reading_it_all() {
        // /dev/zero never ends: an unbounded read would fill the memory.
        let e = Profile::load("/dev/zero").unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_PROFILE_BYTES as usize + 1]).unwrap();
        let e = Profile::load(big.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
