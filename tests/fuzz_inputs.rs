//! The properties of the fuzz targets `admission_review`, `inject_manifests`, `kube_objects`,
//! `accept` and `compact_pod` (`fuzz/inputs.rs`) on stable under `cargo test`: over their
//! corpora (the AdmissionReviews in `fuzz/corpus/admission_review`, the injector's golden
//! inputs in `tests/testdata/inject`, the objects in `fuzz/corpus/kube_objects`, the Accept
//! headers in `fuzz/corpus/accept`, the pods in `fuzz/corpus/compact_pod`) and a
//! bounded number of seeded mutations of them, so CI needs no nightly. `make fuzz` runs them
//! under libFuzzer for longer.

#[path = "../fuzz/inputs.rs"]
mod inputs;
#[path = "../fuzz/mutate.rs"]
mod mutate;

use std::path::{Path, PathBuf};

use mutate::{Rng, mutate};

/// Pieces that change how JSON or YAML reads, and values the injector looks at.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b",",
    b":",
    b"\n",
    b"  ",
    b"- ",
    b"---\n",
    b"null",
    b"true",
    b"0644",
    b"\\u0000",
    b"\xff",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"\"ksit.io/inject\": \"enabled\"",
    b"ksit.io/probe-interval: 1ms\n",
    b"--metrics-bind-address=:8080",
    b"containerPort: 8080",
    b"ksit-exporter",
    b"initContainers",
    b"CREATE",
    b"Pod",
    b"\\\"",
    b"\\n",
    b"\\\\",
    b"\"type\": \"Ready\"",
    b"\"clusterStatuses\": [{\"name\": \"a\"}]",
    b";q=",
    b";version=",
    b"application/openmetrics-text",
    b"*/*",
];

fn files(dir: &Path, suffix: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the corpus is there: {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn replay(
    corpus: Vec<(PathBuf, Vec<u8>)>,
    cases: usize,
    seed: u64,
    holds: fn(&[u8]) -> Result<(), String>,
) {
    let mut rng = Rng(seed);
    for (path, bytes) in corpus {
        if let Err(e) = holds(&bytes) {
            panic!("{}: {e}", path.display());
        }
        for case in 0..cases {
            let input = mutate(&mut rng, &bytes, TOKENS);
            if let Err(e) = holds(&input) {
                panic!(
                    "{} mutation {case}: {e}\ninput: {:?}",
                    path.display(),
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}

#[test]
fn any_admission_review_gets_an_answer() {
    let corpus = files(&root().join("fuzz/corpus/admission_review"), ".json");
    replay(corpus, 1000, 0x2545_f491_4f6c_dd1d, inputs::review_holds);
}

#[test]
fn any_manifest_stream_is_injected_once_or_refused() {
    let corpus = files(&root().join("tests/testdata/inject/manifests"), ".in.yaml");
    replay(corpus, 150, 0x9e37_79b9_7f4a_7c15, inputs::manifests_hold);
}

#[test]
fn any_watched_object_renders_well_formed_series() {
    let corpus = files(&root().join("fuzz/corpus/kube_objects"), ".json");
    replay(corpus, 2000, 0xd1b5_4a32_d192_ed03, inputs::objects_hold);
}

#[test]
fn any_accept_header_picks_a_format() {
    let corpus = files(&root().join("fuzz/corpus/accept"), ".txt");
    replay(corpus, 3000, 0x85eb_ca6b_c2b2_ae35, inputs::accept_holds);
}

#[test]
fn any_pod_read_compactly_gets_the_whole_pods_answer() {
    let corpus = files(&root().join("fuzz/corpus/compact_pod"), ".json");
    replay(corpus, 300, 0x94d0_49bb_1331_11eb, inputs::compact_holds);
}
