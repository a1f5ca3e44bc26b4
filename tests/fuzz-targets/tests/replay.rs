//! The fuzz targets on stable, as CI runs them: every file of each seed
//! corpus (`fuzz/corpus/<target>/`: the hand-made seeds and what the
//! fuzzer kept), then random inputs from a fixed seed (fresh bytes, and
//! corpus files mutated), a few thousand per target within a time budget.
//!
//! `FUZZ_WRITE_SEEDS=1` makes `seeds_are_committed` (re)write the
//! hand-made seeds instead of checking them.

use fuzz_targets::{TARGETS, Target, seeds};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn target(name: &str) -> Target {
    *TARGETS.iter().find(|t| t.0 == name).expect("a target")
}

/// The corpus files of `target`, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.expect("a directory entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("a corpus file"))
        })
        .collect();
    files.sort();
    files
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A random input: fresh bytes, or a corpus file with a few mutations
/// (byte changes, inserts, deletes, a splice of another file).
fn random_input(rng: &mut Rng, corpus: &[(String, Vec<u8>)], max_fresh: usize) -> Vec<u8> {
    if rng.next().is_multiple_of(3) || corpus.is_empty() {
        let len = rng.below(max_fresh + 1);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut v = corpus[rng.below(corpus.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            _ => {
                let other = &corpus[rng.below(corpus.len())].1;
                let (i, j) = (rng.below(v.len() + 1), rng.below(other.len() + 1));
                v.truncate(i);
                v.extend_from_slice(&other[j..]);
            }
        }
    }
    v
}

/// Every corpus file of `name`, then up to `n` random inputs within
/// `budget`.
fn replay(name: &str, n: usize, max_fresh: usize, budget: Duration) {
    let (_, run) = target(name);
    let files = corpus(name);
    assert!(!files.is_empty(), "the {name} corpus is empty");
    for (file, data) in &files {
        if std::panic::catch_unwind(|| run(data)).is_err() {
            panic!("{name}: corpus file {file} fails");
        }
    }
    let mut rng = Rng(0x5eed ^ name.len() as u64);
    let start = Instant::now();
    let mut done = 0;
    while done < n && start.elapsed() < budget {
        let input = random_input(&mut rng, &files, max_fresh);
        if std::panic::catch_unwind(|| run(&input)).is_err() {
            let path = std::env::temp_dir().join(format!("fuzz_targets-{name}-failure"));
            let _ = std::fs::write(&path, &input);
            panic!(
                "{name}: random input {done} fails (saved as {}): {input:02x?}",
                path.display()
            );
        }
        done += 1;
    }
    println!(
        "{name}: {} corpus files, {done} random inputs in {:.1?}",
        files.len(),
        start.elapsed()
    );
}

#[test]
fn host_call() {
    replay("host_call", 3000, 96, Duration::from_secs(6));
}

#[test]
fn guest_call() {
    replay("guest_call", 3000, 96, Duration::from_secs(6));
}

#[test]
fn vm_layer() {
    replay("vm_layer", 3000, 96, Duration::from_secs(6));
}

#[test]
fn boot_image() {
    replay("boot_image", 5000, 4096, Duration::from_secs(4));
}

#[test]
fn device_tree() {
    replay("device_tree", 5000, 4096, Duration::from_secs(4));
}

#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for (name, _) in TARGETS {
        let dir = corpus_dir(name);
        if write {
            std::fs::create_dir_all(&dir).expect("the corpus directory");
        }
        for (seed, bytes) in seeds::seeds(name) {
            let path = dir.join(format!("seed-{seed}"));
            if write {
                std::fs::write(&path, &bytes).expect("a seed file");
            } else {
                let committed = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{}: {e} (FUZZ_WRITE_SEEDS=1 writes it)", path.display())
                });
                assert_eq!(
                    committed,
                    bytes,
                    "{} differs from its generator",
                    path.display()
                );
            }
        }
    }
}

/// Every target has its cargo-fuzz wrapper, declared in `fuzz/Cargo.toml`
/// and calling this target's function, and its seeds.
#[test]
fn every_target_has_a_wrapper() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let path = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
        let wrapper =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            wrapper.contains(&format!("fuzz_targets::{name}::run(data)")),
            "{} does not call fuzz_targets::{name}::run",
            path.display()
        );
        assert!(
            manifest.contains(&format!(
                "name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\""
            )),
            "fuzz/Cargo.toml does not declare the {name} binary"
        );
        assert!(!seeds::seeds(name).is_empty(), "{name} has no seeds");
    }
}
