//! Logging set-up: journald with structured fields when asked and available, else text or
//! JSON on stderr. Payment codes and keys never reach a log field (their types mask them).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// Installs the global subscriber. `RUST_LOG` overrides `[log] level`.
pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cfg.level))?;
    let registry = tracing_subscriber::registry().with(filter);
    match cfg.format.as_str() {
        "journald" => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(layer.with_syslog_identifier("posd".into()))
                .try_init()?,
            Err(e) => {
                registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .try_init()?;
                tracing::warn!(error = %e, "journald is not reachable; logging to stderr");
            }
        },
        "json" => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        _ => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
    }
    Ok(())
}
