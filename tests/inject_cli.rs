//! `ksit-exporter inject` as users run it: the real binary, through stdin and a file.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const IMAGE: &str = "ghcr.io/kubestellar/ksit-exporter:test";

fn inject(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .arg("inject")
        .args(args)
        // The configuration comes from the flags and these only, whatever the caller's shell has.
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.as_bytes())
        .expect("the binary reads its input");
    child.wait_with_output().expect("the binary finishes")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

fn testdata(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata/inject/manifests");
    std::fs::read_to_string(path.join(name)).expect("test data")
}

#[test]
fn running_inject_twice_changes_nothing_the_second_time() {
    let input = testdata("multi-doc-stream.in.yaml")
        + "---\n"
        + &testdata("ksit-manager-deployment.in.yaml");
    let first = inject(&["-f", "-", "--image", IMAGE], &input);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let once = text(&first.stdout);
    assert!(once.contains("name: ksit-exporter"), "{once}");
    assert!(
        text(&first.stderr).contains("moved to 127.0.0.1:8082"),
        "stderr says what happened"
    );

    let second = inject(&["-f", "-", "--image", IMAGE], &once);
    assert!(second.status.success(), "{}", text(&second.stderr));
    // Byte for byte: the output is already in the form the command writes.
    assert_eq!(text(&second.stdout), once);
    assert!(text(&second.stderr).contains("unchanged: already_injected"));
}

