//! The fuzz property of the upstream parser (`fuzz/property.rs`), run on stable under
//! `cargo test`: over the committed corpus (`fuzz/corpus/upstream_parse`, where crashes found by
//! `make fuzz` are added) and a bounded number of seeded mutations of it, so CI needs no
//! nightly. `make fuzz` runs the same property under libFuzzer for longer.

mod parse {
    pub use ksit_exporter::upstream::parse::*;
}
#[path = "../fuzz/property.rs"]
mod property;

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

/// xorshift64: reproducible mutations without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 | 1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                // Repeat a line elsewhere: duplicate series, split families.
                let lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
                let line = lines[rng.below(lines.len())].to_vec();
                let at = out[..at]
                    .iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(0, |p| p + 1);
                out.splice(at..at, line.into_iter().chain([b'\n']));
            }
            _ => {
                if let Some(b) = out.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    out
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
            let input = mutate(&mut rng, &bytes);
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
