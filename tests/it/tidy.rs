//! Architecture checks over the source text, in the spirit of rust-analyzer's `tidy` tests:
//! only `store/` touches rusqlite; no gateway wire string or wire type outside `gateway/`;
//! `domain/` stays pure (no tokio, rusqlite, reqwest or `SystemTime`); no float in `domain/`
//! or `store/`; one clock: the core (`domain/`, `engine/`, `store/`, `config/`, `daemon.rs`,
//! the print worker) reads the time only in `engine/clock.rs`; every source file opens with its
//! `//!` line; every invariant in ARCHITECTURE.md says how it is kept.
//!
//! Production code is checked; test code (`tests.rs` files, modules declared under
//! `#[cfg(test)]`, and a file's trailing `#[cfg(test)] mod tests`) may name gateway codes as
//! test data. Comment lines are not code.
//!
//! [`KNOWN`] lists today's violations, each by file and what is found; the test fails on a
//! new violation and on a listed one that is gone, so the list only shrinks. To prove the
//! check bites, add `use rusqlite::Connection;` to any file in `src/engine/`: the test fails
//! naming that file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A violation: which rule, the file (relative to the repository), and what was found.
type Violation = (&'static str, String, &'static str);

const RUSQLITE: &str = "rusqlite outside store/";
const WIRE: &str = "gateway wire string or type outside gateway/";
const DOMAIN: &str = "I/O or clock crate in domain/";
const FLOAT: &str = "float on the money path (domain/, store/)";
const CLOCK: &str = "a second clock: the core reads the time only in src/engine/clock.rs";
const BACKOFF: &str = "a retry delay computed outside src/engine/backoff.rs";

/// The one module of retry delays.
const BACKOFF_MODULE: &str = "src/engine/backoff.rs";

/// Not violations: the sandbox simulates the remote gateway's own notification retries.
const EXEMPT_BACKOFF: &[&str] = &["src/gateway/sandbox/"];

/// How a retry delay is grown by hand: doubling a delay, or a power of two of the attempts.
fn grows_a_delay(line: &str) -> Option<&'static str> {
    let l = line.to_ascii_lowercase();
    let delayish = ["delay", "backoff", "attempt", "retry"]
        .iter()
        .any(|w| l.contains(w));
    if !delayish {
        return None;
    }
    if l.contains("*= 2") {
        return Some("*= 2");
    }
    if l.contains("1u32 <<") || l.contains("1u64 <<") || l.contains("1 <<") {
        return Some("<<");
    }
    if l.contains(".pow(") || l.contains("_pow(") {
        return Some("pow");
    }
    None
}

/// The core, where the time is read only through the one clock module.
const CLOCK_SCOPE: &[&str] = &[
    "src/domain/",
    "src/engine/",
    "src/store/",
    "src/config/",
    "src/daemon.rs",
    "src/devices/print_worker.rs",
];

/// The one clock module.
const CLOCK_MODULE: &str = "src/engine/clock.rs";

/// Reading the time: wall clocks and monotonic ones (std's and tokio's `Instant`).
const CLOCK_READS: &[&str] = &[
    "SystemTime::now",
    "UNIX_EPOCH",
    "Instant::now",
    "Utc::now",
    "Local::now",
];

/// Today's known violations: (rule, file, what). Remove an entry when its file is fixed. A
/// `*` as what covers every finding of that rule in the file.
const KNOWN: &[(&str, &str, &str)] = &[];

/// Not violations: the sandbox gateway simulates the remote side and keeps its own SQLite
/// file, separate from posd's store and its migrations.
const EXEMPT_RUSQLITE: &[&str] = &["src/gateway/sandbox/"];

/// Not violations: the hub is an AMS endpoint itself — it verifies, relays and records the
/// terminals' AMS bodies and the upstream's byte for byte, so it reads AMS fields and codes
/// (its own decisions, like the active-cancel inquiry, go through the `Gateway` trait).
const EXEMPT_WIRE: &[&str] = &["src/hub/"];

