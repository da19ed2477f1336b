//! posd hub against a real PostgreSQL: migrations under the advisory lock, the registry,
//! verification and ownership refusals, terminal → hub → sandbox for every row, two
//! instances with SIGKILL on the money path, active cancel, the queue.

mod harness;
mod pg;

mod advice;
mod basics;
mod console;
mod e2e;
mod kills;
mod notify;
mod reconcile;
mod refusals;
mod tls;
