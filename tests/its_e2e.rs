//! ManagedClusters from KubeStellar's ITS, a second API server (docs/upstream.md: the ITS is a
//! vcluster with its own API server by default). Two real control planes: the sidecar's own
//! (the hosting cluster, with a ManagedCluster that must NOT be reported) and the ITS (a
//! second `scripts/controlplane.sh up` in target/controlplane-its, as tests/fleet_e2e.rs
//! starts one). With `KSIT_ITS_KUBECONFIG` the exporter reports the ITS's ManagedClusters and
//! only those, the status page says where they were read from; the ITS's API server killed
//! shows as `ksit_exporter_collector_up{collector="managedclusters"} 0` while the hosting
//! cluster's collectors and `ksit_exporter_kube_up` stay 1, and started again it recovers
//! without a restart of the exporter.
//!
//! Needs the control plane binaries; under `CI=true` a missing one is a failure.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::exporter::start;
use common::fleet::ExtraControlPlane;
use common::{ControlPlane, control_plane, eventually, repo_path, test_namespace};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

const DIR: &str = "controlplane-its";

fn managed_clusters(cp: &ControlPlane) -> Api<DynamicObject> {
    Api::all_with(
        cp.client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("cluster.open-cluster-management.io", "v1", "ManagedCluster"),
            "managedclusters",
        ),
    )
}

async fn create_managed_cluster(cp: &ControlPlane, name: &str) {
    let mc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.open-cluster-management.io/v1", "kind": "ManagedCluster",
        "metadata": {"name": name}, "spec": {"hubAcceptsClient": true},
    }))
    .expect("a ManagedCluster");
    match managed_clusters(cp)
        .create(&PostParams::default(), &mc)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ManagedCluster {name}: {e}"),
    }
}

fn status_of(name: &str) -> String {
    format!(
        "ksit_cluster_status{{cluster_name=\"{name}\",namespace=\"\",source=\"managedcluster\",target=\"{name}\"}}"
    )
}

fn pid_file(name: &str) -> PathBuf {
    repo_path("target")
        .join(DIR)
        .join(format!("run/{name}.pid"))
}

fn process_state(pid: &str) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[tokio::test]
async fn managed_clusters_come_from_the_its_and_only_from_it() {
    let Some(host) = control_plane().await else {
        return;
    };
    let its = ExtraControlPlane::up(DIR).await;
    let ns = test_namespace(&host, "its", &[]).await;
    let (on_its, on_host) = (format!("its-{}", ns.name), format!("host-{}", ns.name));
    create_managed_cluster(&its.cp, &on_its).await;
    create_managed_cluster(&host, &on_host).await;

    let host_kc = host.kubeconfig.display().to_string();
    let its_kc = its.cp.kubeconfig.display().to_string();
    let e = start(&[
        ("KUBECONFIG", host_kc.as_str()),
        ("KSIT_KUBERNETES", "true"),
        ("KSIT_WATCH_NAMESPACES", ns.name.as_str()),
        ("KSIT_CR_METRICS", "always"),
        ("KSIT_ITS_KUBECONFIG", its_kc.as_str()),
    ])
    .await;
    let s = e
        .scrape_until("the ITS's ManagedCluster", |s| s.has(&status_of(&on_its)))
        .await;
    assert!(
        !s.has_label("target", &on_host),
        "a ManagedCluster of the sidecar's own cluster was reported: {}",
        s.text
    );
    s.assert(
        "ksit_exporter_collector_up{collector=\"managedclusters\"}",
        1.0,
    );
    let page = e.get("/").await.text();
    assert!(
        page.contains(&format!(
            "ManagedClusters read from the ITS at {}",
            its.cp.server_url
        )),
        "the status page does not say where ManagedClusters come from: {page}"
    );

    // The ITS goes away: its API server killed, the hosting cluster untouched.
    let pid = std::fs::read_to_string(pid_file("kube-apiserver"))
        .expect("the ITS's kube-apiserver.pid")
        .trim()
        .to_string();
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .expect("its command line")
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill")
            .success()
    );
    eventually(Duration::from_secs(30), "the ITS's API server gone", || {
        std::future::ready(match process_state(&pid) {
            None | Some('Z') => Ok(()),
            Some(state) => Err(format!("process {pid} in state {state}")),
        })
    })
    .await;
    let s = e
        .scrape_within(Duration::from_secs(90), "the ITS outage seen", |s| {
            s.is(
                "ksit_exporter_collector_up{collector=\"managedclusters\"}",
                0.0,
            )
        })
        .await;
    // The hosting cluster's API server still answers: its health is not the ITS's.
    s.assert("ksit_exporter_kube_up", 1.0);
    s.assert(
        "ksit_exporter_collector_up{collector=\"integrationtargets\"}",
        1.0,
    );
    assert!(s.has(&status_of(&on_its)), "the last known series are kept");

    // Back on the same port, certificates and etcd.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(repo_path("target").join(DIR).join("kube-apiserver.log"))
        .expect("the ITS's kube-apiserver.log");
    // It outlives this test, in a process group of its own as the script starts it; `down`
    // (on drop) stops it by its pid file.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("the ITS's kube-apiserver restarts");
    std::fs::write(pid_file("kube-apiserver"), child.id().to_string()).expect("pid file");
    let again = format!("again-{}", ns.name);
    eventually(
        Duration::from_secs(90),
        "the ITS's API server back",
        || async {
            its.cp
                .client
                .apiserver_version()
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    create_managed_cluster(&its.cp, &again).await;
    let s = e
        .scrape_within(
            Duration::from_secs(90),
            "recovery from the ITS outage",
            |s| {
                s.is(
                    "ksit_exporter_collector_up{collector=\"managedclusters\"}",
                    1.0,
                ) && s.has(&status_of(&again))
            },
        )
        .await;
    assert!(!s.has_label("target", &on_host), "{}", s.text);
    let _ = managed_clusters(&host)
        .delete(&on_host, &Default::default())
        .await;
}
