//! Devices: the barcode scanner, the receipt printer and the receipt itself.
//!
//! # Layout
//! - [`config`]: `[scanner]` and `[printer]` with their defaults and validation.
//! - [`receipt`]: the pure slip layout (what a slip shows, and what it never shows).
//! - [`profile`]: printer profiles from `hardware/profiles/*.toml`.
//! - [`escpos`]: laid-out lines to ESC/POS bytes for a profile.
//! - [`printer`]: transports (file, serial, usb, network) and DLE EOT status.
//! - [`print_worker`]: the tokio task that prints the print journal's pending slips.
//! - [`scanner`]: serial, evdev and stdin scanners delivering validated, de-duplicated codes.
//!
//! # Invariants
//! - A printer or scanner failure never blocks capturing or recording a payment: slips are
//!   rows in the print journal (`store::print_journal`), written by the engine in the
//!   transaction that records the payment, and printed later by the worker.
//! - A full payment code is never printed, logged or stored: scans are validated into
//!   `PaymentCode` (masked `Display`) before they leave [`scanner`], and a slip has no field
//!   for a code.

pub mod config;
pub mod escpos;
pub mod print_worker;
pub mod printer;
pub mod profile;
pub mod receipt;
pub mod scanner;
