//! posd hub: the front gateway (前置网关) between an estate's terminals and Alipay+ (or the
//! Alipay mainland API, converted), on PostgreSQL. Terminals speak AMS to it, signed with
//! their own keys; it verifies them, owns their payments, records every request before
//! forwarding it, signs upstream with the merchant key only it holds, verifies and records the
//! answer, and answers signed with its own key. Many instances share one database;
//! per-payment order comes from row locks, and the background work (active cancel, the
//! store-and-forward queue) is leased.
//!
//! - [`config`] — `hub.toml`.
//! - [`console`] — the estate console on the `[api]` listener, and `posd hub queue`.
//! - [`db`] — pool and migrations (advisory lock).
//! - [`registry`] — the terminals.
//! - [`intake`] — what a terminal's body says, read before anything is recorded.
//! - [`service`] — verify, own, record, forward, answer.
//! - [`upstream`] — the AMS relay (the outcome rules on raw answers) or the mainland client.
//! - [`convert`] — protocol conversion: terminals' AMS bodies ↔ the gateway trait's orders and answers.
//! - [`queue`] — the hub's store-and-forward queue.
//! - [`worker`] — active cancel and the queue loop.
//! - [`notify`] — the upstream's notifications.
//! - [`reconcile`] — the gateway's statement against the hub's record (`posd hub reconcile`).
//! - [`server`] — listeners (TLS), `/healthz`, `/metrics`, start-up and shutdown.
//! - [`watchdog`] — systemd `WATCHDOG=1` while the database answers.
//! - [`metrics`], [`cli`] — metrics and the `posd hub` command line.

pub mod cli;
pub mod config;
pub mod console;
pub mod convert;
pub mod db;
pub mod intake;
pub mod metrics;
pub mod notify;
pub mod queue;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod service;
pub mod upstream;
pub mod watchdog;
pub mod worker;
