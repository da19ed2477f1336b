//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through the same
//! entry point its fuzz target calls, on stable: what fuzzing found stays fixed.

use std::path::Path;

use posd::fuzz_entry::TARGETS;

fn corpus_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn every_target_has_a_corpus_and_every_corpus_a_target() {
    let dirs: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("fuzz/corpus exists")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for (name, _) in TARGETS {
        let dir = corpus_dir().join(name);
        let n = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert!(n > 0, "the corpus of {name} is empty");
        let target =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fuzz/fuzz_targets/{name}.rs"));
        assert!(target.exists(), "{name} has no fuzz target");
    }
    for d in dirs {
        assert!(
            TARGETS.iter().any(|(n, _)| *n == d),
            "fuzz/corpus/{d} belongs to no target in posd::fuzz_entry::TARGETS"
        );
    }
}

#[test]
fn every_corpus_file_replays_without_a_panic() {
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let dir = corpus_dir().join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let data = match std::fs::read(&f) {
                Ok(data) => data,
                // A fuzzer running in this tree (`scripts/fuzz`) removes an input it reduced:
                // it is no longer part of the corpus.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("{}: {e}", f.display()),
            };
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} panics in {name}", f.display());
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}
