//! The Alipay mainland face-to-face dialect (当面付, `alipay.trade.*`, `scene=bar_code`):
//! the form wire, RSA2 signing over sorted `k=v`, answers verified over their raw bytes,
//! the mapping of `code` / `sub_code` / `trade_status` into the machine's answers, the
//! client and the asynchronous notifications. docs/protocol.md describes the dialect.

pub mod answer;
pub mod client;
pub mod notify;
pub mod sign;
pub mod wire;

pub use client::{CnClient, CnSettings};
