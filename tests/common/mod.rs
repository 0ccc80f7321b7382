//! Support shared by the test crates: the test control plane (`scripts/controlplane.sh up`),
//! the stand-in KSIT manager, the exporter binary, an HTTP client, an exposition parser and the
//! one polling helper, [`eventually`].
//!
//! Each test crate includes this with `mod common;` and uses a subset of it.
#![allow(dead_code)]

pub mod exporter;
pub mod fleet;
pub mod grafana;
pub mod http;
pub mod netns;
pub mod poll;
pub mod proc;
pub mod prometheus;
pub mod scrape;

// The names most suites use; a crate that uses none of one would warn.
#[allow(unused_imports)]
pub use exporter::{Exporter, assert_promtool_clean, start};
#[allow(unused_imports)]
pub use poll::eventually;
#[allow(unused_imports)]
pub use scrape::Scrape;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The running control plane, as `scripts/controlplane.sh up` describes it in
/// `target/controlplane/env`.
pub struct ControlPlane {
    pub client: Client,
    pub kubeconfig: PathBuf,
    pub bin_dir: PathBuf,
    pub server_url: String,
    /// etcd's client URL (plain HTTP on loopback), which also serves etcd's /metrics.
    pub etcd_url: String,
    /// Its state directory (`target/controlplane` unless `KSIT_CONTROLPLANE_DIR` named another):
    /// the managers the tests start keep their logs and PID files there.
    pub dir: PathBuf,
}

/// A path in the repository.
pub fn repo_path(p: impl AsRef<Path>) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `export KEY='value'` lines of the env file written by `scripts/controlplane.sh up`.
fn read_env_file(path: &Path) -> Option<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect(),
    )
}

/// The control plane, or `None` (with a loud SKIPPED line) when it is not running.
/// Under `CI=true` a missing control plane is a failure, so no test passes by skipping.
pub async fn control_plane() -> Option<ControlPlane> {
    match connect().await {
        Ok(cp) => Some(cp),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!(
                "CI=true but the test control plane is unusable: {why}. Run `make controlplane-up` first."
            )
        }
        Err(why) => {
            eprintln!("SKIPPED: test control plane unusable ({why}); run `make controlplane-up`");
            None
        }
    }
}

