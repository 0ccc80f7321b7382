//! The kind suite (issue 24): what a real kubelet, scheduler and container runtime do with the
//! sidecar, the webhook and an operator-made Prometheus, on the cluster `make demo` creates.
//!
//! `make test-kind` creates the cluster (scripts/demo.sh up: node image built here, the webhook
//! and ServiceMonitor from the chart, the stand-in manager's pod admitted through the webhook),
//! runs these one at a time (`--ignored --test-threads=1`), and deletes it. Outside that target
//! they are ignored: no cluster, nothing to assert. Each test leaves the cluster as it found it
//! (a deleted pod is replaced and ready again before the test returns).
//!
//! Everything goes through the API server on 127.0.0.1 (kind's port mapping): pods' ports
//! through the API server's pod proxy, Prometheus through its service proxy, the kubelet's
//! cAdvisor figures through the node proxy. Durations are printed (docs/figures.md has them);
//! the assertions are on behaviour.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const CONTEXT: &str = "kind-ksit-demo";
const KSIT_NS: &str = "ksit-system";
const WEBHOOK_NS: &str = "ksit-exporter-system";
const SIDECAR: &str = "ksit-exporter";
const LIMIT_BYTES: u64 = 64 * 1024 * 1024;

fn repo(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn kubectl_cmd(args: &[&str]) -> Command {
    let bin = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/controlplane/bin/kubectl"));
    let mut c = Command::new(bin);
    c.arg("--context").arg(CONTEXT).args(args);
    c
}

fn kubectl(args: &[&str]) -> Output {
    kubectl_cmd(args).output().expect("running kubectl")
}

fn kubectl_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = kubectl_cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// stdout of a kubectl call that must succeed.
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str]) -> Value {
    let text = ok(kubectl(args), &format!("kubectl {}", args.join(" ")));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}: {text}"))
}

fn raw(path: &str) -> Result<String, String> {
    let out = kubectl(&["get", "--raw", path]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `f` every second until it gives `Some`, or panics after `limit` with `what` and the
/// last thing seen.
fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > limit => {
                panic!("{what}: not within {limit:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// The cluster must be there: these tests run only under `make test-kind`, which made it.
fn cluster() {
    if let Err(e) = raw("/readyz") {
        panic!("the kind cluster {CONTEXT} does not answer ({e}); `make test-kind` creates it");
    }
}

fn spec_of<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name} in {}", pod["metadata"]["name"]))
}

fn status_of<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["status"][list]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} entry {name} in {}", pod["metadata"]["name"]))
}

/// The manager's pod that is running, not being deleted, with every container ready.
fn ready_manager_pod() -> Value {
    until("a ready manager pod", Duration::from_secs(240), || {
        let pods = json(&[
            "-n",
            KSIT_NS,
            "get",
            "pods",
            "-l",
            "control-plane=controller-manager",
            "-o",
            "json",
        ]);
        let ready = pods["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|p| {
                    p["metadata"]["deletionTimestamp"].is_null()
                        && p["status"]["phase"] == "Running"
                        && p["status"]["conditions"].as_array().is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        })
                })
                .cloned()
        });
        ready.ok_or_else(|| pods["items"].to_string())
    })
}

fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().unwrap().to_owned()
}

/// The sidecar's /metrics, through the API server's pod proxy.
fn sidecar_metrics(pod: &str) -> Result<String, String> {
    raw(&format!(
        "/api/v1/namespaces/{KSIT_NS}/pods/{pod}:8080/proxy/metrics"
    ))
}

/// Value of the first sample of `name` whose label set contains every one of `labels`.
fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An instant query through the API server's service proxy to the operator-made Prometheus.
fn prom_query(query: &str) -> Result<Vec<Value>, String> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = raw(&format!(
        "/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/query?query={q}"
    ))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    v["data"]["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| body.clone())
}

fn webhook_pods() -> Vec<String> {
    let pods = json(&[
        "-n",
        WEBHOOK_NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=ksit-webhook",
        "-o",
        "json",
    ]);
    pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(pod_name)
        .collect()
}

