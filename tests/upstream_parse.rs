//! The fuzz property of the upstream parser (`fuzz/property.rs`), run on stable under
//! `cargo test`: over the committed corpus (`fuzz/corpus/upstream_parse`, where crashes found by
//! `make fuzz` are added) and a bounded number of seeded mutations of it, so CI needs no
//! nightly. `make fuzz` runs the same property under libFuzzer for longer.

mod parse {
    pub use ksit_exporter::upstream::parse::*;
}
#[path = "../fuzz/mutate.rs"]
mod mutate;
#[path = "../fuzz/property.rs"]
mod property;

use mutate::{Rng, mutate};

use std::path::PathBuf;

/// Pieces a mutation inserts: the text format's punctuation and words that change a parse.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"\"",
    b"\\",
    b",",
    b"=",
    b"\n",
    b" ",
    b"\t",
    b"#",
    b"# TYPE ",
    b"# HELP ",
    b" histogram",
    b" summary",
    b" counter",
    b"_bucket",
    b"_sum",
    b"_count",
    b"_total",
    b"le=\"+Inf\"",
    b"quantile=\"0.5\"",
    b" NaN",
    b" +Inf",
    b" 1e400",
    b" 123",
    b"\xff",
    b"\r",
    b"\\n",
    b"\\\"",
    b"own",
    b":",
    b"__name__",
];
const CASES_PER_FILE: usize = 1500;

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/upstream_parse");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    let files: Vec<_> = files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect();
    assert!(files.len() >= 4, "the committed corpus is there: {files:?}");
    files
}

#[test]
fn the_corpus_holds_the_property() {
    for (path, bytes) in corpus() {
        if let Err(e) = property::check(&bytes) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn mutations_of_the_corpus_hold_the_property() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (path, bytes) in corpus() {
        for case in 0..CASES_PER_FILE {
            let input = mutate(&mut rng, &bytes, TOKENS);
            if let Err(e) = property::check(&input) {
                panic!(
                    "{} mutation {case}: {e}\ninput: {:?}",
                    path.display(),
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
