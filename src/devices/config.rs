//! `[scanner]` and `[printer]` in `config.toml`: serde types with the defaults of docs/design.md,
//! and `validate()` methods whose errors name the key and what would be valid.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::profile::Profile;

/// Where scans come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScannerKind {
    /// Codes typed or piped on standard input, one per line (sandbox and trials).
    #[default]
    Stdin,
    /// A scanner on RS-232 or USB CDC-ACM (`/dev/ttyACM0`, `/dev/posd-scanner`).
    Serial,
    /// A USB HID keyboard-wedge scanner read from `/dev/input/event*`, grabbed exclusively.
    Evdev,
    /// No scanner: codes come only through the API and the CLI.
    None,
}

/// `[scanner]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    /// `stdin` (default), `serial`, `evdev` or `none`.
    #[serde(default)]
    pub kind: ScannerKind,
    /// The device path; required for `serial` and `evdev`.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// Serial line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// The same code scanned again within this window is taken once ("2s").
    #[serde(default = "default_dedup", deserialize_with = "duration")]
    pub dedup_window: Duration,
    /// Longest frame accepted before a terminator, in bytes; longer input is rejected.
    #[serde(default = "default_max_frame")]
    pub max_frame_len: usize,
    /// Wait between attempts to reopen a scanner that vanished ("1s").
    #[serde(default = "default_reconnect", deserialize_with = "duration")]
    pub reconnect_interval: Duration,
}

impl Default for ScannerConfig {
    fn default() -> Self {
        ScannerConfig {
            kind: ScannerKind::default(),
            device: None,
            baud: default_baud(),
            dedup_window: default_dedup(),
            max_frame_len: default_max_frame(),
            reconnect_interval: default_reconnect(),
        }
    }
}

fn default_baud() -> u32 {
    9600
}
fn default_dedup() -> Duration {
    Duration::from_secs(2)
}
fn default_max_frame() -> usize {
    128
}
fn default_reconnect() -> Duration {
    Duration::from_secs(1)
}

/// Where slips go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrinterKind {
    /// One `.bin` and one `.txt` preview per slip in `path` (trials, no hardware).
    #[default]
    File,
    /// A printer on a serial port (`device`, `baud`); two-way, status by DLE EOT.
    Serial,
    /// A USB printer class device (`/dev/usb/lp0`, `/dev/posd-printer`); one-way.
    Usb,
    /// Raw TCP, port 9100 (`address`); two-way, status by DLE EOT.
    Network,
    /// No printer: slips stay in the print journal for a later reprint.
    None,
}

/// `[printer]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrinterConfig {
    /// `file` (default), `serial`, `usb`, `network` or `none`.
    #[serde(default)]
    pub kind: PrinterKind,
    /// Directory of file-printed slips.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Device path for `serial` and `usb`.
    #[serde(default)]
    pub device: Option<PathBuf>,
    /// `host:port` (or `host`, port 9100) for `network`.
    #[serde(default)]
    pub address: Option<String>,
    /// A profile name from `hardware/profiles/` or a path to a profile `.toml`.
    #[serde(default = "default_profile")]
    pub profile: String,
    /// Serial line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Opening the device or connecting ("3s").
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// Wait for a DLE EOT status byte, and for a write to complete ("1s").
    #[serde(default = "default_io_timeout", deserialize_with = "duration")]
    pub io_timeout: Duration,
    /// First retry of a slip that failed ("2s"); doubles up to `retry_max`.
    #[serde(default = "default_retry_initial", deserialize_with = "duration")]
    pub retry_initial: Duration,
    /// Longest wait between retries ("60s").
    #[serde(default = "default_retry_max", deserialize_with = "duration")]
    pub retry_max: Duration,
    /// How often the printer's status is polled while it is not ready ("5s").
    #[serde(default = "default_status_poll", deserialize_with = "duration")]
    pub status_poll: Duration,
    /// Pulse the cash drawer (if the profile has one) after an original SALE slip.
    #[serde(default)]
    pub open_drawer: bool,
}

