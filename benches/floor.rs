//! The machine's floors, measured in the bench's own run and printed beside its figure: the
//! fsync ceiling (one `synchronous=FULL` commit in WAL mode on the bench's disk; an item needs
//! some commits one after another, and group commit lets at most the items in flight share
//! one) and the CPU ceiling (cores ÷ the RSA-2048 signs and verifies an item needs on both
//! sides of the loopback, aws-lc-rs, measured here), and the figure's ratio to the lower of
//! the two. Included by each bench with `#[path]`; not a bench of its own.
//!
//! The CPU a run used is split by thread ([`CpuSplit`]): the ratio to the CPU ceiling is the
//! share of the cores kept busy times the share of the CPU the signs and verifies take, and
//! the split says on which thread the rest runs.
//!
//! A sign is timed twice: alone (one thread, the other cores idle) and with every core
//! signing at once. On a virtual machine whose cores share a physical core's units or its
//! caches, the second is dearer, and only it says what the cores can sign together: the CPU
//! ceiling is computed from it, and the single-thread ceiling is printed beside it.

#![allow(dead_code, reason = "each bench uses the part it needs")]

use std::path::{Path, PathBuf};
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
    /// What `commit` is, for the printed line (a bench whose store is not SQLite sets its own).
    pub commit_is: &'static str,
    /// One RSA-2048 PKCS#1 v1.5 SHA-256 sign (aws-lc-rs, the key the daemon uses), alone.
    pub sign: Duration,
    /// What one sign costs a core while every core signs at once: the wall time of a round
    /// in which each core signs once.
    pub sign_all_cores: Duration,
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

/// Size of the `-wal` beside the database at `db` (0 when there is none).
pub fn wal_bytes(db: &Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// Makes commits with `commit` until the WAL of the database at `db` has wrapped: until its
/// size has held for 200 commits. SQLite checkpoints at 1,000 pages and the next writer
/// starts again at the WAL's head, so from then on a commit overwrites the WAL's blocks
/// instead of growing the file, as on any store past its first thousand pages (posd's own
/// in every bench: each prints its WAL's size). A growing WAL is dearer: on ext4 its fsync
/// also commits the file's new size to the filesystem's journal. So every commit floor is
/// timed on a wrapped WAL, or it would be dearer than the commits it bounds.
pub fn wrap_wal(db: &Path, mut commit: impl FnMut(usize)) {
    let (mut size, mut held) = (wal_bytes(db), 0);
    for i in 0.. {
        assert!(
            i < 100_000,
            "the WAL of {} never stopped growing",
            db.display()
        );
        commit(i);
        let now = wal_bytes(db);
        held = if now == size { held + 1 } else { 0 };
        size = now;
        if held == 200 {
            return;
        }
    }
}

/// Mean time of one `synchronous=FULL` commit (WAL) of a small row in `dir`, on a WAL that
/// has wrapped ([`wrap_wal`]).
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
    let insert = |i| {
        c.execute("INSERT INTO t (v) VALUES (?1)", [format!("row {i}")])
            .unwrap();
    };
    wrap_wal(&path, insert);
    let start = Instant::now();
    (0..n as usize).for_each(insert);
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Floors {
            commit: commit_cost(dir, n_commit),
            commit_is: "synchronous=FULL commit",
            sign,
            sign_all_cores: sign_on_every_core(&key, &content, cores, n_rsa),
            verify,
            cores,
        }
    }

    /// The lower of two measurements (other work on a shared machine only makes one slower).
    pub fn min(self, other: Floors) -> Floors {
        Floors {
            commit: self.commit.min(other.commit),
            commit_is: self.commit_is,
            sign: self.sign.min(other.sign),
            sign_all_cores: self.sign_all_cores.min(other.sign_all_cores),
            verify: self.verify.min(other.verify),
            cores: self.cores,
        }
    }

    /// Items/s if the disk did nothing but commits, each shared as widely as it can be.
    pub fn fsync_ceiling(&self, per: PerItem) -> f64 {
        1.0 / (per.fsyncs * self.commit.as_secs_f64())
    }

    /// Items/s if the cores did nothing but the item's signs and verifies, every core at once.
    pub fn cpu_ceiling(&self, per: PerItem) -> f64 {
        self.cpu_ceiling_with(per, self.sign_priced())
    }

    /// What the CPU ceiling prices a sign at: the dearer of alone and with every core signing.
    fn sign_priced(&self) -> Duration {
        self.sign_all_cores.max(self.sign)
    }

    /// The same from the sign timed alone, as if the cores scaled perfectly.
    pub fn cpu_ceiling_alone(&self, per: PerItem) -> f64 {
        self.cpu_ceiling_with(per, self.sign)
    }

    fn cpu_ceiling_with(&self, per: PerItem, sign: Duration) -> f64 {
        let cpu = per.signs * sign.as_secs_f64() + per.verifies * self.verify.as_secs_f64();
        self.cores as f64 / cpu
    }

    /// `rate`'s ratio to the lower ceiling.
    pub fn ratio(&self, rate: f64, per: PerItem) -> f64 {
        rate / self.fsync_ceiling(per).min(self.cpu_ceiling(per))
    }

    /// Prints the floors and `rate`'s ratio to the lower ceiling; returns that ratio.
    pub fn report(&self, what: &str, rate: f64, per: PerItem) -> f64 {
        let fsync = self.fsync_ceiling(per);
        let cpu = self.cpu_ceiling(per);
        let alone = self.cpu_ceiling_alone(per);
        let lower = fsync.min(cpu);
        println!(
            "floor: {} {} ms; RSA-2048 sign {} ms alone, {} ms per core with all {} cores \
             signing; verify {} ms",
            self.commit_is,
            ms(self.commit),
            ms(self.sign),
            ms(self.sign_all_cores),
            self.cores,
            ms(self.verify),
        );
        println!(
            "{what}: {rate:.0}/s; fsync ceiling {fsync:.0}/s (>= {:.4} fsyncs/item: {}), CPU ceiling \
             {cpu:.0}/s ({} signs + {} verifies/item over {} cores, all signing) -> {:.0} % of the \
             lower ({}); from the sign alone the CPU ceiling would be {alone:.0}/s ({:.0} %)",
            per.fsyncs,
            per.fsyncs_are,
            per.signs,
            per.verifies,
            self.cores,
            100.0 * rate / lower,
            if fsync <= cpu { "fsync" } else { "CPU" },
            100.0 * rate / fsync.min(alone),
        );
        rate / lower
    }
}

