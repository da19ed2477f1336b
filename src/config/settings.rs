//! The validated, typed configuration every part of posd reads: the config file's sections
//! as parsed, after [`super::validate`] accepted them, with the currency and time zone kept
//! typed; and where its paths resolve.

use std::path::{Path, PathBuf};

use super::{
    state_directory, validate, ApiConfig, CodesConfig, ConfigError, FlowConfig, GatewayConfig,
    LogConfig, NotifyConfig, RawConfig, SandboxConfig, StoreConfig, TerminalConfig,
};
use crate::devices::config::{PrinterConfig, ScannerConfig};
use crate::domain::code::CodeRules;
use crate::domain::money::Currency;

/// The whole configuration, validated. Only [`Config::load`] and [`Config::parse`] make one.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[terminal]`
    pub terminal: TerminalConfig,
    /// `[gateway]`
    pub gateway: GatewayConfig,
    /// `[flow]`
    pub flow: FlowConfig,
    /// `[codes]`
    pub codes: CodesConfig,
    /// `[store]`
    pub store: StoreConfig,
    /// `[api]`
    pub api: ApiConfig,
    /// `[notify]`
    pub notify: NotifyConfig,
    /// `[scanner]`
    pub scanner: ScannerConfig,
    /// `[printer]`
    pub printer: PrinterConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[sandbox]`
    pub sandbox: SandboxConfig,
    /// Directory of the config file: relative paths in it are resolved against it.
    pub base_dir: PathBuf,
    /// `terminal.currency`, parsed.
    currency: Currency,
    /// `terminal.timezone`, parsed.
    timezone: Option<super::tz::Tz>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, path, &base)
    }

    /// Parses and validates config text; `base_dir` anchors relative paths.
    pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let typed = validate::validate(&raw).map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        })?;
        Ok(Config {
            terminal: raw.terminal,
            gateway: raw.gateway,
            flow: raw.flow,
            codes: raw.codes,
            store: raw.store,
            api: raw.api,
            notify: raw.notify,
            scanner: raw.scanner,
            printer: raw.printer,
            log: raw.log,
            sandbox: raw.sandbox,
            base_dir: base_dir.to_path_buf(),
            currency: typed.currency,
            timezone: typed.timezone,
        })
    }

    /// Whether posd speaks the mainland dialect: `kind = "alipay_cn"`, or the sandbox with
    /// `dialect = "alipay_cn"`.
    pub fn mainland(&self) -> bool {
        super::is_mainland(&self.gateway)
    }

    /// The payment-code rules from `[codes]` (with the dialect's default lengths).
    pub fn code_rules(&self) -> CodeRules {
        let (min_len, max_len) = super::code_lengths(&self.codes, self.mainland());
        CodeRules {
            min_len,
            max_len,
            prefixes: self.codes.prefixes.clone(),
        }
    }

    /// The terminal's default currency (validated).
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The terminal's time zone, if configured (validated); `None` means system local.
    pub fn timezone(&self) -> Option<super::tz::Tz> {
        self.timezone
    }

    /// Resolves a configured path: absolute as is, relative against the config's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The SQLite file: `[store] path`, else `$STATE_DIRECTORY/posd.sqlite3`, else
    /// `var/posd.sqlite3` beside the config.
    pub fn store_path(&self) -> PathBuf {
        if let Some(p) = &self.store.path {
            return self.resolve(p);
        }
        if let Some(dir) = state_directory() {
            return dir.join("posd.sqlite3");
        }
        self.resolve(Path::new("var/posd.sqlite3"))
    }

    /// The sandbox's SQLite file: `[sandbox] path`, else `sandbox.sqlite3` next to the store.
    pub fn sandbox_path(&self) -> PathBuf {
        match &self.sandbox.path {
            Some(p) => self.resolve(p),
            None => self
                .store_path()
                .parent()
                .map(|d| d.join("sandbox.sqlite3"))
                .unwrap_or_else(|| PathBuf::from("sandbox.sqlite3")),
        }
    }
}
