//! The API server stops and comes back under a running exporter, which recovers by itself.
//!
//! Alone in its test binary: it stops the shared control plane's API server, which no other
//! test may be using at the time (cargo runs test binaries one after another).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{control_plane, eventually, start, test_namespace};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

/// The state letter of process `pid` (`R`, `S`, `Z`...), or `None` once it is gone.
fn process_state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tokio::test]
async fn recovers_after_the_api_server_restarts() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let ns = test_namespace(&cp, "restart", &[]).await;
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ksit.io", "v1alpha1", "IntegrationTarget"),
        "integrationtargets",
    );
    let targets: Api<DynamicObject> = Api::namespaced_with(cp.client.clone(), &ns.name, &ar);
    let target = |name: &str| -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "ksit.io/v1alpha1", "kind": "IntegrationTarget",
            "metadata": {"name": name}, "spec": {"clusterName": name}}),
        )
        .expect("valid object")
    };
    targets
        .create(&PostParams::default(), &target("before"))
        .await
        .expect("create");
    let kc = cp.kubeconfig.display().to_string();
    let e = start(&[
        ("KUBECONFIG", kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns.name.as_str()),
        ("KSIT_CR_METRICS", "always"),
    ])
    .await;
    e.scrape_until("the first target", |s| s.has_label("target", "before"))
        .await;

    let argv = stop("kube-apiserver").await;

    // Down: the watch fails, the API is unreachable, the last series stay, the process lives.
    let s = e
        .scrape_within(Duration::from_secs(60), "the outage seen", |s| {
            s.is("ksit_exporter_kube_up", 0.0)
                && s.is(
                    "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
                    0.0,
                )
        })
        .await;
    assert!(
        s.has_label("target", "before"),
        "last known series are kept: {s}"
    );
    assert_eq!(
        e.get("/healthz").await.status,
        200,
        "liveness never depends on the API server"
    );
    assert_eq!(e.get("/readyz").await.status, 200);

    // Back on the same port, certificates and etcd.
    // Its port must stay (every kubeconfig names it); were it taken, the recovery below fails.
    // It outlives this test: `controlplane.sh down` stops it by its PID file.
    #[allow(clippy::zombie_processes)]
    let _ = spawn("kube-apiserver", &argv);
    eventually(Duration::from_secs(90), "the API server back", || async {
        cp.client
            .apiserver_version()
            .await
            .map_err(|e| e.to_string())
    })
    .await;

    // Recovered without a restart of its own: an object created now shows up.
    targets
        .create(&PostParams::default(), &target("after"))
        .await
        .expect("create");
    let s = e
        .scrape_within(Duration::from_secs(90), "recovery", |s| {
            s.is("ksit_exporter_kube_up", 1.0) && s.has_label("target", "after")
        })
        .await;
    s.assert(
        "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
        1.0,
    );
    assert!(s.has_label("target", "before"), "{s}");

    // The shared control plane is left as the next suites need it. kube-controller-manager's
    // informers lag far behind an API server restart (its EndpointSlice informer stayed "out of
    // date" for over 90 s, and layouts_e2e timed out waiting for slices), so it restarts too.
    // On a port of its own: between its stop and its start another process (an outgoing
    // connection's ephemeral port) can take the old one, and then it exits at once, unnoticed
    // by a check that only connects, and no suite after this one gets a pod.
    let mut argv = stop("kube-controller-manager").await;
    let mut started = false;
    for _ in 0..3 {
        let port = common::free_port();
        for arg in argv.iter_mut().filter(|a| a.starts_with("--secure-port=")) {
            *arg = format!("--secure-port={port}");
        }
        let mut child = spawn("kube-controller-manager", &argv);
        let url = format!("https://127.0.0.1:{port}/healthz");
        started = eventually(
            Duration::from_secs(60),
            "kube-controller-manager serving again, or exited",
            || {
                let exited = child.try_wait().ok().flatten().is_some();
                let healthy = Command::new("curl")
                    .args(["-sfk", "--max-time", "2", &url])
                    .output()
                    .is_ok_and(|o| o.status.success());
                std::future::ready(match (exited, healthy) {
                    (true, _) => Ok(false),
                    (false, true) => Ok(true),
                    (false, false) => Err(format!("no answer from {url} yet")),
                })
            },
        )
        .await;
        if started {
            break;
        }
    }
    assert!(
        started,
        "kube-controller-manager did not start again (three ports tried)"
    );
}

fn pid_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/controlplane/run/{name}.pid"))
}

/// Stops the control plane's process NAME (SIGTERM, then waits for it to exit) and returns its
/// command line.
async fn stop(name: &str) -> Vec<String> {
    let pid = std::fs::read_to_string(pid_file(name))
        .unwrap_or_else(|e| panic!("{name}.pid: {e}"))
        .trim()
        .to_string();
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("{name}'s command line: {e}"))
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    // The API server stops listening at once, but its graceful shutdown takes about 30 s more.
    eventually(Duration::from_secs(90), &format!("{name} to exit"), || {
        std::future::ready(match process_state(&pid) {
            // A zombie has exited: it is the test's init process, not the test, that reaps it.
            None | Some('Z') => Ok(()),
            Some(state) => Err(format!("process {pid} in state {state}")),
        })
    })
    .await;
    argv
}

/// Starts ARGV again as the control plane's NAME, logging where `controlplane.sh up` logs it and
/// recorded where `controlplane.sh down` looks for its PID.
fn spawn(name: &str, argv: &[String]) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/controlplane/{name}.log")))
        .unwrap_or_else(|e| panic!("{name}'s log: {e}"));
    // It outlives this test, in a process group of its own as the script starts it.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} restarts: {e}"));
    std::fs::write(pid_file(name), child.id().to_string()).expect("pid file");
    child
}