fn webhook_metrics(pod: &str) -> Result<String, String> {
    raw(&format!(
        "/api/v1/namespaces/{WEBHOOK_NS}/pods/{pod}:9090/proxy/metrics"
    ))
}

/// A server-side dry run of a plain pod in the injected namespace: the sidecar the webhook
/// added (the API server runs admission on dry runs, the webhook says sideEffects None).
fn dry_run_sidecar() -> Result<Value, String> {
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"generateName":"kind-e2e-","namespace":"{KSIT_NS}"}},
        "spec":{{"securityContext":{{"runAsNonRoot":true,"seccompProfile":{{"type":"RuntimeDefault"}}}},
        "containers":[{{"name":"manager","image":"localhost/ksit-manager:demo","command":["/ksit"],
        "securityContext":{{"allowPrivilegeEscalation":false,"capabilities":{{"drop":["ALL"]}}}}}}]}}}}"#
    );
    let out = kubectl_stdin(
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &pod,
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| v["spec"][k].as_array().into_iter().flatten())
        .collect();
    containers
        .iter()
        .find(|c| c["name"] == SIDECAR)
        .map(|c| (*c).clone())
        .ok_or_else(|| {
            let names: Vec<&str> = containers
                .iter()
                .filter_map(|c| c["name"].as_str())
                .collect();
            format!("admitted without the sidecar: containers {names:?}")
        })
}

/// Whether the webhook adds the sidecar to a plain pod now.
fn dry_run_admission_injects() -> Result<(), String> {
    dry_run_sidecar().map(|_| ())
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_kubelet_starts_the_native_sidecar_before_the_manager_and_its_probes_pass() {
    cluster();
    let pod = ready_manager_pod();
    assert!(
        pod["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty()),
        "not scheduled: {}",
        pod["spec"]
    );
    assert!(
        pod["metadata"]["annotations"]["ksit.io/inject-status"]
            .as_str()
            .is_some_and(|s| s.starts_with("injected")),
        "the pod was not admitted through the webhook: {}",
        pod["metadata"]["annotations"]
    );
    let spec = spec_of(&pod, "initContainers", SIDECAR);
    assert_eq!(spec["restartPolicy"], "Always", "a native sidecar: {spec}");
    assert!(
        spec["readinessProbe"].is_object(),
        "the sidecar has a readiness probe"
    );
    let sidecar = status_of(&pod, "initContainerStatuses", SIDECAR);
    let manager = status_of(&pod, "containerStatuses", "manager");
    for (name, s) in [("sidecar", sidecar), ("manager", manager)] {
        assert_eq!(
            s["ready"], true,
            "{name} ready under the kubelet's probes: {s}"
        );
        assert_eq!(s["restartCount"], 0, "{name} never restarted: {s}");
    }
    assert_eq!(sidecar["started"], true);
    let started = |s: &Value| {
        s["state"]["running"]["startedAt"]
            .as_str()
            .expect("running")
            .to_owned()
    };
    // RFC 3339 in UTC with whole seconds: the strings order as the times do.
    assert!(
        started(sidecar) <= started(manager),
        "the sidecar ({}) started before the manager ({})",
        started(sidecar),
        started(manager)
    );
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_sidecar_uses_the_in_cluster_configuration_and_its_rbac_suffices() {
    cluster();
    let pod = ready_manager_pod();
    let name = pod_name(&pod);
    let spec = spec_of(&pod, "initContainers", SIDECAR);
    let env: Vec<&str> = spec["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        !env.contains(&"KUBECONFIG"),
        "no kubeconfig, the in-cluster path: {env:?}"
    );
    assert!(
        spec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"),
        "the projected service-account token is mounted: {}",
        spec["volumeMounts"]
    );
    let body = until("every collector up", Duration::from_secs(120), || {
        let body = sidecar_metrics(&name)?;
        let down: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("ksit_exporter_collector_up{") && l.ends_with(" 0"))
            .collect();
        if down.is_empty() && sample(&body, "ksit_exporter_kube_up", &[]) == Some(1.0) {
            Ok(body)
        } else {
            Err(format!("down: {down:?}"))
        }
    });
    for collector in [
        "pod",
        "workload",
        "lease",
        "integrations",
        "integrationtargets",
    ] {
        assert_eq!(
            sample(
                &body,
                "ksit_exporter_collector_up",
                &[&format!("collector=\"{collector}\"")]
            ),
            Some(1.0),
            "collector {collector} reports"
        );
    }
    let log = ok(
        kubectl(&["-n", KSIT_NS, "logs", &name, "-c", SIDECAR]),
        "the sidecar's log",
    );
    assert!(!log.is_empty(), "the sidecar logs");
    for bad in ["403", "forbidden", "Forbidden"] {
        assert!(
            !log.contains(bad),
            "the sidecar's log has {bad}: {}",
            log.lines().find(|l| l.contains(bad)).unwrap_or_default()
        );
    }
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_namespaces_enforce_pod_security_restricted_and_admit_the_sidecar_and_the_webhook() {
    cluster();
    for ns in [KSIT_NS, WEBHOOK_NS] {
        let v = json(&["get", "namespace", ns, "-o", "json"]);
        assert_eq!(
            v["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted",
            "{ns} enforces restricted"
        );
    }
    // The level is enforced: a pod that breaks it is refused.
    let out = kubectl_stdin(
        &["create", "--dry-run=server", "-f", "-"],
        &format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"kind-e2e-privileged","namespace":"{KSIT_NS}",
            "labels":{{"ksit.io/inject":"false"}}}},
            "spec":{{"containers":[{{"name":"c","image":"localhost/ksit-manager:demo","securityContext":{{"privileged":true}}}}]}}}}"#
        ),
    );
    assert!(!out.status.success(), "a privileged pod is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("violates PodSecurity"),
        "refused by Pod Security: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And what runs there passed it: the injected manager pod and the webhook's pods.
    ready_manager_pod();
    assert!(
        !webhook_pods().is_empty(),
        "the webhook runs in {WEBHOOK_NS}"
    );
    dry_run_admission_injects().expect("a restricted pod with the sidecar is admitted");
}

