//! `posd journal [--since DATE] [--until DATE] [--format csv|json]`: the reconciliation
//! journal from the daemon's API, or straight from the database when the daemon is stopped.

use clap::{Args, ValueEnum};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::client::{ApiClient, CallError};
use super::queue::open_existing;
use super::{EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE};
use crate::api::journal::{load, parse_since, parse_until, to_csv, JournalJson};
use crate::api::wire::rfc3339;
use crate::config::Config;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header line.
    Csv,
    /// One JSON object: `{"since", "rows"}`.
    Json,
}

/// `posd journal`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    /// Start of the period: a date (local midnight, e.g. 2026-11-21) or an RFC 3339 time [default: today].
    #[arg(long)]
    pub since: Option<String>,
    /// End of the period: a date (included) or an RFC 3339 time (excluded) [default: now].
    #[arg(long)]
    pub until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
}

/// Runs `posd journal`.
pub fn run(cfg: &Config, args: JournalArgs) -> u8 {
    // Check the date here so a typo is a usage error even with the daemon stopped.
    let since = match parse_since(args.since.as_deref(), cfg.timezone(), chrono::Utc::now()) {
        Ok(s) => s,
        Err(m) => {
            eprintln!("posd: {m}");
            return EXIT_USAGE;
        }
    };
    let until = match parse_until(args.until.as_deref(), cfg.timezone()) {
        Ok(u) if u > since => u,
        Ok(_) => {
            eprintln!("posd: --until must be after --since");
            return EXIT_USAGE;
        }
        Err(m) => {
            eprintln!("posd: {m}");
            return EXIT_USAGE;
        }
    };
    let since_text = rfc3339(since);
    let until_text = (until != i64::MAX).then(|| rfc3339(until));
    let fmt = match args.format {
        Format::Csv => "csv",
        Format::Json => "json",
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let api = ApiClient::from_config(cfg);
    rt.block_on(async move {
        let mut path = format!(
            "/v1/journal?since={}&format={fmt}",
            utf8_percent_encode(&since_text, NON_ALPHANUMERIC)
        );
        if let Some(u) = &until_text {
            path.push_str(&format!(
                "&until={}",
                utf8_percent_encode(u, NON_ALPHANUMERIC)
            ));
        }
        match api.get_text(&path).await {
            Ok(text) => {
                print!("{text}");
                if args.format == Format::Json {
                    println!();
                }
                EXIT_OK
            }
            Err(CallError::Unreachable { .. }) => {
                let store = match open_existing(&cfg.store_path()) {
                    Ok(s) => s,
                    Err(code) => return code,
                };
                let who = crate::backoffice::identity(cfg);
                let rows = match load(&store, &who, since, until).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("posd: {e:#}");
                        return EXIT_NOT_SUCCEEDED;
                    }
                };
                match args.format {
                    Format::Csv => print!("{}", to_csv(&rows)),
                    Format::Json => println!(
                        "{}",
                        serde_json::to_string(&JournalJson {
                            since: since_text,
                            until: until_text,
                            rows
                        })
                        .expect("journal serializes")
                    ),
                }
                EXIT_OK
            }
            Err(e) => {
                eprintln!("posd: {e}");
                e.exit_code()
            }
        }
    })
}