impl Default for PrinterConfig {
    fn default() -> Self {
        PrinterConfig {
            kind: PrinterKind::default(),
            path: default_path(),
            device: None,
            address: None,
            profile: default_profile(),
            baud: default_baud(),
            connect_timeout: default_connect_timeout(),
            io_timeout: default_io_timeout(),
            retry_initial: default_retry_initial(),
            retry_max: default_retry_max(),
            status_poll: default_status_poll(),
            open_drawer: false,
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("var/receipts")
}
fn default_profile() -> String {
    "generic-80mm".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}
fn default_io_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_initial() -> Duration {
    Duration::from_secs(2)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_status_poll() -> Duration {
    Duration::from_secs(5)
}

/// Problems found by `validate()`, one message per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

fn done(problems: Vec<String>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError(problems))
    }
}

impl ScannerConfig {
    /// Checks the values serde cannot: a device where the kind needs one, sane bounds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        match (self.kind, &self.device) {
            (ScannerKind::Serial, None) => p.push(
                "[scanner] device is required when kind = \"serial\": set it to the scanner's \
                 port, e.g. \"/dev/posd-scanner\" or \"/dev/ttyACM0\""
                    .to_string(),
            ),
            (ScannerKind::Evdev, None) => p.push(
                "[scanner] device is required when kind = \"evdev\": set it to the scanner's \
                 input device, e.g. \"/dev/input/by-id/usb-…-event-kbd\""
                    .to_string(),
            ),
            _ => {}
        }
        if self.baud == 0 || self.baud > 4_000_000 {
            p.push(format!(
                "[scanner] baud = {}: use the scanner's line speed, e.g. 9600 or 115200",
                self.baud
            ));
        }
        if !(8..=4096).contains(&self.max_frame_len) {
            p.push(format!(
                "[scanner] max_frame_len = {}: use 8 to 4096 bytes",
                self.max_frame_len
            ));
        }
        if self.dedup_window > Duration::from_secs(60) {
            p.push("[scanner] dedup_window: use at most \"60s\" (\"0s\" turns it off)".into());
        }
        if self.reconnect_interval < Duration::from_millis(10) {
            p.push("[scanner] reconnect_interval: use at least \"10ms\", e.g. \"1s\"".into());
        }
        done(p)
    }
}

impl PrinterConfig {
    /// Checks the values serde cannot: the device or address the kind needs, that the
    /// profile exists, sane timings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        match self.kind {
            PrinterKind::Serial | PrinterKind::Usb if self.device.is_none() => p.push(format!(
                "[printer] device is required when kind = \"{}\": set it to the printer's \
                 device, e.g. \"{}\"",
                if self.kind == PrinterKind::Serial {
                    "serial"
                } else {
                    "usb"
                },
                if self.kind == PrinterKind::Serial {
                    "/dev/ttyUSB0"
                } else {
                    "/dev/usb/lp0"
                },
            )),
            PrinterKind::Network => match &self.address {
                None => p.push(
                    "[printer] address is required when kind = \"network\": set it to \
                     \"host:9100\", e.g. \"192.168.1.50:9100\""
                        .into(),
                ),
                Some(a) if parse_address(a).is_none() => p.push(format!(
                    "[printer] address = {a:?}: use \"host:port\" or \"host\" (port 9100), \
                     e.g. \"192.168.1.50:9100\""
                )),
                _ => {}
            },
            PrinterKind::File if self.path.as_os_str().is_empty() => p.push(
                "[printer] path is empty: set it to a directory for slips, e.g. \"var/receipts\""
                    .into(),
            ),
            _ => {}
        }
        if let Err(e) = Profile::load(&self.profile) {
            p.push(format!("[printer] profile: {e}"));
        }
        if self.baud == 0 || self.baud > 4_000_000 {
            p.push(format!(
                "[printer] baud = {}: use the printer's line speed, e.g. 9600 or 115200",
                self.baud
            ));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("io_timeout", self.io_timeout),
            ("retry_initial", self.retry_initial),
            ("status_poll", self.status_poll),
        ] {
            if d < Duration::from_millis(10) {
                p.push(format!("[printer] {key}: use at least \"10ms\""));
            }
        }
        if self.retry_max < self.retry_initial {
            p.push("[printer] retry_max must not be shorter than retry_initial".into());
        }
        done(p)
    }
}