/// The demo's manager tests each sample target's cluster as upstream's does, against the API
/// server its Secret (manifests/demo/cluster-kubeconfigs.yaml) names: cluster1's, this cluster's
/// own through the kubernetes Service with the pod's service-account files, answers (so it is
/// ClusterReady in the slots --flap-interval=60s leaves alone); cluster2's closed port refuses.
#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_demo_manager_reaches_the_cluster_each_secret_names() {
    cluster();
    let reason = |target: &str| -> Result<(String, String), String> {
        let t = json(&[
            "-n",
            KSIT_NS,
            "get",
            "integrationtarget",
            target,
            "-o",
            "json",
        ]);
        let condition = t["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .ok_or_else(|| format!("no Ready condition: {}", t["status"]))?;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Ok((text(&condition["reason"]), text(&t["status"]["message"])))
    };
    // Two flap periods: a ready slot comes within one, its 30 s requeue at most after.
    until("cluster1 ClusterReady", Duration::from_secs(150), || {
        reason("cluster1").and_then(|(r, m)| {
            if r == "ClusterReady" {
                Ok(())
            } else {
                Err(format!("{r}: {m}"))
            }
        })
    });
    let (r, m) = until("cluster2 not ready", Duration::from_secs(60), || {
        reason("cluster2").and_then(|rm| {
            if rm.0.is_empty() {
                Err("no reason".into())
            } else {
                Ok(rm)
            }
        })
    });
    assert_eq!(r, "ConnectionFailed", "{m}");
    assert!(
        m.contains("127.0.0.1:1") && m.contains("connection refused"),
        "{m}"
    );
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_operator_made_prometheus_scrapes_the_sidecar_and_sees_a_status_flip() {
    cluster();
    let targets = until(
        "the ksit-monitor target up",
        Duration::from_secs(300),
        || {
            let up = up_targets()?;
            if up.is_empty() {
                Err("no up target".into())
            } else {
                Ok(up)
            }
        },
    );
    assert_eq!(targets.len(), 1, "one sidecar, one target: {targets:?}");
    for cluster_name in ["cluster1", "cluster2"] {
        until(
            &format!("ksit_cluster_status for {cluster_name}"),
            Duration::from_secs(120),
            || {
                let r = prom_query(&format!(
                    "ksit_cluster_status{{namespace=\"{KSIT_NS}\",cluster_name=\"{cluster_name}\"}}"
                ))?;
                if r.len() == 1 {
                    Ok(())
                } else {
                    Err(format!("{r:?}"))
                }
            },
        );
    }

    // A flip made in the API: an IntegrationTarget no manager reconciles (the demo's manager
    // watches ksit-system only), its status written here.
    let ns = "kind-e2e-flip";
    kubectl(&["create", "namespace", ns]);
    let target = format!(
        "apiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata:\n  name: flip\n  namespace: {ns}\nspec:\n  clusterName: flip\n"
    );
    ok(
        kubectl_stdin(&["apply", "-f", "-"], &target),
        "creating the IntegrationTarget",
    );
    let set_ready = |ready: bool| {
        ok(
            kubectl(&[
                "-n",
                ns,
                "patch",
                "integrationtarget",
                "flip",
                "--subresource=status",
                "--type=merge",
                "-p",
                &format!(r#"{{"status":{{"ready":{ready},"message":"set by kind_e2e"}}}}"#),
            ]),
            "writing the status",
        )
    };
    let query = format!("ksit_cluster_status{{namespace=\"{ns}\",target=\"flip\"}}");
    let value = |q: &str| -> Result<String, String> {
        let r = prom_query(q)?;
        r.first()
            .and_then(|s| s["value"][1].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("{r:?}"))
    };
    set_ready(true);
    until(
        "the new target ready in Prometheus",
        Duration::from_secs(180),
        || value(&query).and_then(|v| if v == "1" { Ok(()) } else { Err(v) }),
    );
    let flipped = Instant::now();
    set_ready(false);
    until("the flip in Prometheus", Duration::from_secs(180), || {
        value(&query).and_then(|v| if v == "0" { Ok(()) } else { Err(v) })
    });
    eprintln!(
        "flip made in the API -> Prometheus: {:?}",
        flipped.elapsed()
    );
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_managers_own_series_are_merged_into_the_sidecars_metrics() {
    cluster();
    let pod = ready_manager_pod();
    let manager = spec_of(&pod, "containers", "manager");
    let args: Vec<&str> = manager["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.contains(&"--metrics-bind-address=127.0.0.1:8082"),
        "the webhook moved the manager's metrics off 8080: {args:?}"
    );
    let name = pod_name(&pod);
    let body = until(
        "the manager's reconcile series",
        Duration::from_secs(120),
        || {
            let body = sidecar_metrics(&name)?;
            if body.contains("controller_runtime_reconcile_total{") {
                Ok(body)
            } else {
                Err(body
                    .lines()
                    .filter(|l| l.starts_with("# TYPE"))
                    .count()
                    .to_string())
            }
        },
    );
    assert!(
        body.contains("controller=\"integrationtarget\""),
        "the integrationtarget controller's series"
    );
    assert!(
        body.contains("ksit_cluster_status{"),
        "and the sidecar's own series"
    );
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn deleting_the_pod_the_sidecar_drains_and_exits_zero_within_the_grace_period() {
    cluster();
    let pod = ready_manager_pod();
    let name = pod_name(&pod);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(30);
    // Watch the pod's updates: the kubelet writes the containers' terminated states before the
    // pod is removed.
    let mut watch = kubectl_cmd(&[
        "-n",
        KSIT_NS,
        "get",
        "pod",
        &name,
        "--watch",
        "-o",
        "json",
        "--output-watch-events",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut last = None;
        let stream = serde_json::Deserializer::from_reader(stdout).into_iter::<Value>();
        for event in stream.flatten() {
            let done = event["type"] == "DELETED";
            if let Some(s) = event["object"]["status"]["initContainerStatuses"]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == SIDECAR))
                && s["state"]["terminated"].is_object()
            {
                last = Some(s.clone());
            }
            if done {
                break;
            }
        }
        last
    });
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    ok(
        kubectl(&[
            "-n",
            KSIT_NS,
            "delete",
            "pod",
            &name,
            "--wait=true",
            "--timeout=120s",
        ]),
        "deleting the pod",
    );
    let took = start.elapsed();
    let _ = watch.kill();
    let _ = watch.wait();
    let terminated = reader
        .join()
        .unwrap()
        .expect("the sidecar's terminated state was reported");
    eprintln!(
        "pod deleted in {took:?}; the sidecar: {}",
        terminated["state"]["terminated"]
    );
    assert_eq!(
        terminated["state"]["terminated"]["exitCode"], 0,
        "the sidecar exits 0 on the kubelet's SIGTERM: {terminated}"
    );
    assert!(
        took < Duration::from_secs(grace + 10),
        "gone within the grace period ({grace} s): {took:?}"
    );
    // The Deployment's replacement, admitted through the webhook again, before the next test.
    let next = ready_manager_pod();
    let next_name = pod_name(&next);
    assert_ne!(next_name, name);
    status_of(&next, "initContainerStatuses", SIDECAR);
    // And Prometheus finds it through the operator-made configuration.
    until("the new pod's target up", Duration::from_secs(180), || {
        up_targets()?
            .iter()
            .any(|t| t["labels"]["pod"] == next_name.as_str())
            .then_some(())
            .ok_or_else(|| format!("no up target for {next_name}"))
    });
    eprintln!(
        "pod deleted -> replacement admitted, started and its target up in Prometheus: {:?}",
        start.elapsed()
    );
}

/// Prometheus's up targets of the ksit-monitor ServiceMonitor.
fn up_targets() -> Result<Vec<Value>, String> {
    let body = raw(
        "/api/v1/namespaces/monitoring/services/prometheus-operated:9090/proxy/api/v1/targets",
    )?;
    let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    Ok(v["data"]["activeTargets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["scrapePool"]
                .as_str()
                .is_some_and(|p| p.contains("ksit-monitor"))
                && t["health"] == "up"
        })
        .cloned()
        .collect())
}

/// openssl: a CA, and a serving certificate for the webhook's Service name signed by it.
fn new_ca_and_serving_pair(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dns = format!("ksit-webhook.{WEBHOOK_NS}.svc");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kind-e2e rotated CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={dns}"),
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        format!("subjectAltName=DNS:{dns},DNS:{dns}.cluster.local\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "tls.crt",
        "-extfile",
        "ext",
    ]);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("ca.crt"), read("tls.crt"), read("tls.key"))
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn a_certificate_rewritten_in_its_secret_reaches_the_webhook_with_no_failed_admission() {
    cluster();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pods = webhook_pods();
    assert!(!pods.is_empty());
    let reloads = |pod: &str| {
        webhook_metrics(pod)
            .ok()
            .and_then(|b| sample(&b, "ksit_webhook_certificate_reloads_total", &[]))
            .unwrap_or(0.0)
    };
    let before: Vec<f64> = pods.iter().map(|p| reloads(p)).collect();
    dry_run_admission_injects().expect("admission works before the rotation");

    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = new_ca_and_serving_pair(dir.path());
    // The API server trusts the old CA and the new one while the new pair rolls out.
    let config = json(&[
        "get",
        "mutatingwebhookconfiguration",
        "ksit-exporter",
        "-o",
        "json",
    ]);
    let webhooks = config["webhooks"].as_array().unwrap();
    let old = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(webhooks[0]["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let bundle = b64(&format!("{}\n{ca}", old.trim_end()));
    let patch: Vec<Value> = (0..webhooks.len())
        .map(|i| serde_json::json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    ok(
        kubectl(&[
            "patch",
            "mutatingwebhookconfiguration",
            "ksit-exporter",
            "--type=json",
            "-p",
            &Value::from(patch).to_string(),
        ]),
        "trusting both CAs",
    );
    let secret = serde_json::json!({"data": {"ca.crt": b64(&ca), "tls.crt": b64(&crt), "tls.key": b64(&key)}});
    let start = Instant::now();
    ok(
        kubectl(&[
            "-n",
            WEBHOOK_NS,
            "patch",
            "secret",
            "ksit-webhook-tls",
            "--type=merge",
            "-p",
            &secret.to_string(),
        ]),
        "rewriting the Secret",
    );
    let mut admissions = 0;
    let mut failed = Vec::new();
    let reached = until(
        "the new certificate in every webhook pod",
        Duration::from_secs(240),
        || {
            admissions += 1;
            if let Err(e) = dry_run_admission_injects() {
                failed.push(e);
            }
            let now: Vec<f64> = pods.iter().map(|p| reloads(p)).collect();
            if now.iter().zip(&before).all(|(n, b)| n > b) {
                Ok(start.elapsed())
            } else {
                Err(format!("reloads {now:?} (before {before:?})"))
            }
        },
    );
    for _ in 0..5 {
        admissions += 1;
        if let Err(e) = dry_run_admission_injects() {
            failed.push(e);
        }
    }
    eprintln!(
        "Secret rewritten -> webhook serving it: {reached:?}; {admissions} admissions meanwhile"
    );
    assert!(
        failed.is_empty(),
        "{} of {admissions} admissions failed: {failed:?}",
        failed.len()
    );
}

/// The sidecar's working set as the kubelet's cAdvisor accounts it, and its container's state.
fn sidecar_memory(pod: &str) -> Result<u64, String> {
    let node = json(&["get", "nodes", "-o", "json"])["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let summary: Value =
        serde_json::from_str(&raw(&format!("/api/v1/nodes/{node}/proxy/stats/summary"))?)
            .map_err(|e| e.to_string())?;
    summary["pods"]
        .as_array()
        .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == pod))
        .and_then(|p| p["containers"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["name"] == SIDECAR))
        .and_then(|c| c["memory"]["workingSetBytes"].as_u64())
        .ok_or_else(|| format!("no {SIDECAR} memory figure for {pod} yet"))
}

#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_sidecar_stays_under_its_memory_limit_idle_and_with_1000_integration_targets() {
    cluster();
    let pod = ready_manager_pod();
    let name = pod_name(&pod);
    let spec = spec_of(&pod, "initContainers", SIDECAR);
    assert_eq!(
        spec["resources"]["limits"]["memory"], "64Mi",
        "the limit the kubelet enforces"
    );
    let idle = until(
        "the kubelet's figure for the sidecar",
        Duration::from_secs(120),
        || sidecar_memory(&name),
    );
    assert!(idle < LIMIT_BYTES, "idle working set {idle} under 64Mi");

    let ns = "kind-e2e-scale";
    kubectl(&["create", "namespace", ns]);
    let many: String = (0..1000)
        .map(|i| {
            format!("---\napiVersion: ksit.io/v1alpha1\nkind: IntegrationTarget\nmetadata:\n  name: t{i}\n  namespace: {ns}\nspec:\n  clusterName: c{i}\n")
        })
        .collect();
    ok(
        kubectl_stdin(&["apply", "--server-side", "-f", "-"], &many),
        "creating 1,000 IntegrationTargets",
    );
    until(
        "1,000 more targets in the sidecar",
        Duration::from_secs(180),
        || {
            let body = sidecar_metrics(&name)?;
            let n = body
                .lines()
                .filter(|l| {
                    l.starts_with("ksit_cluster_status{")
                        && l.contains(&format!("namespace=\"{ns}\""))
                })
                .count();
            if n == 1000 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    );
    // The kubelet's figure follows with cAdvisor's housekeeping (10-15 s).
    std::thread::sleep(Duration::from_secs(20));
    let loaded = sidecar_memory(&name).unwrap();
    eprintln!("sidecar working set: idle {idle} B, with 1,000 more targets {loaded} B");
    assert!(
        loaded < LIMIT_BYTES,
        "working set {loaded} under 64Mi with 1,000 targets"
    );
    let pod = json(&["-n", KSIT_NS, "get", "pod", &name, "-o", "json"]);
    let s = status_of(&pod, "initContainerStatuses", SIDECAR);
    assert_eq!(s["restartCount"], 0, "no restart: {s}");
    assert!(
        s["lastState"]["terminated"].is_null(),
        "never OOMKilled: {s}"
    );
    kubectl(&["delete", "namespace", ns, "--wait=false"]);
}

/// `helm upgrade` of the demo's release with `--reuse-values` and `sets`, waiting for it.
fn helm_upgrade(sets: &[&str]) {
    let bin = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo("target/controlplane/bin/helm"));
    let mut c = Command::new(bin);
    c.args(["--kube-context", CONTEXT, "upgrade", "ksit-exporter"])
        .arg(repo("charts/ksit-exporter"))
        .args([
            "--namespace",
            WEBHOOK_NS,
            "--reuse-values",
            "--wait",
            "--timeout",
            "300s",
        ]);
    for s in sets {
        c.args(["--set", s]);
    }
    ok(
        c.output().expect("running helm"),
        &format!("helm upgrade {sets:?}"),
    );
}

/// The manager's pod made again through the upgraded webhook, ready, its sidecar probed over
/// HTTPS when `https`. The webhook's Service may send admissions to its old pod for a moment
/// after the rollout (and with failurePolicy Ignore a pod is then created without the sidecar),
/// so the restart waits until a dry run gets the new sidecar.
fn reinject_manager(https: bool) -> Value {
    ok(
        kubectl(&[
            "-n",
            WEBHOOK_NS,
            "rollout",
            "status",
            "deployment/ksit-webhook",
            "--timeout=300s",
        ]),
        "the webhook rolled out",
    );
    let scheme = if https { "HTTPS" } else { "HTTP" };
    let probed = |c: &Value| c["readinessProbe"]["httpGet"]["scheme"] == scheme;
    until(
        "the new webhook injecting",
        Duration::from_secs(120),
        || {
            let sidecar = dry_run_sidecar()?;
            if probed(&sidecar) {
                Ok(())
            } else {
                Err(format!("the old sidecar: {sidecar}"))
            }
        },
    );
    ok(
        kubectl(&[
            "-n",
            KSIT_NS,
            "rollout",
            "restart",
            "deployment/ksit-controller-manager",
        ]),
        "rollout restart",
    );
    ok(
        kubectl(&[
            "-n",
            KSIT_NS,
            "rollout",
            "status",
            "deployment/ksit-controller-manager",
            "--timeout=300s",
        ]),
        "the manager rolled out",
    );
    until(
        "the manager's new pod with the new sidecar",
        Duration::from_secs(240),
        || {
            let pod = ready_manager_pod();
            let has = pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == SIDECAR && probed(c));
            if has {
                Ok(pod)
            } else {
                Err(pod["spec"].to_string())
            }
        },
    )
}

