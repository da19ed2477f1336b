//! The integration-test crate: one binary, one module per area (ripgrep's layout).

// Shared helpers: test keys, 0600 key files, sample orders.
mod support;

// The AMS signature scheme against the official vectors, OpenSSL and the key files.
mod signing;

// The AMS HTTP client against a fake gateway on a loopback port.
mod client;

// The sandbox gateway through the real client: every scenario row, idempotency, restarts.
mod sandbox;

// A real `posd run` process with test keys and short timings.
mod daemon;

// End to end through the binary: every sandbox row, crash points, concurrency.
mod e2e;

// Devices: serial scanner over ptys, receipt bytes, print journal and worker.
mod devices;

// The reversal queue, refunds and the back office: rows 86/87, SIGKILL mid-replay,
// two replayers on one database, refunds over HTTP, `posd queue` and `posd journal`.
mod queue;
// The notifyPayment endpoint in process: signatures, amounts, duplicates, races.
mod notify;

// An answer the database cannot record (a write lock past the busy timeout): kept, retried,
// shown to the cashier, and recorded by itself once the lock is gone.
mod recording;

// The real daemon binary: sd_notify, watchdog, /healthz, /metrics, token, SIGTERM.
mod ops;

// posd hub on PostgreSQL: migrations, registry, refusals, terminal → hub → sandbox, kills.
mod hub;

// Operations hardening: config check = run, the empty-store guard, backup, error bodies, slow
// clients, idempotent POSTs.
mod hardening;

// The Alipay mainland dialect: SDK vectors, raw-byte answers, the client against a fake gateway.
mod mainland;

// The mainland notification endpoint in process: forged, other app, amount, duplicates, order.
mod mainland_notify;

// The reversal queue in the mainland dialect: row 86, SIGKILL at every replay point.
mod mainland_queue;

// A mainland cancel that refunded a charge: REFUNDED from the payment's task and the queue.
mod mainland_reversal;

// The sandbox in the mainland dialect, and its overrides and delayed outcomes in both dialects.
mod mainland_sandbox;
// The back office: reconciliation against statements built from the sandbox's record, resolve.
mod reconcile;
// The web console in headless Chromium (tests/browser/console.mjs) against the real daemon.
mod reconcile_console;
// Architecture checks over the source text: layering, wire strings, //! lines, invariants.
mod tidy;
// Every committed fuzz corpus file through its target's entry point, on stable.
mod fuzz_corpus;

// Seeded crash-and-fault runs of the real binary behind a fault-injecting gateway proxy.
mod chaos;
// What the terminal's and the hub's seeded runners share: scenario rows, the fault proxy,
// the terminal's SQLite record.
mod chaos_kit;