/// A run timed in stretches, each held against short floor measurements taken just before
/// and just after it: a sign's cost moves by a third from one minute to the next on a shared
/// virtual machine, and a ratio whose two sides were measured seconds apart moves with it.
pub struct Stretches {
    dir: PathBuf,
    /// `floors[i]` was measured before stretch `i`, `floors[i + 1]` after it.
    floors: Vec<Floors>,
    ratios: Vec<f64>,
}

impl Stretches {
    /// Measures the floors before the first stretch (their files in `dir`).
    pub fn start(dir: &Path) -> Stretches {
        let dir = dir.to_path_buf();
        let floors = vec![Self::short(&dir, 0)];
        Stretches {
            dir,
            floors,
            ratios: Vec::new(),
        }
    }

    fn short(dir: &Path, i: usize) -> Floors {
        Floors::measure(&dir.join(format!("stretch-floor-{i}")), 50, 100)
    }

    /// Records a stretch that ran at `rate` items/s: measures the floors after it and holds
    /// the rate against the cheaper of the floors on either side (the dearer ceiling, so the
    /// ratio never flatters).
    pub fn after(&mut self, rate: f64, per: PerItem) {
        let i = self.floors.len();
        self.floors.push(Self::short(&self.dir, i));
        let around = self.floors[i - 1].min(self.floors[i]);
        self.ratios.push(around.ratio(rate, per));
    }

    /// The cheapest of `base` and every floor measured between the stretches.
    pub fn cheapest(&self, base: Floors) -> Floors {
        self.floors.iter().fold(base, |a, b| a.min(*b))
    }

    /// Prints each stretch's ratio and their median: `size` is how many `items` a stretch
    /// held.
    pub fn report(&self, size: usize, items: &str) {
        let mut sorted = self.ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let each: Vec<String> = self
            .ratios
            .iter()
            .map(|r| format!("{:.0} %", 100.0 * r))
            .collect();
        println!(
            "    in {} stretches of {size} {items}, each against the floors measured just before \
             and after it: {} of the lower ceiling (median {:.0} %)",
            self.ratios.len(),
            each.join(", "),
            100.0 * sorted[sorted.len() / 2]
        );
    }
}

/// Median over `n` rounds of the wall time in which each of `cores` threads signs `content`
/// once, the threads started together: what one sign costs a core when every core signs.
fn sign_on_every_core(key: &PrivateKey, content: &[u8], cores: usize, n: usize) -> Duration {
    let n = n.max(1);
    let start = std::sync::Barrier::new(cores);
    let mut rounds: Vec<Duration> = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let others: Vec<_> = (1..cores)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..n {
                        start.wait();
                        std::hint::black_box(key.sign(std::hint::black_box(content)));
                    }
                })
            })
            .collect();
        for _ in 0..n {
            start.wait();
            let t0 = Instant::now();
            std::hint::black_box(key.sign(std::hint::black_box(content)));
            rounds.push(t0.elapsed());
        }
        for t in others {
            t.join().unwrap();
        }
    });
    rounds.sort();
    rounds[rounds.len() / 2]
}

