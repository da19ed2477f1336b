//! The SQLite store. This file is a placeholder in the `devices` branch so that
//! [`print_journal`] compiles; the lead's store module replaces it and keeps
//! `pub mod print_journal;`.

pub mod print_journal;