/// Splits a printer address into host and port (9100 when no port is given).
pub fn parse_address(a: &str) -> Option<(String, u16)> {
    let a = a.trim();
    if a.is_empty() || a.contains(char::is_whitespace) {
        return None;
    }
    if let Ok(sa) = a.parse::<std::net::SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    match a.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') => Some((h.to_string(), port.parse().ok()?)),
        _ => Some((a.trim_matches(['[', ']']).to_string(), 9100)),
    }
}

/// Deserializes a humantime string ("2s", "250ms") into a `Duration`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration ({e}): use e.g. \"2s\" or \"250ms\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_design() {
        let s: ScannerConfig = toml::from_str("").unwrap();
        assert_eq!(s, ScannerConfig::default());
        assert_eq!(
            (s.kind, s.baud, s.dedup_window),
            (ScannerKind::Stdin, 9600, Duration::from_secs(2))
        );
        let p: PrinterConfig = toml::from_str("").unwrap();
        assert_eq!(p, PrinterConfig::default());
        assert_eq!(
            (p.kind, p.path.to_str(), p.profile.as_str()),
            (PrinterKind::File, Some("var/receipts"), "generic-80mm")
        );
        assert!(s.validate().is_ok() && p.validate().is_ok());
    }

    #[test]
    fn durations_are_humantime_strings() {
        let s: ScannerConfig = toml::from_str("dedup_window = \"250ms\"").unwrap();
        assert_eq!(s.dedup_window, Duration::from_millis(250));
        let e = toml::from_str::<ScannerConfig>("dedup_window = \"soon\"").unwrap_err();
        assert!(e.to_string().contains("\"soon\" is not a duration"), "{e}");
        let e = toml::from_str::<ScannerConfig>("kind = \"usb\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("expected one of `stdin`, `serial`, `evdev`, `none`"),
            "{e}"
        );
        let e = toml::from_str::<PrinterConfig>("colour = true").unwrap_err();
        assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn validate_names_the_key_and_what_is_valid() {
        let s = ScannerConfig {
            kind: ScannerKind::Serial,
            baud: 0,
            ..Default::default()
        };
        let e = s.validate().unwrap_err();
        assert_eq!(e.0.len(), 2, "{e}");
        assert!(e.0[0].starts_with("[scanner] device is required when kind = \"serial\""));
        assert!(e.0[1].starts_with("[scanner] baud = 0"));

        let p = PrinterConfig {
            kind: PrinterKind::Network,
            profile: "tm-t88".into(),
            ..Default::default()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(
            e.contains("[printer] address is required when kind = \"network\""),
            "{e}"
        );
        assert!(
            e.contains("[printer] profile: unknown printer profile \"tm-t88\": use one of"),
            "{e}"
        );
        let p = PrinterConfig {
            kind: PrinterKind::Network,
            address: Some("printer one".into()),
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("address = \"printer one\""));
        let p = PrinterConfig {
            kind: PrinterKind::Usb,
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("\"/dev/usb/lp0\""));
    }

    #[test]
    fn addresses_default_to_port_9100() {
        assert_eq!(parse_address("10.0.0.5"), Some(("10.0.0.5".into(), 9100)));
        assert_eq!(
            parse_address("10.0.0.5:9101"),
            Some(("10.0.0.5".into(), 9101))
        );
        assert_eq!(
            parse_address("printer.local:9100"),
            Some(("printer.local".into(), 9100))
        );
        assert_eq!(parse_address("[::1]:9100"), Some(("::1".into(), 9100)));
        assert_eq!(parse_address("host:port"), None);
        assert_eq!(parse_address(""), None);
    }
}