/// CPU time this process has used so far, every thread (the loopback gateway's included).
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The signs and verifies one side of the loopback does per item.
#[derive(Debug, Clone, Copy)]
pub struct Side {
    pub signs: f64,
    pub verifies: f64,
}

/// The CPU a timed run used, by thread: posd's worker (the one thread of the daemon's
/// runtime, which the bench runs on), the loopback gateway's worker (the one thread of its
/// runtime), and the rest of the process: posd's database threads, the writer and the
/// reader (the thread blocked on the runtime does nothing meanwhile).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSplit {
    pub process: Duration,
    pub posd: Duration,
    pub gateway: Duration,
}

impl CpuSplit {
    /// The CPU used so far; called on posd's worker, `gateway` the gateway runtime's handle.
    pub async fn now(gateway: &tokio::runtime::Handle) -> CpuSplit {
        let on_gateway = gateway.spawn(async { thread_cpu() }).await.unwrap();
        CpuSplit {
            process: process_cpu(),
            posd: thread_cpu(),
            gateway: on_gateway,
        }
    }

    /// What was used between `before` and `self`.
    pub fn since(self, before: CpuSplit) -> CpuSplit {
        CpuSplit {
            process: self.process - before.process,
            posd: self.posd - before.posd,
            gateway: self.gateway - before.gateway,
        }
    }

    /// The two added.
    pub fn plus(self, other: CpuSplit) -> CpuSplit {
        CpuSplit {
            process: self.process + other.process,
            posd: self.posd + other.posd,
            gateway: self.gateway + other.gateway,
        }
    }
}

impl Floors {
    /// What one side's signs and verifies cost per item at the floor (a sign priced as in the
    /// CPU ceiling).
    fn rsa(&self, side: Side) -> f64 {
        side.signs * self.sign_priced().as_secs_f64() + side.verifies * self.verify.as_secs_f64()
    }

    /// Prints where `items`' CPU went over `wall`, by thread, beside each side's signs and
    /// verifies at the floor. The ratio to the CPU ceiling is exactly the share of the cores
    /// kept busy times the share of that CPU the signs and verifies are: so the first says
    /// whether the run waited, the second what the work beside the RSA costs, and the
    /// threads where that work runs.
    pub fn report_cpu(
        &self,
        what: &str,
        items: usize,
        wall: Duration,
        cpu: CpuSplit,
        posd: Side,
        gateway: Side,
    ) -> CpuShares {
        let per = |d: Duration| d.as_secs_f64() / items as f64;
        let ms = |s: f64| format!("{:.3} ms", s * 1000.0);
        let (p, g) = (per(cpu.posd), per(cpu.gateway));
        let rest = per(cpu.process) - p - g;
        let (p_rsa, g_rsa) = (self.rsa(posd), self.rsa(gateway));
        let busy = cpu.process.as_secs_f64() / wall.as_secs_f64() / self.cores as f64;
        let share = (p_rsa + g_rsa) / per(cpu.process);
        println!(
            "    {what}: {} of CPU per item (both sides of the loopback), {:.2} of {} cores busy",
            ms(per(cpu.process)),
            busy * self.cores as f64,
            self.cores
        );
        let rsa = |side: Side| {
            let n = |k: f64, one: &str, more: &str| {
                format!("{k} {}", if k == 1.0 { one } else { more })
            };
            format!(
                "{} + {}",
                n(side.signs, "sign", "signs"),
                n(side.verifies, "verify", "verifies")
            )
        };
        println!(
            "      by thread, per item: posd's worker {} (its {} at the floor {}, the rest {}); \
             the gateway's worker {} (its {} at the floor {}, the rest {}); posd's database \
             threads (writer, reader) {}",
            ms(p),
            rsa(posd),
            ms(p_rsa),
            ms(p - p_rsa),
            ms(g),
            rsa(gateway),
            ms(g_rsa),
            ms(g - g_rsa),
            ms(rest)
        );
        println!(
            "      the signs and verifies are {:.0} % of that CPU, and {:.0} % of the cores were \
             busy: {:.0} % x {:.0} % = {:.0} % of the CPU ceiling",
            100.0 * share,
            100.0 * busy,
            100.0 * share,
            100.0 * busy,
            100.0 * share * busy
        );
        CpuShares {
            rsa: p_rsa + g_rsa,
            busy,
        }
    }
}

/// From [`Floors::report_cpu`]: what an item's signs and verifies cost at the floor, and the
/// share of the cores the run kept busy.
#[derive(Debug, Clone, Copy)]
pub struct CpuShares {
    /// Seconds of CPU per item.
    pub rsa: f64,
    /// 0 to 1.
    pub busy: f64,
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
