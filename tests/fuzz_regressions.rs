//! The fuzz targets' inputs on the stable toolchain: every seed, every file of
//! `fuzz/corpus/<target>/` (the minimized corpus a campaign left) and of
//! `fuzz/regressions/<target>/` (inputs that once crashed a target, kept after the fix),
//! through the same entry functions the fuzz targets call (`nano_connect::fuzzing`). So
//! what the fuzzer found stays found without nightly, and CI replays every corpus on
//! each run. `docs/fuzzing.md` explains the targets and the campaign figures.
//!
//! The named tests below are the crashes the campaigns found, each as the smallest
//! input that showed it.

use std::path::{Path, PathBuf};

use nano_connect::fuzzing::{self, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir`, sorted (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `entry` on `input`, naming the input when it panics.
fn replay(target: &str, what: &str, entry: fn(&[u8]), input: &[u8]) {
    let outcome = std::panic::catch_unwind(|| entry(input));
    assert!(
        outcome.is_ok(),
        "fuzz target {target} fails on {what} ({} bytes)",
        input.len()
    );
}

#[test]
fn every_target_has_seeds_and_a_committed_corpus() {
    let dir = fuzz_dir();
    for (name, _) in TARGETS {
        assert!(
            !fuzzing::seeds(name).is_empty(),
            "target {name} has no seeds"
        );
        assert!(
            dir.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "target {name} has no fuzz/fuzz_targets/{name}.rs"
        );
        assert!(
            !files(&dir.join("corpus").join(name)).is_empty(),
            "target {name} has no committed corpus in fuzz/corpus/{name}/"
        );
    }
}

#[test]
fn seeds_corpora_and_regressions_replay() {
    let dir = fuzz_dir();
    let mut replayed = 0;
    for &(name, entry) in TARGETS {
        for (i, seed) in fuzzing::seeds(name).iter().enumerate() {
            replay(name, &format!("seed {i}"), entry, seed);
            replayed += 1;
        }
        for sub in ["corpus", "regressions"] {
            for path in files(&dir.join(sub).join(name)) {
                let input = std::fs::read(&path).expect("a corpus file reads");
                replay(name, &path.display().to_string(), entry, &input);
                replayed += 1;
            }
        }
    }
    assert!(replayed > TARGETS.len());
}

/// Writes each target's seeds into `fuzz/corpus/<target>/seed-N` (run once to start a
/// corpus: `cargo test --test fuzz_regressions -- --ignored write_seed_corpora`).
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand to start a corpus"]
fn write_seed_corpora() {
    let dir = fuzz_dir().join("corpus");
    for (name, _) in TARGETS {
        let target = dir.join(name);
        std::fs::create_dir_all(&target).expect("corpus directory");
        for (i, seed) in fuzzing::seeds(name).iter().enumerate() {
            std::fs::write(target.join(format!("seed-{i}")), seed).expect("seed written");
        }
    }
}
