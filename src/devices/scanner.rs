//! Scanners (work in progress).
