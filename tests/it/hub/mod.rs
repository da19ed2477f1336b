//! posd hub against a real PostgreSQL: migrations under the advisory lock, the registry,
//! verification and ownership refusals, terminal → hub → sandbox for every row, two
//! instances with SIGKILL on the money path, active cancel, the queue, and seeded
//! crash-and-fault runs of the whole estate.

mod harness;
mod pg;

mod advice;
mod basics;
mod chaos;
mod cluster;
mod console;
mod e2e;
mod kills;
mod mainland;
mod notify;
mod outage;
mod reconcile;
mod refusals;
mod reversal;
mod tls;
mod watchdog;