/// Gateway wire strings: AMS result codes, statuses and envelope fields, and the mainland
/// dialect's trade statuses and code families. A quoted entry matches only as a literal.
const WIRE_STRINGS: &[&str] = &[
    "ORDER_NOT_EXIST",
    "CANCEL_WINDOW_EXCEED",
    "PAYMENT_IN_PROCESS",
    "UNKNOWN_EXCEPTION",
    "USER_BALANCE_NOT_ENOUGH",
    "EXPIRED_CODE",
    "RISK_REJECT",
    "REFUND_AMOUNT_EXCEED",
    "PARAM_ILLEGAL",
    "INVALID_SIGNATURE",
    "resultStatus",
    "resultCode",
    "paymentStatus",
    "\"SUCCESS\"",
    "\"FAIL\"",
    "\"PROCESSING\"",
    "TRADE_SUCCESS",
    "WAIT_BUYER_PAY",
    "TRADE_CLOSED",
    "TRADE_FINISHED",
    "ACQ.",
];

/// Gateway wire types and their modules.
const WIRE_TYPES: &[&str] = &[
    "gateway::wire",
    "ams::wire",
    "alipay_cn::wire",
    "WireAmount",
    "WireResult",
    "NotifyPayment",
    "NOTIFY_ACK",
    "NOTIFY_RETRY",
];

