//! Golden-file tests of sidecar injection, the way Istio tests its injector: each
//! `tests/testdata/inject/<suite>/NAME.in.yaml` has a `NAME.golden.yaml` holding the expected
//! result. Both are compared as parsed values, not bytes. `REFRESH_GOLDEN=1 cargo test --test
//! inject_golden` rewrites the goldens from the current output (review the diff before committing).
//!
//! Suites:
//! - `function`: one pod through `inject()` with the webhook's defaults (nothing is opted in by
//!   default). Input: `{namespaceLabels, config (KSIT_* variables), pod}`; golden:
//!   `{decision, reason, detail, warnings, pod}`.
//! - `manifests`: a YAML stream through `ksit-exporter inject` (`inject_manifests`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use ksit_exporter::inject::manifests::inject_manifests;
use ksit_exporter::inject::{InjectorConfig, Outcome, SkipReason, inject};
use serde_json::{Value, json};

/// A fixed image, so goldens do not change with the crate version.
const IMAGE: &str = "ghcr.io/kubestellar/ksit-exporter:test";

fn suite_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/testdata/inject")
        .join(suite)
}

fn parse(yaml: &str, what: &Path) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", what.display()))
}

/// Runs `produce` on every input of a suite and checks or refreshes its golden. Returns the
/// number of cases so a suite cannot silently become empty.
fn run_suite(suite: &str, produce: impl Fn(&str, &Path) -> String) -> usize {
    let dir = suite_dir(suite);
    let refresh = std::env::var_os("REFRESH_GOLDEN").is_some_and(|v| v == "1");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8 file name")
        })
        .collect();
    names.sort();

    // A golden whose input is gone tests nothing and would hide the removal.
    let orphans: Vec<_> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".golden.yaml"))
        .filter(|stem| !names.contains(&format!("{stem}.in.yaml")))
        .collect();
    assert!(
        orphans.is_empty(),
        "{suite}: goldens without an input: {orphans:?}"
    );

    let mut failures = Vec::new();
    let mut cases = 0;
    for stem in names.iter().filter_map(|n| n.strip_suffix(".in.yaml")) {
        cases += 1;
        let input_path = dir.join(format!("{stem}.in.yaml"));
        let golden_path = dir.join(format!("{stem}.golden.yaml"));
        let input = std::fs::read_to_string(&input_path).expect("readable input");
        let output = produce(&input, &input_path);
        if refresh {
            std::fs::write(&golden_path, &output).expect("writable golden");
            continue;
        }
        let Ok(golden) = std::fs::read_to_string(&golden_path) else {
            failures.push(format!(
                "{}: no golden; run with REFRESH_GOLDEN=1 to create it",
                golden_path.display()
            ));
            continue;
        };
        if parse(&output, &input_path) != parse(&golden, &golden_path) {
            failures.push(format!(
                "{}: output differs from the golden (REFRESH_GOLDEN=1 rewrites it); got:\n{output}",
                golden_path.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    cases
}

fn manifests_config() -> InjectorConfig {
    let mut cfg =
        InjectorConfig::from_vars([("KSIT_SIDECAR_IMAGE".to_string(), IMAGE.to_string())])
            .expect("valid test config");
    // What `ksit-exporter inject` does: running it is the request to inject.
    cfg.default_opt_in = true;
    cfg
}

#[test]
fn manifests_golden() {
    let cfg = manifests_config();
    let cases = run_suite("manifests", |input, path| {
        let out = inject_manifests(input, &cfg)
            .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()))
            .yaml;
        // Idempotency: injecting the output again yields the output.
        let again = inject_manifests(&out, &cfg)
            .expect("the output is valid input")
            .yaml;
        assert_eq!(
            parse(&again, path),
            parse(&out, path),
            "{}: a second run changed the output:\n{again}",
            path.display()
        );
        out
    });
    assert!(cases >= 8, "manifests suite has only {cases} cases");
}

/// The function's input case: a pod and where it lives.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FunctionCase {
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    pod: Pod,
}

fn outcome_value(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Injected { pod, warnings } => {
            json!({"decision": "injected", "warnings": warnings, "pod": pod})
        }
        Outcome::Skipped {
            reason,
            detail,
            pod,
        } => {
            json!({"decision": "skipped", "reason": reason.as_str(), "detail": detail, "pod": pod})
        }
    }
}

#[test]
fn function_golden() {
    let cases = run_suite("function", |input, path| {
        let case: FunctionCase =
            serde_saphyr::from_str(input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut vars = vec![("KSIT_SIDECAR_IMAGE".to_string(), IMAGE.to_string())];
        vars.extend(case.config);
        let cfg = InjectorConfig::from_vars(vars).expect("valid case config");
        let outcome = inject(&case.pod, &case.namespace_labels, &cfg);

        // Reinvocation (the webhook's reinvocationPolicy: IfNeeded) must change nothing more.
        if let Some(pod) = outcome.pod() {
            let again = inject(pod, &case.namespace_labels, &cfg);
            match (&outcome, &again) {
                (
                    Outcome::Injected { .. },
                    Outcome::Skipped {
                        reason, pod: None, ..
                    },
                ) => {
                    assert_eq!(*reason, SkipReason::AlreadyInjected, "{}", path.display());
                }
                (Outcome::Skipped { .. }, _) => {
                    assert_eq!(
                        again.pod(),
                        Some(pod),
                        "{}: a refusal is stable",
                        path.display()
                    );
                }
                _ => panic!("{}: reinjection gave {again:?}", path.display()),
            }
        }
        serde_saphyr::to_string(&outcome_value(&outcome)).expect("serialisable outcome")
    });
    assert!(cases >= 6, "function suite has only {cases} cases");
}