#[test]
fn reads_a_file_and_honours_mode_and_image() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.yaml");
    std::fs::write(&file, testdata("job.in.yaml")).expect("writable temp file");
    let out = inject(
        &[
            "--mode=classic",
            "--image",
            "example/sidecar:1",
            "-f",
            file.to_str().expect("UTF-8 path"),
        ],
        "",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let job: serde_json::Value = serde_saphyr::from_str(&yaml).expect("YAML out");
    let template = &job["spec"]["template"];
    // Classic mode: a regular container, with the image asked for, exactly.
    let sidecar = template["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "ksit-exporter"))
        .unwrap_or_else(|| panic!("no ksit-exporter container:\n{yaml}"));
    assert_eq!(sidecar["image"], "example/sidecar:1", "{yaml}");
    assert_eq!(
        template["metadata"]["annotations"]["ksit.io/inject-status"], "injected: classic",
        "{yaml}"
    );
    assert!(
        text(&out.stderr).contains("warning: classic sidecar mode"),
        "a Job in classic mode is warned about"
    );
}

#[test]
fn bad_input_exits_1_and_names_the_document() {
    let out = inject(&["-f", "-"], "kind: ConfigMap\n---\nkind: [oops\n");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("document 2: invalid YAML"), "{err}");
    assert!(out.stdout.is_empty(), "nothing half-written on stdout");

    let out = inject(&["-f", "/nonexistent/manifests.yaml"], "");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_and_configuration_errors_exit_2() {
    for args in [
        &[][..],
        &["-f", "-", "--mode", "sidecar"],
        &["--frobnicate"],
        &[
            "-f",
            "-",
            "--image",
            "ghcr.io/kubestellar/ksit-exporter 0.1.0",
        ],
    ] {
        let out = inject(args, "");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("usage: ksit-exporter inject"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .args(["inject", "-f", "-"])
        .env_clear()
        .env("KSIT_SIDECAR_MEMORY_LIMIT", "lots")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(r#"KSIT_SIDECAR_MEMORY_LIMIT="lots" is invalid"#));
}

#[test]
fn annotations_the_sidecar_cannot_start_with_are_reported_not_injected() {
    let out = inject(
        &["-f", "-", "--image", IMAGE],
        &(testdata("invalid-annotation.in.yaml")
            + "---\n"
            + "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    ksit.io/probe-interval: soon\n"
            + "spec:\n  containers:\n  - {name: app, image: app}\n  - {name: ksit-exporter, image: busybox}\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    assert!(!yaml.contains(IMAGE), "nothing injected:\n{yaml}");
    let report = text(&out.stderr);
    assert!(
        report.contains(
            "document 1 (Deployment tools/dashboard): skipped: invalid_annotation: ksit.io/upstream-metrics-url="
        ),
        "{report}"
    );
    // The foreign container is named before the annotation would be looked at.
    assert!(
        report.contains("document 2 (Pod p): skipped: name_conflict: a container named ksit-exporter (image \"busybox\") is not the sidecar"),
        "{report}"
    );
}

/// A Pod manifest of about `size` bytes of YAML whose bulk is dense: `shape` names what fills
/// it, as in tests/webhook.rs (`env`, `volumes`, `labels`, `containers`, `ports`, `managers`),
/// or `strings`: one long annotation.
fn dense_manifest(shape: &str, size: usize) -> String {
    use serde_json::{Value, json};
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "large", "labels": {"ksit.io/inject": "true"}, "annotations": {}},
        "spec": {"containers": [{"name": "manager", "image": "ghcr.io/kubestellar/ksit:0.1.0",
            "args": ["--metrics-bind-address=:8080", "--health-probe-bind-address=:8081"]}]},
    });
    let push = |list: &mut Value, entry: Value| match list.as_array_mut() {
        Some(items) => items.push(entry),
        None => *list = json!([entry]),
    };
    let (mut i, mut len) = (0, 0);
    while len < size {
        let e = format!("e{i}");
        len += match shape {
            "env" => {
                push(
                    &mut pod["spec"]["containers"][0]["env"],
                    json!({"name": e, "value": "v"}),
                );
                24 + e.len()
            }
            "volumes" => {
                push(
                    &mut pod["spec"]["volumes"],
                    json!({"name": e, "emptyDir": {}}),
                );
                push(
                    &mut pod["spec"]["containers"][0]["volumeMounts"],
                    json!({"name": e, "mountPath": "/"}),
                );
                46 + 2 * e.len()
            }
            "labels" => {
                pod["metadata"]["labels"][&e] = json!("v");
                pod["metadata"]["annotations"][&e] = json!("v");
                16 + 2 * e.len()
            }
            "containers" => {
                push(&mut pod["spec"]["containers"], json!({"name": e}));
                10 + e.len()
            }
            "ports" => {
                push(
                    &mut pod["spec"]["containers"],
                    json!({"name": e, "ports": [{"containerPort": 8082 + i % 50_000}]}),
                );
                38 + e.len()
            }
            "managers" => {
                push(
                    &mut pod["spec"]["initContainers"],
                    json!({"name": e, "args": ["--metrics-addr=:8080"]}),
                );
                38 + e.len()
            }
            _ => {
                pod["metadata"]["annotations"]["example.com/padding"] = json!("x".repeat(size));
                size
            }
        };
        i += 1;
    }
    serde_saphyr::to_string(&pod).expect("YAML")
}

/// Runs `inject -f -` on `stdin` and returns its exit status and its peak RSS, read from
/// /proc while it runs (VmHWM only grows, so any reading after the peak is the peak).
fn inject_peak(stdin: String) -> (std::process::ExitStatus, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"))
        .args(["inject", "-f", "-", "--image", IMAGE])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut input = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(status) = child.try_wait().expect("the child can be waited on") {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let _ = writer.join();
    (status, peak)
}

/// `inject` reads a dense manifest (hundreds of thousands of tiny containers, env entries,
/// volumes, ports or managers) under 48 MiB peak RSS (the debug binary's): templates are read
/// compactly and documents held as `Doc`s. At 1 MiB each is injected; at 3 MiB most pass the
/// YAML reader's node budget (250,000) and are refused, still under the bound. `labels` is one
/// mapping of ~120,000 keys: the reader keeps no record of them (`Doc` refuses a repeat).
#[test]
fn dense_manifests_stay_under_48_mib() {
    const MIB: u64 = 1024 * 1024;
    let shapes = [
        "env",
        "volumes",
        "labels",
        "containers",
        "ports",
        "managers",
        "strings",
    ];
    for (size, shapes) in [(1 << 20, &shapes[..]), (3 << 20, &shapes[..])] {
        for shape in shapes {
            let (status, peak) = inject_peak(dense_manifest(shape, size));
            eprintln!("{shape} ({size} bytes): {status}, peak RSS {peak} bytes");
            if size == 1 << 20 {
                assert!(status.success(), "{shape}: {status}");
            }
            assert!(
                peak < 48 * MIB,
                "{shape} ({size} bytes): peak RSS {peak} bytes"
            );
        }
    }
}