/// What `domain/` must not use.
const IMPURE: &[&str] = &["tokio", "rusqlite", "reqwest", "SystemTime"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted, as paths relative to the repository.
fn rust_files(dir: &str) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    let mut rel: Vec<String> = out
        .iter()
        .map(|p| {
            p.strip_prefix(root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    rel.sort();
    rel
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap()
}

/// Modules declared right under `#[cfg(test)]` in `rel`, as the files that hold them.
fn test_only_children(rel: &str, text: &str) -> Vec<String> {
    let path = Path::new(rel);
    let dir = if path
        .file_name()
        .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
    {
        path.parent().unwrap().to_path_buf()
    } else {
        path.with_extension("")
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if *l != "#[cfg(test)]" {
            continue;
        }
        let Some(decl) = lines[i + 1..].iter().find(|l| !l.starts_with("#[")) else {
            continue;
        };
        let Some(name) = decl
            .split_whitespace()
            .skip_while(|w| *w != "mod")
            .nth(1)
            .and_then(|n| n.strip_suffix(';'))
        else {
            continue;
        };
        for candidate in [
            dir.join(format!("{name}.rs")),
            dir.join(name).join("mod.rs"),
        ] {
            out.push(candidate.to_string_lossy().into_owned());
        }
    }
    out
}

/// The production code of a file: no comment lines, no `#[cfg(test)] mod … { … }` block
/// (skipped by brace depth).
fn production_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]"
            && lines.peek().is_some_and(|n| {
                let n = n.trim_start();
                (n.starts_with("mod ") || n.starts_with("pub(crate) mod ")) && n.ends_with('{')
            })
        {
            let mut depth = 0i32;
            for inner in lines.by_ref() {
                depth += inner.matches('{').count() as i32 - inner.matches('}').count() as i32;
                if depth <= 0 {
                    break;
                }
            }
            continue;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every violation in `src/` today.
fn violations() -> BTreeSet<Violation> {
    let files = rust_files("src");
    let test_only: BTreeSet<String> = files
        .iter()
        .flat_map(|f| test_only_children(f, &read(f)))
        .collect();
    let mut found = BTreeSet::new();
    for f in &files {
        if f.ends_with("/tests.rs") || test_only.contains(f) {
            continue;
        }
        check(f, &production_code(&read(f)), &mut found);
    }
    found
}

/// The rules broken by `code`, the production code of file `f` (relative to the repository).
fn check(f: &str, code: &str, found: &mut BTreeSet<Violation>) {
    if !f.starts_with("src/store/")
        && !EXEMPT_RUSQLITE.iter().any(|e| f.starts_with(e))
        && code.contains("rusqlite")
    {
        found.insert((RUSQLITE, f.to_string(), "rusqlite"));
    }
    if !f.starts_with("src/gateway/") && !EXEMPT_WIRE.iter().any(|e| f.starts_with(e)) {
        for w in WIRE_STRINGS.iter().chain(WIRE_TYPES) {
            if code.contains(w) {
                found.insert((WIRE, f.to_string(), *w));
            }
        }
    }
    if f.starts_with("src/domain/") || f.starts_with("src/store/") {
        for w in ["f32", "f64"] {
            if code.contains(w) {
                found.insert((FLOAT, f.to_string(), w));
            }
        }
    }
    if f.starts_with("src/domain/") {
        for w in IMPURE {
            if code.contains(w) {
                found.insert((DOMAIN, f.to_string(), *w));
            }
        }
    }
    if f != BACKOFF_MODULE && !EXEMPT_BACKOFF.iter().any(|e| f.starts_with(e)) {
        for line in code.lines() {
            if let Some(w) = grows_a_delay(line) {
                found.insert((BACKOFF, f.to_string(), w));
            }
        }
    }
    if CLOCK_SCOPE.iter().any(|d| f.starts_with(d)) && f != CLOCK_MODULE {
        for w in CLOCK_READS {
            if code.contains(w) {
                found.insert((CLOCK, f.to_string(), *w));
            }
        }
    }
}

#[test]
fn layering_holds_except_for_the_known_violations_and_those_are_still_real() {
    let found = violations();
    let listed = |v: &Violation| {
        KNOWN.iter().any(|(rule, file, what)| {
            *rule == v.0 && *file == v.1 && (*what == "*" || *what == v.2)
        })
    };
    let new: Vec<&Violation> = found.iter().filter(|v| !listed(v)).collect();
    let gone: Vec<&(&str, &str, &str)> = KNOWN
        .iter()
        .filter(|(rule, file, what)| {
            !found
                .iter()
                .any(|v| v.0 == *rule && v.1 == *file && (*what == "*" || v.2 == *what))
        })
        .collect();
    assert!(
        new.is_empty(),
        "architecture violated (rule, file, what): {new:#?}\nmove the code to the module that owns it"
    );
    assert!(
        gone.is_empty(),
        "these known violations are fixed: remove them from KNOWN in tests/it/tidy.rs: {gone:#?}"
    );
}

#[test]
fn the_checks_bite() {
    // The scanners themselves, on text: an import in engine/, a wire code in api/, tokio in
    // domain/, each found; the same text in a comment or a test module is not.
    let bad = "use rusqlite::Connection;\nlet c = \"ORDER_NOT_EXIST\";\nuse tokio::sync::Notify;\n";
    let code = production_code(bad);
    assert!(
        code.contains("rusqlite") && code.contains("ORDER_NOT_EXIST") && code.contains("tokio")
    );
    let hidden = "// use rusqlite::Connection;\n/// \"ORDER_NOT_EXIST\"\nfn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() {\n        let _ = tokio::spawn(async {});\n    }\n}\nuse reqwest::Client;\n";
    let code = production_code(hidden);
    assert!(
        !code.contains("rusqlite") && !code.contains("ORDER_NOT_EXIST") && !code.contains("tokio"),
        "{code}"
    );
    // Code after a test module is still code.
    assert!(code.contains("use reqwest::Client;"), "{code}");
    assert_eq!(
        test_only_children(
            "src/engine/mod.rs",
            "#[cfg(test)]\npub(crate) mod fake;\nmod driver;\n"
        ),
        vec![
            "src/engine/fake.rs".to_string(),
            "src/engine/fake/mod.rs".to_string()
        ]
    );
    assert_eq!(
        test_only_children("src/engine/worker.rs", "#[cfg(test)]\nmod tests;\n"),
        vec![
            "src/engine/worker/tests.rs".to_string(),
            "src/engine/worker/tests/mod.rs".to_string()
        ]
    );
    // A second clock in the core is found, in the engine and in the store; the clock module
    // itself and code outside the core may read the time.
    let second = production_code(
        "let t = std::time::SystemTime::now();\nlet d = tokio::time::Instant::now();\n",
    );
    let mut found = BTreeSet::new();
    check("src/engine/driver.rs", &second, &mut found);
    check(
        "src/store/payments.rs",
        &production_code("let now = chrono::Utc::now();\n"),
        &mut found,
    );
    check(CLOCK_MODULE, &second, &mut found);
    check("src/api/journal.rs", &second, &mut found);
    let clocks: Vec<(&str, &str)> = found
        .iter()
        .filter(|v| v.0 == CLOCK)
        .map(|v| (v.1.as_str(), v.2))
        .collect();
    assert_eq!(
        clocks,
        vec![
            ("src/engine/driver.rs", "Instant::now"),
            ("src/engine/driver.rs", "SystemTime::now"),
            ("src/store/payments.rs", "Utc::now"),
        ]
    );
    // A delay doubled by hand outside the backoff module is found; the module itself, the
    // sandbox's simulated gateway and a power of ten for money are not.
    let mut found = BTreeSet::new();
    let grown = "let base = rules.backoff_initial.saturating_mul(1u32 << late_attempts);\n";
    check("src/hub/queue.rs", &production_code(grown), &mut found);
    check("src/engine/worker.rs", "delay *= 2;\n", &mut found);
    check(BACKOFF_MODULE, grown, &mut found);
    check(
        "src/gateway/sandbox/notify.rs",
        "backoff *= 2;\n",
        &mut found,
    );
    check(
        "src/domain/money.rs",
        "let scale = 10i64.pow(exp);\n",
        &mut found,
    );
    let delays: Vec<(&str, &str)> = found
        .iter()
        .filter(|v| v.0 == BACKOFF)
        .map(|v| (v.1.as_str(), v.2))
        .collect();
    assert_eq!(
        delays,
        vec![("src/engine/worker.rs", "*= 2"), ("src/hub/queue.rs", "<<")]
    );
    // The scan reads the real tree: the store's own use of rusqlite is seen as code.
    let files = rust_files("src");
    assert!(files.contains(&"src/store/mod.rs".to_string()), "{files:?}");
    assert!(production_code(&read("src/store/mod.rs")).contains("use rusqlite"));
}

#[test]
fn every_source_file_opens_with_its_doc_line() {
    let mut missing = Vec::new();
    for dir in ["src", "tests", "benches", "fuzz"] {
        for f in rust_files(dir) {
            if !read(&f).starts_with("//!") {
                missing.push(f);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` line saying what they own: {missing:#?}"
    );
}

#[test]
fn every_architecture_invariant_says_how_it_is_kept() {
    let arch = read("ARCHITECTURE.md");
    let section = arch
        .split("\n## Invariants")
        .nth(1)
        .expect("ARCHITECTURE.md has an Invariants section");
    let section = section.split("\n## ").next().unwrap();
    let mut bullets: Vec<String> = Vec::new();
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("- ") {
            bullets.push(rest.to_string());
        } else if line.starts_with("  ") {
            if let Some(last) = bullets.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        }
    }
    assert!(bullets.len() >= 9, "{bullets:#?}");
    let unkept: Vec<&String> = bullets
        .iter()
        .filter(|b| !(b.contains("Checked by") || b.contains("Kept by review")))
        .collect();
    assert!(
        unkept.is_empty(),
        "each invariant must end saying \"Checked by …\" (a test) or \"Kept by review\": {unkept:#?}"
    );
    // Every test file an invariant names exists.
    for b in &bullets {
        for word in b.split(['`', ' ', '(', ')', ',', ';']) {
            if word.starts_with("tests/") || word.starts_with("src/") {
                let path = word.split(':').next().unwrap().trim_end_matches('.');
                assert!(
                    root().join(path).exists(),
                    "ARCHITECTURE.md names {path}, which does not exist"
                );
            }
        }
    }
}
