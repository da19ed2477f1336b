//! posd: the payment daemon of a checkout terminal.
//!
//! # Layout
//! - [`domain`]: money, payment codes, request ids, slip data, the payment state machine
//!   (pure).
//! - `gateway`: the trait the engine uses; one folder per dialect (`ams/` for Alipay+ AMS,
//!   `alipay_cn/` for the mainland API), request signing, and the embedded sandbox gateway.
//! - `store`: SQLite (migrations from `migrations/`), the only module that touches rusqlite.
//! - `engine`: the tokio tasks that drive payments, the reversal queue worker, recovery.
//! - `api`: the local HTTP API (hardened by `api::guard`), `/healthz` and `/metrics`
//!   (`api::ops`), and the gateway's notification endpoint on its own listener (`api::notify`).
//! - `metrics`: the Prometheus registry; `health`: the health check that also feeds the
//!   systemd watchdog.
//! - `devices`: scanner, printer, receipt layout.
//! - `cli`, `config`: the `posd` command line and `config.toml`.
//! - `hub`: `posd hub`, the front gateway of an estate of terminals, on PostgreSQL.
//!
//! ARCHITECTURE.md has the code map and the invariants; docs/design.md the rules and the
//! flow; docs/protocol.md the gateway protocols.

#![forbid(unsafe_code)]

pub mod api;
pub mod backoffice;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod devices;
pub mod domain;
pub mod engine;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod gateway;
pub mod health;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod store;
