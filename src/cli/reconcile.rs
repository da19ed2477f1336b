//! `posd reconcile FILE… [--apply] [--format table|csv|json]`: holds the terminal's books
//! against the gateway's Transaction Items files. The files are read and checked here first
//! (a malformed one is refused with its line and nothing is sent); then the running daemon
//! reconciles them, or, when it cannot be reached, this command does on the database
//! directly (a queued refund then waits for `posd run`). Exit 0 all matched, 1 discrepancies,
//! 2 usage error or malformed file.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::client::{ApiClient, CallError};
use super::queue::{open_existing, NoGateway};
use super::{EXIT_NOT_SUCCEEDED, EXIT_OK, EXIT_USAGE};
use crate::backoffice::reconcile::{self, matcher::Report, report};
use crate::backoffice::{identity, ReconcileRequest, StatementUpload, MAX_STATEMENT_BYTES};
use crate::config::Config;
use crate::engine::{Engine, EngineSettings};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for a terminal, with what to do.
    Table,
    /// One line per finding.
    Csv,
    /// The whole report as one JSON object.
    Json,
}

/// `posd reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// The gateway's files: transactionItems_<YYYYMMDD>_<seq>.csv.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Queue the full refund of every payment the gateway charged and posd did not.
    #[arg(long)]
    pub apply: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Reads the statement files named on the command line and checks every one (a malformed
/// file is refused with its line before anything is sent or changed). Shared with `posd hub
/// reconcile`.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, u8> {
    let mut files = Vec::new();
    let mut total = 0usize;
    for p in paths {
        let bytes = match std::fs::read(p) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("posd: cannot read {}: {e}", p.display());
                return Err(EXIT_USAGE);
            }
        };
        total += bytes.len();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| p.display().to_string());
        files.push((name, bytes));
    }
    if total > MAX_STATEMENT_BYTES {
        eprintln!(
            "posd: the files hold {total} bytes, more than {MAX_STATEMENT_BYTES} at once; reconcile them a few at a time"
        );
        return Err(EXIT_USAGE);
    }
    if let Err(e) = reconcile::parse_all(&files) {
        eprintln!("posd: {e}; nothing was changed");
        return Err(EXIT_USAGE);
    }
    Ok(files)
}

/// Prints a report in `format`; returns the exit code (0 all matched, 1 discrepancies).
pub fn print_report(r: &Report, format: Format) -> u8 {
    match format {
        Format::Table => print!("{}", report::to_table(r)),
        Format::Csv => print!("{}", report::to_csv(r)),
        Format::Json => println!("{}", serde_json::to_string(r).expect("report serializes")),
    }
    if r.has_discrepancies() {
        EXIT_NOT_SUCCEEDED
    } else {
        EXIT_OK
    }
}

/// Runs `posd reconcile`.
pub fn run(cfg: &Config, args: ReconcileArgs) -> u8 {
    // Checked before anything is sent: a malformed file changes nothing anywhere.
    let files = match read_files(&args.files) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let api = ApiClient::from_config(cfg);
    let req = ReconcileRequest {
        files: files
            .iter()
            .map(|(name, bytes)| StatementUpload {
                name: name.clone(),
                content: String::from_utf8_lossy(bytes).into_owned(),
            })
            .collect(),
        apply: args.apply,
    };
    let result: Result<Report, u8> = rt.block_on(async {
        match api.post::<_, Report>("/v1/reconcile", &req).await {
            Ok(r) => Ok(r),
            Err(CallError::Unreachable { why, .. }) => {
                eprintln!(
                    "posd: the daemon is not reachable ({why}); working on {} directly",
                    cfg.store_path().display()
                );
                direct(cfg, files, args.apply).await
            }
            Err(e) => {
                eprintln!("posd: {e}");
                Err(e.exit_code())
            }
        }
    });
    match result {
        Ok(r) => print_report(&r, args.format),
        Err(code) => code,
    }
}

async fn direct(cfg: &Config, files: Vec<(String, Vec<u8>)>, apply: bool) -> Result<Report, u8> {
    let store = open_existing(&cfg.store_path())?;
    // Reconciling never talks to the gateway; a queued refund is sent by `posd run`.
    let engine = Engine::new(store, Arc::new(NoGateway), EngineSettings::from_config(cfg));
    let parsed = reconcile::parse_all(&files).map_err(|e| {
        eprintln!("posd: {e}; nothing was changed");
        EXIT_USAGE
    })?;
    let r = reconcile::run(&engine, &identity(cfg), parsed, apply)
        .await
        .map_err(|e| {
            eprintln!("posd: {e}");
            EXIT_NOT_SUCCEEDED
        })?;
    if apply
        && r.critical()
            .any(|f| f.done.as_deref().is_some_and(|d| d.contains("queued")))
    {
        eprintln!("posd: the refunds are queued; `posd run` sends them");
    }
    Ok(r)
}