async fn connect() -> Result<ControlPlane, String> {
    let dir = repo_path("target/controlplane");
    let env = read_env_file(&dir.join("env")).unwrap_or_default();
    connect_with(dir, |key: &str| {
        std::env::var(key)
            .ok()
            .or_else(|| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
    })
    .await
}

/// The control plane `scripts/controlplane.sh up` started with `KSIT_CONTROLPLANE_DIR=dir`,
/// read from its env file alone: the process's variables name the default one.
pub async fn control_plane_at(dir: &Path) -> Result<ControlPlane, String> {
    let env = read_env_file(&dir.join("env"))
        .ok_or_else(|| format!("no {}/env: is it up?", dir.display()))?;
    connect_with(dir.to_path_buf(), |key: &str| {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    })
    .await
}

async fn connect_with(
    dir: PathBuf,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ControlPlane, String> {
    let kubeconfig = repo_path(
        lookup("KSIT_TEST_KUBECONFIG")
            .ok_or("no target/controlplane/env and KSIT_TEST_KUBECONFIG unset")?,
    );
    let bin_dir = repo_path(
        lookup("KSIT_CONTROLPLANE_BIN").unwrap_or_else(|| "target/controlplane/bin".into()),
    );

    let etcd_url = lookup("KSIT_CONTROLPLANE_ETCD").ok_or("KSIT_CONTROLPLANE_ETCD unset")?;

    let raw =
        Kubeconfig::read_from(&kubeconfig).map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(raw, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let server_url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
        .await
        .map_err(|_| format!("{server_url} did not answer within 5s"))?
        .map_err(|e| format!("{server_url}: {e}"))?;
    Ok(ControlPlane {
        client,
        kubeconfig,
        bin_dir,
        server_url,
        etcd_url,
        dir,
    })
}

/// Every request kubectl makes ends within this, so no kubectl run waits forever.
const KUBECTL_TIMEOUT: &str = "--request-timeout=60s";

impl ControlPlane {
    /// Runs the control plane's kubectl (built with kube-apiserver, so versions match).
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_stdin(args, "")
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(self.bin_dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(KUBECTL_TIMEOUT)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl from the control plane's bin dir");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .expect("writing kubectl stdin");
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// A kustomization (a directory relative to the repository) rendered as objects.
    pub fn render(&self, dir: &str) -> Vec<serde_json::Value> {
        let out = check(
            self.kubectl(&[
                "create",
                "--dry-run=client",
                "-o",
                "json",
                "-k",
                repo_path(dir).to_str().expect("UTF-8 path"),
            ]),
            &format!("kubectl create --dry-run=client -k {dir}"),
        );
        // kubectl prints one JSON document per object, one after the other.
        serde_json::Deserializer::from_str(&out)
            .into_iter::<serde_json::Value>()
            .map(|v| v.expect("kubectl prints JSON"))
            .collect()
    }

    /// What a `Drop` needs to clean up with kubectl.
    pub fn cleanup(&self) -> Cleanup {
        Cleanup {
            kubectl: self.bin_dir.join("kubectl"),
            kubeconfig: self.kubeconfig.clone(),
        }
    }

    /// `kubectl apply` of YAML text into `namespace`; panics with kubectl's output on failure.
    pub fn apply_yaml(&self, namespace: &str, yaml: &str) {
        check(
            self.kubectl_stdin(&["apply", "-n", namespace, "-f", "-"], yaml),
            "kubectl apply",
        );
    }

    /// `kubectl apply -f`, or `-k` for a kustomization directory, relative to the repository.
    pub fn apply_path(&self, namespace: &str, path: &str) {
        let full = repo_path(path);
        let flag = if full.join("kustomization.yaml").exists() {
            "-k"
        } else {
            "-f"
        };
        check(
            self.kubectl(&[
                "apply",
                "-n",
                namespace,
                flag,
                full.to_str().expect("UTF-8 path"),
            ]),
            "kubectl apply",
        );
    }

    /// Waits up to 60 s until each named CRD is Established. Read through the API rather than
    /// `kubectl wait`, which fails outright on a CRD whose status has no conditions yet.
    pub async fn wait_established(&self, crds: &[&str]) {
        let api = Api::<CustomResourceDefinition>::all(self.client.clone());
        for name in crds {
            eventually(
                Duration::from_secs(60),
                &format!("CRD {name} Established"),
                || async {
                    let crd = api.get_opt(name).await.map_err(|e| e.to_string())?;
                    let conditions = crd
                        .as_ref()
                        .and_then(|c| c.status.as_ref())
                        .and_then(|s| s.conditions.clone())
                        .unwrap_or_default();
                    if conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                    {
                        Ok(())
                    } else if crd.is_none() {
                        Err("no such CRD".to_string())
                    } else {
                        Err(format!("conditions {conditions:?}"))
                    }
                },
            )
            .await;
        }
    }
}

/// A kubeconfig naming `https://127.0.0.1:1`: nothing serves port 1 on loopback here (nor in a
/// pod), so the stand-in manager's connection test (upstream's GET /version) is refused at once
/// and the target is `ConnectionFailed`.
pub fn closed_port_kubeconfig() -> String {
    "apiVersion: v1\nkind: Config\n\
     clusters: [{name: closed, cluster: {server: 'https://127.0.0.1:1'}}]\n\
     users: [{name: nobody, user: {}}]\n\
     contexts: [{name: closed, context: {cluster: closed, user: nobody}}]\n\
     current-context: closed\n"
        .to_string()
}

impl ControlPlane {
    /// This control plane's admin kubeconfig, certificates inline: in a target's Secret it makes
    /// the target ready, since the stand-in manager reaches this API server.
    pub fn kubeconfig_text(&self) -> String {
        std::fs::read_to_string(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()))
    }

    /// Creates or rewrites Secret `<cluster>-kubeconfig` in `namespace` with key `kubeconfig`
    /// holding `kubeconfig`, which upstream's reconciler (and the stand-in's) reads for every
    /// IntegrationTarget with that clusterName. Secrets are not watched: a rewrite takes effect
    /// at the target's next reconcile.
    pub fn put_kubeconfig_secret(&self, namespace: &str, cluster: &str, kubeconfig: &str) {
        // JSON is YAML, and quotes the kubeconfig whatever it holds.
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": format!("{cluster}-kubeconfig")},
            "stringData": {"kubeconfig": kubeconfig},
        });
        self.apply_yaml(namespace, &secret.to_string());
    }

    /// manifests/samples in `namespace`, with the Secrets that make its targets what the samples
    /// say: cluster1 reaching this API server (ready), cluster2 a closed port (ConnectionFailed).
    pub fn apply_samples(&self, namespace: &str) {
        self.put_sample_secrets(namespace);
        self.apply_path(namespace, "manifests/samples");
    }

    /// The Secrets of [`ControlPlane::apply_samples`] alone, for a test that applies the samples
    /// its own way.
    pub fn put_sample_secrets(&self, namespace: &str) {
        self.put_kubeconfig_secret(namespace, "cluster1", &self.kubeconfig_text());
        self.put_kubeconfig_secret(namespace, "cluster2", &closed_port_kubeconfig());
    }
}

/// Panics with stdout and stderr unless the command succeeded; returns stdout.
pub fn check(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs kubectl from a `Drop`, which cannot await: kubectl keeps the clean-up independent of
/// the test's runtime. Best effort, silent.
pub struct Cleanup {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Cleanup {
    pub fn kubectl(&self, args: &[&str]) {
        let _ = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg(KUBECTL_TIMEOUT)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A namespace of the test's own, deleted (best effort) on drop. Without a namespace
/// controller it stays Terminating; `scripts/controlplane.sh down` removes all data.
pub struct TestNamespace {
    pub name: String,
    cleanup: Cleanup,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace named `<prefix>-<pid>-<n>-<time>` with the given labels.
pub async fn test_namespace(
    cp: &ControlPlane,
    prefix: &str,
    labels: &[(&str, &str)],
) -> TestNamespace {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(cp.client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    TestNamespace {
        name,
        cleanup: cp.cleanup(),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        self.cleanup.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ]);
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Sends `SIGTERM` and waits up to `grace` for the exit, then `SIGKILL`s; always reaps. For
/// `Drop`, which cannot await: the wait is on the exit itself (a thread in `wait`), not a sleep.
pub fn terminate(mut child: Child, grace: Duration) -> Option<ExitStatus> {
    let pid = child.id().to_string();
    // The shell's builtin kill: std only sends SIGKILL, and /bin/kill (procps) may be absent.
    let signal = |sig: &str| {
        let _ = Command::new("sh")
            .args(["-c", &format!("kill -{sig} \"$0\""), &pid])
            .stderr(Stdio::null())
            .status();
    };
    signal("TERM");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(grace).or_else(|_| {
        signal("KILL");
        rx.recv()
    });
    let _ = waiter.join();
    status.ok().and_then(Result::ok)
}

/// The stand-in KSIT controller-manager (tests/ksit-manager), stopped on drop.
pub struct ManagerProcess {
    /// `None` only while dropping.
    child: Option<Child>,
    pid_file: PathBuf,
    /// `127.0.0.1:PORT` of its controller-runtime metrics (plain HTTP, `/metrics`).
    pub metrics_addr: String,
    pub metrics_url: String,
    /// `127.0.0.1:PORT` of `/healthz` and `/readyz`.
    pub health_addr: String,
    pub log: PathBuf,
}

/// Starts the manager watching `namespaces` (a test-only deviation: upstream watches all, and
/// tests running at once must not reconcile each other's objects), holding the `ksit.io`
/// Lease in the first one, and waits for its /readyz.
pub async fn start_manager(cp: &ControlPlane, namespaces: &[&str]) -> ManagerProcess {
    start_manager_with(cp, namespaces, &[]).await
}

/// As [`start_manager`], with extra flags (e.g. `--target-failing-requeue=2s`).
pub async fn start_manager_with(
    cp: &ControlPlane,
    namespaces: &[&str],
    extra: &[&str],
) -> ManagerProcess {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let health_addr = format!("127.0.0.1:{}", free_port());
    // The control plane's own directory: its `down` stops what a killed test left.
    let run_dir = cp.dir.join("run");
    std::fs::create_dir_all(&run_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", run_dir.display()));
    let log = cp
        .dir
        .join(format!("ksit-manager-{}.log", namespaces.join("_")));
    let log_file =
        std::fs::File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    let child = Command::new(cp.bin_dir.join("ksit-manager"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .arg(format!("--namespaces={}", namespaces.join(",")))
        .arg(format!("--metrics-bind-address={metrics_addr}"))
        .arg(format!("--health-probe-bind-address={health_addr}"))
        .arg("--leader-elect")
        // Test-only deviation: upstream finds this namespace in its service-account file,
        // which a process outside a pod does not have.
        .arg(format!("--leader-election-namespace={}", namespaces[0]))
        .args(extra)
        .stdout(log_file.try_clone().expect("a second handle on the log"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e}",
                cp.bin_dir.join("ksit-manager").display()
            )
        });
    // `scripts/controlplane.sh down` stops managers whose test died before Drop ran.
    let pid_file = run_dir.join(format!("ksit-manager-{}.pid", child.id()));
    std::fs::write(&pid_file, child.id().to_string()).expect("writing the manager's PID file");
    // Built first, so that a manager that never gets ready is still stopped.
    let mut manager = ManagerProcess {
        child: Some(child),
        pid_file,
        metrics_url: format!("http://{metrics_addr}/metrics"),
        metrics_addr,
        health_addr,
        log,
    };
    eventually(Duration::from_secs(30), "ksit-manager's /readyz", || {
        // Checked before the request: a manager that died will never be ready.
        if let Some(Ok(Some(status))) = manager.child.as_mut().map(Child::try_wait) {
            panic!(
                "ksit-manager exited with {status}; log:\n{}",
                std::fs::read_to_string(&manager.log).unwrap_or_default()
            );
        }
        let addr = manager.health_addr.clone();
        async move {
            let reply = http::try_request(&addr, "GET", "/readyz", &[]).await?;
            match reply.status {
                200 => Ok(()),
                status => Err(format!("{status} {}", reply.text())),
            }
        }
    })
    .await;
    manager
}

impl ManagerProcess {
    /// The current text of its /metrics.
    pub async fn metrics(&self) -> Scrape {
        let reply = http::get(&self.metrics_addr, "/metrics").await;
        assert_eq!(reply.status, 200, "ksit-manager /metrics: {}", reply.text());
        Scrape::parse(&reply.text())
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        // SIGTERM first, so it releases the Lease as upstream's manager does on shutdown.
        if let Some(child) = self.child.take() {
            terminate(child, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Writes `status` into an object's status subresource (the tests play the controllers and the
/// kubelet that would), `namespace` `None` for a cluster-scoped kind.
pub fn patch_status(
    cp: &ControlPlane,
    namespace: Option<&str>,
    kind: &str,
    name: &str,
    status: serde_json::Value,
) {
    let mut args = vec![];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    let patch = serde_json::json!({ "status": status }).to_string();
    args.extend([
        "patch",
        kind,
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
    check(
        cp.kubectl(&args),
        &format!("writing the status of {kind} {name}"),
    );
}

/// A KSIT pod's status as a kubelet would write it: running at `ip`, the manager container
/// restarted `restarts` times, the sidecar never.
pub fn pod_status(ip: &str, restarts: u32) -> serde_json::Value {
    let container = |name: &str, restarts: u32| {
        serde_json::json!({"name": name, "ready": true, "restartCount": restarts,
            "image": format!("{name}:test"), "imageID": "",
            "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}}})
    };
    serde_json::json!({
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [container("manager", restarts), container("ksit-exporter", 0)],
    })
}

/// The `ksit-monitor` Service (no selector: the test plays the endpoints controller) and its
/// Endpoints at `ip`, which the page's scrape config keeps. With `pod` (name, namespace): that
/// pod too, the sidecar's port named `metrics`, and the Endpoints' address pointing at it, so
/// Prometheus's `pod` and `container` labels come from the API as they would in a cluster.
pub fn monitor_yaml(ip: &str, pod: Option<(&str, &str)>) -> String {
    let (pod_yaml, target_ref) = match pod {
        Some((name, namespace)) => (
            format!(
                r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{ app: ksit }}
spec:
  containers:
    - {{ name: manager, image: "manager:test" }}
    - name: ksit-exporter
      image: "ksit-exporter:test"
      ports: [{{ name: metrics, containerPort: 8080, protocol: TCP }}]
---"#
            ),
            format!(", targetRef: {{ kind: Pod, name: {name}, namespace: {namespace} }}"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        r#"{pod_yaml}
apiVersion: v1
kind: Service
metadata:
  name: ksit-monitor
  labels: {{ app: ksit }}
spec:
  ports: [{{ name: metrics, port: 8080, targetPort: 8080, protocol: TCP }}]
---
apiVersion: v1
kind: Endpoints
metadata:
  name: ksit-monitor
  labels: {{ app: ksit }}
subsets:
  - addresses: [{{ ip: "{ip}"{target_ref} }}]
    ports: [{{ name: metrics, port: 8080, protocol: TCP }}]
"#
    )
}

/// A kustomization under target/ (kustomize refuses absolute paths) listing `resources` and
/// `components`, both relative to the repository; removed on drop.
pub struct Overlay(tempfile::TempDir);

impl Overlay {
    pub fn new(resources: &[&str], components: &[&str]) -> Overlay {
        let dir = tempfile::Builder::new()
            .prefix("overlay-")
            .tempdir_in(repo_path("target"))
            .expect("a temporary directory under target/");
        let list = |paths: &[&str]| {
            paths
                .iter()
                .map(|p| format!("../../{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        std::fs::write(
            dir.path().join("kustomization.yaml"),
            format!(
                "resources: [{}]\ncomponents: [{}]\n",
                list(resources),
                list(components)
            ),
        )
        .expect("writing the overlay");
        Overlay(dir)
    }

    pub fn path(&self) -> &str {
        self.0.path().to_str().expect("UTF-8 path")
    }
}

/// The sidecar as it runs in pod `pod` of `namespace`: in the network namespace `netns` on its
/// port 8080, watching that namespace, probing and scraping the stand-in `manager`. The
/// manager, not this pod, holds the Lease, so the objects are exported anyway. Callers add what
/// their test needs.
pub fn sidecar_command(
    netns: &netns::NetNs,
    cp: &ControlPlane,
    namespace: &str,
    pod: &str,
    manager: &ManagerProcess,
) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &netns.name,
        env!("CARGO_BIN_EXE_ksit-exporter"),
    ])
    .env_clear()
    .env("PATH", std::env::var_os("PATH").unwrap_or_default())
    .env("KUBECONFIG", &cp.kubeconfig)
    .env("KSIT_KUBERNETES", "true")
    .env("KSIT_WATCH_NAMESPACES", namespace)
    .env("KSIT_LISTEN_ADDR", format!("{}:8080", netns.ns_ip))
    .env("KSIT_PROBE_INTERVAL", "1s")
    .env("KSIT_PROBE_TIMEOUT", "1s")
    .env("POD_NAME", pod)
    .env("POD_NAMESPACE", namespace)
    .env("KSIT_CR_METRICS", "always")
    .env(
        "KSIT_HEALTH_URLS",
        format!("http://{0}/healthz,http://{0}/readyz", manager.health_addr),
    )
    .env("KSIT_UPSTREAM_METRICS_URL", &manager.metrics_url);
    cmd
}
