//! The machine's floors, measured in the bench's own run and printed beside its figure: the
//! fsync ceiling (one `synchronous=FULL` commit in WAL mode on the bench's disk; an item needs
//! some commits one after another, and group commit lets at most the items in flight share
//! one) and the CPU ceiling (cores ÷ the RSA-2048 signs and verifies an item needs on both
//! sides of the loopback, aws-lc-rs, measured here), and the figure's ratio to the lower of
//! the two. Included by each bench with `#[path]`; not a bench of its own.

#![allow(dead_code, reason = "each bench uses the part it needs")]

use std::path::Path;
use std::time::{Duration, Instant};

use posd::gateway::sign::{Message, PrivateKey, PublicKey};

/// What one item (a sale, a queued cancel, a request) costs at the floor.
#[derive(Debug, Clone, Copy)]
pub struct PerItem {
    /// The fewest `synchronous=FULL` commits (fsyncs) one item can cost: the commits it needs,
    /// each divided by the most items that can share it (group commit shares a commit among
    /// the items in flight).
    pub fsyncs: f64,
    /// How `fsyncs` is made up, for the printed line.
    pub fsyncs_are: &'static str,
    /// RSA-2048 signs, both sides (terminal and the gateway in the same run).
    pub signs: f64,
    /// RSA-2048 verifies, both sides.
    pub verifies: f64,
}

/// The floors measured in this run.
#[derive(Debug, Clone, Copy)]
pub struct Floors {
    /// One `synchronous=FULL` commit of a small row.
    pub commit: Duration,
    /// One RSA-2048 PKCS#1 v1.5 SHA-256 sign (aws-lc-rs, the key the daemon uses).
    pub sign: Duration,
    /// One verify of the same.
    pub verify: Duration,
    /// Cores this process may run on.
    pub cores: usize,
}

fn test_key(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR")))
        .expect("test key")
}

/// A pay request of `body` to sign, as the floors sign it.
pub fn pay_message(body: &[u8]) -> Message<'_> {
    Message {
        method: "POST",
        uri: "/ams/api/v1/payments/pay",
        client_id: "BENCH",
        time: "2026-11-21T10:00:00+08:00",
        body,
    }
}

/// Median of `n` runs of `f`.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

/// Mean time of one `synchronous=FULL` commit (WAL) of a small row in `dir`.
pub fn commit_cost(dir: &Path, n: u32) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("floor-{}.sqlite3", std::process::id()));
    let c = rusqlite::Connection::open(&path).unwrap();
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute(
        "CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)",
        [],
    )
    .unwrap();
    let start = Instant::now();
    for i in 0..n {
        c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    }
    start.elapsed() / n
}

impl Floors {
    /// Measures the floors: `n_commit` commits in `dir`, `n_rsa` signs and verifies.
    pub fn measure(dir: &Path, n_commit: u32, n_rsa: usize) -> Floors {
        let key = PrivateKey::from_text(&test_key("merchant_private_pkcs8.pem"), "merchant")
            .expect("merchant key");
        let public =
            PublicKey::from_text(&test_key("merchant_public.pem"), "merchant").expect("public");
        let body = vec![b'x'; 800];
        let content = pay_message(&body).content();
        let sig = key.sign(&content);
        let sign = median(n_rsa, || {
            std::hint::black_box(key.sign(std::hint::black_box(&content)));
        });
        let verify = median(n_rsa.max(1) * 4, || {
            assert!(public.verify(std::hint::black_box(&content), &sig));
        });
        Floors {
            commit: commit_cost(dir, n_commit),
            sign,
            verify,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The lower of two measurements (other work on a shared machine only makes one slower).
    pub fn min(self, other: Floors) -> Floors {
        Floors {
            commit: self.commit.min(other.commit),
            sign: self.sign.min(other.sign),
            verify: self.verify.min(other.verify),
            cores: self.cores,
        }
    }

    /// Items/s if the disk did nothing but commits, each shared as widely as it can be.
    pub fn fsync_ceiling(&self, per: PerItem) -> f64 {
        1.0 / (per.fsyncs * self.commit.as_secs_f64())
    }

    /// Items/s if the cores did nothing but the item's signs and verifies.
    pub fn cpu_ceiling(&self, per: PerItem) -> f64 {
        let cpu = per.signs * self.sign.as_secs_f64() + per.verifies * self.verify.as_secs_f64();
        self.cores as f64 / cpu
    }

    /// Prints the floors and `rate`'s ratio to the lower ceiling; returns that ratio.
    pub fn report(&self, what: &str, rate: f64, per: PerItem) -> f64 {
        let fsync = self.fsync_ceiling(per);
        let cpu = self.cpu_ceiling(per);
        let lower = fsync.min(cpu);
        println!(
            "floor: synchronous=FULL commit {} ms; RSA-2048 sign {} ms, verify {} ms; {} cores",
            ms(self.commit),
            ms(self.sign),
            ms(self.verify),
            self.cores
        );
        println!(
            "{what}: {rate:.0}/s; fsync ceiling {fsync:.0}/s (>= {:.4} fsyncs/item: {}), CPU ceiling \
             {cpu:.0}/s ({} signs + {} verifies/item over {} cores) -> {:.0} % of the lower ({})",
            per.fsyncs,
            per.fsyncs_are,
            per.signs,
            per.verifies,
            self.cores,
            100.0 * rate / lower,
            if fsync <= cpu { "fsync" } else { "CPU" }
        );
        rate / lower
    }
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