/// The chart's metricsSecurity on a real kubelet and a real prometheus-operator: the sidecar
/// serves HTTPS from a Secret and checks callers with the API server; the operator-made
/// Prometheus scrapes it through the chart's ServiceMonitor (scheme https, the Secret's CA, its
/// own token, the metrics-reader grant); a caller without a token gets a 401; the probes pass
/// over HTTPS. Then back to plain HTTP, as the other checks expect.
#[test]
#[ignore = "needs the kind cluster: make test-kind"]
fn the_charts_servicemonitor_scrapes_the_sidecar_over_https_with_the_check_on() {
    cluster();
    let dir = tempfile::tempdir().unwrap();
    let name = format!("ksit-monitor.{KSIT_NS}.svc");
    ksit_exporter::webhook::certs::issue(dir.path(), &[name], 2).expect("a serving pair");
    let file = |f: &str| format!("--from-file={f}={}", dir.path().join(f).display());
    let secret = ok(
        kubectl(&[
            "-n",
            KSIT_NS,
            "create",
            "secret",
            "generic",
            "ksit-exporter-metrics-tls",
            "--type=kubernetes.io/tls",
            &file("tls.crt"),
            &file("tls.key"),
            &file("ca.crt"),
            "--dry-run=client",
            "-o",
            "yaml",
        ]),
        "the Secret",
    );
    ok(
        kubectl_stdin(&["apply", "-f", "-"], &secret),
        "kubectl apply the Secret",
    );
    // Back to plain HTTP however this ends, so that a failure here does not fail the checks
    // after it.
    let plain_again = PlainAgain;
    let started = Instant::now();
    helm_upgrade(&[
        "metricsSecurity.tlsSecret=ksit-exporter-metrics-tls",
        "metricsSecurity.auth=kubernetes",
        "metricsSecurity.readers[0].name=prometheus",
        "metricsSecurity.readers[0].namespace=monitoring",
    ]);
    let pod = reinject_manager(true);
    let sidecar = spec_of(&pod, "initContainers", SIDECAR);
    assert_eq!(
        sidecar["readinessProbe"]["httpGet"]["scheme"], "HTTPS",
        "{sidecar}"
    );
    assert_eq!(
        status_of(&pod, "initContainerStatuses", SIDECAR)["ready"],
        true
    );
    let name_of_pod = pod_name(&pod);
    // Through the API server's pod proxy, which sends no token of the caller's: a 401, which
    // kubectl reports as its own "must be logged in".
    let proxied = raw(&format!(
        "/api/v1/namespaces/{KSIT_NS}/pods/https:{name_of_pod}:8080/proxy/metrics"
    ));
    assert!(
        proxied
            .as_ref()
            .is_err_and(|e| e.contains("asked for the client to provide credentials")),
        "{proxied:?}"
    );
    assert_eq!(
        raw(&format!(
            "/api/v1/namespaces/{KSIT_NS}/pods/https:{name_of_pod}:8080/proxy/healthz"
        ))
        .as_deref(),
        Ok("ok\n")
    );
    let target = until(
        "an up https target of the pod",
        Duration::from_secs(240),
        || {
            let targets = up_targets()?;
            targets
                .iter()
                .find(|t| {
                    t["labels"]["pod"] == name_of_pod.as_str()
                        && t["scrapeUrl"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("https://"))
                })
                .cloned()
                .ok_or_else(|| format!("{targets:?}"))
        },
    );
    until(
        "ksit_cluster_status from the https target",
        Duration::from_secs(120),
        || {
            let got = prom_query(&format!("ksit_cluster_status{{pod=\"{name_of_pod}\"}}"))?;
            if got.is_empty() {
                Err("none yet".into())
            } else {
                Ok(())
            }
        },
    );
    eprintln!(
        "kind: https scrape of {} up {:.1}s after the upgrade",
        target["scrapeUrl"],
        started.elapsed().as_secs_f64()
    );

    drop(plain_again);
}

/// Puts the release back to a plain-HTTP sidecar and waits for its target, on drop.
struct PlainAgain;

impl Drop for PlainAgain {
    fn drop(&mut self) {
        helm_upgrade(&[
            "metricsSecurity.tlsSecret=",
            "metricsSecurity.auth=none",
            "metricsSecurity.readers=null",
        ]);
        let pod = reinject_manager(false);
        let plain = pod_name(&pod);
        until("the plain target back", Duration::from_secs(240), || {
            let targets = up_targets()?;
            targets
                .iter()
                .find(|t| {
                    t["labels"]["pod"] == plain.as_str()
                        && t["scrapeUrl"]
                            .as_str()
                            .is_some_and(|u| u.starts_with("http://"))
                })
                .map(|_| ())
                .ok_or_else(|| format!("{targets:?}"))
        });
        let _ = kubectl(&[
            "-n",
            KSIT_NS,
            "delete",
            "secret",
            "ksit-exporter-metrics-tls",
        ]);
    }
}
