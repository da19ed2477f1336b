//! The pure core: money, payment codes, request ids, slip data and the payment state machine. No I/O,
//! no clock: time is passed in.

pub mod code;
pub mod machine;
pub mod money;
pub mod request_id;
pub mod slip;
