//! The shipped Grafana dashboard and alert rules (manifests/monitoring/common), proven against
//! live data: the test control plane, the stand-in KSIT manager, the exporter beside it with a
//! mix of ready and failing clusters (IntegrationTarget cluster1 ready and cluster2 not, as
//! manifests/samples ships them; Integration argocd-integration Running and flux-integration
//! Failed; one ManagedCluster available and one lost; the manager's container restarting), and
//! a real Prometheus that finds the exporter with the page's scrape config (as
//! tests/e2e_prometheus.rs does, through a network namespace) and evaluates the shipped rules.
//!
//! Then, read from the files so that a panel or rule added later is checked too:
//! - every query of every panel, with Grafana's variables substituted as Grafana would, answers
//!   at least one series with a value, as an instant query and, unless the target is instant
//!   only, as a range query; every `{{label}}` of its legend is on each series;
//! - every alert either fires, with the labels this mix gives it, every label its annotations
//!   print present, or stays quiet: never fired during the test, and its expression, made a
//!   `bool` comparison, answers 0 for series that exist (so "quiet" is not "no data").
//!
//! Needs the control plane and root (for the network namespace); under `CI=true` a missing one
//! is a failure.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::grafana::{
    Grafana, Run, check_answer, dashboard, legend_labels, panels, parse, printed_labels,
    resolve_variable, rules_with, rules_with_short_for, with_bool,
};
use common::proc::Proc;
use common::prometheus::{api, port_of, query, query_range, scrape_config};
use common::{
    Cleanup, check, control_plane, eventually, free_port, monitor_yaml, netns, patch_status,
    pod_status, repo_path, sidecar_command, test_namespace,
};
use serde_json::{Value, json};

/// Every wait of this test; the control plane and the other suites share two cores.
const WAIT: Duration = Duration::from_secs(90);
/// This test's /30s: 198.18.0.0/24, in the benchmarking range (198.18.0.0/15) no other test uses.
const NET: &str = "198.18.0";
/// The scrape and rule-evaluation interval of the test's Prometheus, in seconds, and the scrape
/// interval the Grafana datasource is told (Grafana derives `$__rate_interval` from it).
const SCRAPE_SECONDS: u64 = 1;
/// The `for` of every alert in the test's copy of the rules (tests/common/grafana.rs).
const FOR: &str = "3s";
/// The pod the sidecar runs in, as the Endpoints name it.
const POD: &str = "ksit-controller-manager-0";
/// Restarts of the manager container once it starts crash-looping: over the alert's 2.
const RESTARTS: u32 = 3;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

/// ManagedClusters are cluster-scoped: removed (best effort) on drop.
struct ManagedClusters {
    names: Vec<String>,
    cleanup: Cleanup,
}

impl Drop for ManagedClusters {
    fn drop(&mut self) {
        for name in &self.names {
            self.cleanup.kubectl(&[
                "delete",
                "managedcluster",
                name,
                "--wait=false",
                "--ignore-not-found",
            ]);
        }
    }
}

/// What an alert should do with this mix of clusters.
enum Expect {
    /// Fire once for each label set (a subset of the alert's labels), and for nothing else of
    /// this test's.
    Fire(Vec<BTreeMap<&'static str, String>>),
    /// Never fire.
    Quiet,
}

/// Labels from pairs.
fn labels(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// What every shipped alert should do with this test's objects; an alert the file ships that
/// is not here fails the test, as does one here the file does not ship.
fn expectations(ns: &str, lost: &str) -> BTreeMap<&'static str, Expect> {
    BTreeMap::from([
        (
            "KsitClusterNotReady",
            Expect::Fire(vec![
                labels(&[
                    ("source", "integrationtarget"),
                    ("namespace", ns),
                    ("target", "cluster2"),
                    ("cluster_name", "cluster2"),
                ]),
                labels(&[
                    ("source", "managedcluster"),
                    ("target", lost),
                    ("cluster_name", lost),
                ]),
            ]),
        ),
        (
            "KsitComponentRestarting",
            Expect::Fire(vec![labels(&[
                ("namespace", ns),
                ("pod", POD),
                ("container", "manager"),
            ])]),
        ),
        // The manager answers its probes, reconciles in milliseconds, and the exporter reaches
        // the API server.
        ("KsitComponentHealthProbeDown", Expect::Quiet),
        ("KsitReconcileLatencyHigh", Expect::Quiet),
        ("KsitExporterKubeUnreachable", Expect::Quiet),
    ])
}

#[tokio::test]
async fn every_panel_and_alert_against_a_live_exporter() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let Some(netns) = netns::create_or_skip(NET, 0) else {
        return;
    };
    let ns = test_namespace(&cp, "dashboard", &[]).await;
    let target = repo_path("target");
    let tag = std::process::id();

    // IntegrationTargets cluster1 (ready) and cluster2 (not), Integrations argocd (Running),
    // flux (Failed: it names cluster2) and prometheus (Failed: disabled).
    cp.apply_samples(&ns.name);
    // Short requeues, so reconciles keep coming within a rate window of seconds.
    let manager = common::start_manager_with(
        &cp,
        &[&ns.name],
        &[
            "--integration-requeue=2s",
            "--target-ready-requeue=2s",
            "--target-failing-requeue=2s",
        ],
    )
    .await;

    // ManagedClusters are cluster-scoped: named after the namespace, apart from other runs'.
    let available = format!("{}-available", ns.name);
    let lost = format!("{}-lost", ns.name);
    let _clusters = ManagedClusters {
        names: vec![available.clone(), lost.clone()],
        cleanup: cp.cleanup(),
    };
    for (name, status, reason) in [
        (&available, "True", "ManagedClusterAvailable"),
        (&lost, "Unknown", "ManagedClusterLeaseUpdateStopped"),
    ] {
        cp.apply_yaml(
            &ns.name,
            &format!(
                "apiVersion: cluster.open-cluster-management.io/v1\nkind: ManagedCluster\n\
                 metadata: {{name: {name}}}\nspec: {{hubAcceptsClient: true}}\n"
            ),
        );
        patch_status(
            &cp,
            None,
            "managedcluster",
            name,
            json!({"conditions": [{"type": "ManagedClusterConditionAvailable", "status": status,
                   "reason": reason, "message": "set by the test",
                   "lastTransitionTime": "2026-11-27T10:00:00Z"}]}),
        );
    }

    // The pod the sidecar runs in (the test plays kubelet), and the Service the page's config
    // keeps with its Endpoints pointing at the pod, as the endpoints controller would.
    cp.apply_yaml(&ns.name, &monitor_yaml(&netns.ns_ip, Some((POD, &ns.name))));
    patch_status(&cp, Some(&ns.name), "pod", POD, pod_status(&netns.ns_ip, 0));

    let _relay = netns::start_relay(
        &netns,
        &[
            port_of(&cp.server_url),
            port_of(&manager.metrics_addr),
            port_of(&manager.health_addr),
        ]
        .map(|port| (port, port)),
    )
    .await;
    let exporter = Proc::spawn(
        sidecar_command(&netns, &cp, &ns.name, POD, &manager).env("KSIT_OCM_CLUSTERS", "true"),
        target.join(format!("dashboard-e2e-exporter-{tag}.log")),
    );

    // Prometheus with the page's scrape config and the shipped rules.
    let data = tempfile::tempdir().expect("a temporary directory");
    let rules = rules_with_short_for(&cp, FOR);
    let rules_path = data.path().join("rules.yml");
    // JSON is YAML: Prometheus reads both files as written.
    std::fs::write(&rules_path, rules.to_string()).expect("writing rules.yml");
    let mut config = scrape_config(&cp, &ns.name);
    config["global"]["evaluation_interval"] = json!(format!("{SCRAPE_SECONDS}s"));
    config["rule_files"] = json!([rules_path]);
    let config_path = data.path().join("prometheus.yml");
    std::fs::write(&config_path, config.to_string()).expect("writing prometheus.yml");
    check(
        Command::new(cp.bin_dir.join("promtool"))
            .args(["check", "config"])
            .arg(&config_path)
            .output()
            .expect("running promtool"),
        "promtool check config",
    );
    let prom = format!("127.0.0.1:{}", free_port());
    let started = now();
    let prometheus = Proc::spawn(
        Command::new(cp.bin_dir.join("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}")),
        target.join(format!("dashboard-e2e-prometheus-{tag}.log")),
    );
    let logs = || {
        format!(
            "\n--- exporter log (tail):\n{}\n--- prometheus log (tail):\n{}",
            exporter.log_tail(30),
            prometheus.log_tail(20)
        )
    };
    let prom = prom.as_str();

    // The data the panels and alerts read: every cluster of this test, and reconciles.
    let mine = format!(
        r#"ksit_cluster_status{{namespace="{0}"}} or ksit_cluster_status{{cluster_name=~"{0}-.*"}}"#,
        ns.name
    );
    eventually(WAIT, "the test's four clusters in Prometheus", || async {
        let result = query(prom, &mine).await?;
        if result.len() == 4 {
            Ok(())
        } else {
            Err(format!("{result:?}{}", logs()))
        }
    })
    .await;
    eventually(WAIT, "reconciles counted", || async {
        let result = query(prom, "sum(rate(ksit_reconcile_total[5s])) > 0").await?;
        if result.is_empty() {
            Err(format!("none yet{}", logs()))
        } else {
            Ok(())
        }
    })
    .await;

    // Its restarts counted at 0 first: a counter first seen at 3 has not increased.
    eventually(
        WAIT,
        "the manager's restarts at 0 in Prometheus",
        || async {
            let promql = r#"ksit_component_container_restarts_total{container="manager"} == 0"#;
            match query(prom, promql).await?.len() {
                1 => Ok(()),
                n => Err(format!("{n} series{}", logs())),
            }
        },
    )
    .await;
    // Then the manager container starts crash-looping.
    patch_status(
        &cp,
        Some(&ns.name),
        "pod",
        POD,
        pod_status(&netns.ns_ip, RESTARTS),
    );

    // Every shipped alert has an expectation, and the other way round.
    let shipped = rules_with(&rules, "alert");
    let expect = expectations(&ns.name, &lost);
    let names: Vec<&str> = shipped
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name"))
        .collect();
    for name in &names {
        assert!(
            expect.contains_key(name),
            "alert {name} is shipped but this test has no expectation for it: add one to expectations()"
        );
    }
    for name in expect.keys() {
        assert!(
            names.contains(name),
            "this test expects alert {name}, which manifests/monitoring no longer ships"
        );
    }

    // The alerts that should fire do, with their labels, and nothing else of this test's.
    // (A ManagedCluster of another suite's may be not ready too: it is not this test's.)
    let ours = |alert: &Value| {
        let l = &alert["labels"];
        l["namespace"] == json!(ns.name)
            || l["cluster_name"]
                .as_str()
                .is_some_and(|c| c.starts_with(&format!("{}-", ns.name)))
    };
    let firing = eventually(WAIT, "the expected alerts firing", || async {
        let data = api(prom, "/api/v1/alerts").await?;
        let alerts: Vec<Value> = data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing" && ours(a))
            .cloned()
            .collect();
        let mut missing = Vec::new();
        for rule in &shipped {
            let name = rule["alert"].as_str().expect("alert name");
            let Some(Expect::Fire(sets)) = expect.get(name) else {
                continue;
            };
            for set in sets {
                let found = alerts.iter().any(|a| {
                    a["labels"]["alertname"] == name
                        && set.iter().all(|(k, v)| a["labels"][k] == json!(v))
                });
                if !found {
                    missing.push(format!("{name} {set:?}"));
                }
            }
        }
        if missing.is_empty() {
            Ok(alerts)
        } else {
            let labels: Vec<String> = alerts.iter().map(|a| a["labels"].to_string()).collect();
            Err(format!(
                "not firing: {missing:?}\nfiring: {}{}",
                labels.join("\n"),
                logs()
            ))
        }
    })
    .await;
    let mut failures = Vec::new();
    for alert in &firing {
        let name = alert["labels"]["alertname"].as_str().unwrap_or_default();
        let rule = shipped
            .iter()
            .find(|r| r["alert"] == name)
            .expect("a firing alert is a shipped rule");
        match expect.get(name) {
            Some(Expect::Fire(sets)) => {
                let matches = sets
                    .iter()
                    .filter(|set| set.iter().all(|(k, v)| alert["labels"][k] == json!(v)))
                    .count();
                if matches != 1 {
                    failures.push(format!(
                        "{name} fired for what this test does not expect: {}",
                        alert["labels"]
                    ));
                }
            }
            _ => failures.push(format!(
                "{name} should stay quiet but fired: {}",
                alert["labels"]
            )),
        }
        // The rule's own labels, and every label its annotations print.
        for (k, v) in rule["labels"].as_object().into_iter().flatten() {
            if alert["labels"][k] != *v {
                failures.push(format!("{name}: label {k} is not {v}: {}", alert["labels"]));
            }
        }
        for (key, template) in rule["annotations"].as_object().into_iter().flatten() {
            for label in printed_labels(template.as_str().unwrap_or_default()) {
                if alert["labels"][&label].as_str().is_none_or(str::is_empty) {
                    failures.push(format!(
                        "{name}: annotation {key} prints $labels.{label}, which the alert lacks: {}",
                        alert["annotations"][key]
                    ));
                }
            }
        }
    }

    // Every rule was evaluated without error.
    let groups = api(prom, "/api/v1/rules?type=alert")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for name in &names {
        let rule = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .find(|r| r["name"] == *name);
        match rule {
            Some(r) if r["health"] == "ok" => {}
            other => failures.push(format!("rule {name} not evaluated cleanly: {other:?}")),
        }
    }

    // The quiet ones never fired, and their expressions answer for series that exist.
    let end = now();
    for rule in &shipped {
        let name = rule["alert"].as_str().expect("alert name");
        if !matches!(expect.get(name), Some(Expect::Quiet)) {
            continue;
        }
        let history = format!(
            r#"ALERTS{{alertname="{name}",alertstate="firing"}}[{}s]"#,
            (end - started).ceil() as u64 + 1
        );
        match query(prom, &format!("count_over_time({history})")).await {
            Ok(r) if r.is_empty() => {}
            other => failures.push(format!("{name} should stay quiet but fired: {other:?}")),
        }
        let expr = rule["expr"].as_str().expect("alert expr").trim();
        let Some(compared) = with_bool(expr) else {
            failures.push(format!(
                "{name}: `{expr}` has no comparison to make `bool`, so the test cannot tell quiet from no data; teach the test"
            ));
            continue;
        };
        let mut tree = parse(prom, expr).await;
        tree["bool"] = json!(true);
        assert_eq!(
            parse(prom, &compared).await,
            tree,
            "{name}: `{compared}` is not `{expr}` with its comparison made bool"
        );
        match query(prom, &compared).await {
            Ok(r) if !r.is_empty() && r.iter().all(|s| s["value"][1] == "0") => {}
            other => failures.push(format!(
                "{name}: `{compared}` should answer 0 for existing series: {other:?}"
            )),
        }
    }

    // A recording rule (none is shipped today) records series.
    for rule in rules_with(&rules, "record") {
        let record = rule["record"].as_str().expect("record name");
        match query(prom, record).await {
            Ok(r) if !r.is_empty() => {}
            other => failures.push(format!(
                "recording rule {record} recorded nothing: {other:?}"
            )),
        }
    }

    // Every panel's every query, as Grafana would run it over the time since Prometheus began.
    let dashboard = dashboard(&cp);
    let mut grafana = Grafana {
        start: started,
        end,
        scrape_seconds: SCRAPE_SECONDS,
        variables: Vec::new(),
    };
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let value = resolve_variable(prom, variable, &grafana).await;
        let name = variable["name"]
            .as_str()
            .expect("variable name")
            .to_string();
        grafana.variables.push((name, value));
    }
    // The resolver itself, on query variables a dashboard could gain.
    for (definition, value) in [
        ("label_values(probe)", "healthz"),
        (
            r#"label_values(ksit_integration_info{type="flux"}, integration)"#,
            "flux-integration",
        ),
    ] {
        let variable = json!({"name": "v", "type": "query", "query": {"query": definition}});
        assert_eq!(
            resolve_variable(prom, &variable, &grafana).await,
            value,
            "{definition}"
        );
    }
    // A single install: no Prometheus here adds the external label `cluster`, so legends print it
    // empty, as Grafana does. tests/fleet_e2e.rs checks it on every series of a fleet.
    let hosting = api(prom, "/api/v1/label/cluster/values")
        .await
        .expect("the cluster label's values");
    assert_eq!(
        hosting,
        json!([]),
        "a single install has no hosting `cluster` label"
    );
    let step = grafana.interval();
    let mut checked = 0;
    // Every query as Prometheus runs it, for the label check below.
    let mut queries: Vec<String> = shipped
        .iter()
        .chain(rules_with(&rules, "record").iter())
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            failures.push(format!("panel {title:?} has no query"));
        }
        for t in targets {
            let Some(raw) = t["expr"].as_str() else {
                failures.push(format!("panel {title:?} target {}: no expr", t["refId"]));
                continue;
            };
            let promql = match grafana.substitute(raw) {
                Ok(q) => q,
                Err(e) => {
                    failures.push(format!("panel {title:?} `{raw}`: {e}"));
                    continue;
                }
            };
            queries.push(promql.clone());
            let mut legend = legend_labels(t["legendFormat"].as_str().unwrap_or_default());
            legend.retain(|l| l != "cluster");
            let mut answers = vec![(Run::Instant, query(prom, &promql).await)];
            // Grafana runs a range query unless the target is instant only.
            if t["instant"] != true {
                let range = query_range(prom, &promql, grafana.start, grafana.end, step).await;
                answers.push((Run::Range, range));
            }
            for (run, answer) in answers {
                if let Some(why) = check_answer(answer, run, &legend) {
                    failures.push(format!("panel {title:?} `{promql}` ({run:?}): {why}"));
                }
            }
            checked += 1;
        }
    }
    // The manager's own label sets (controller-runtime v0.16.3, as upstream), and every label
    // a query names on a family that comes from them.
    let upstream = manager_label_sets(&manager.metrics_addr).await;
    let target_labels = target_label_names(prom).await;
    let mut label_checks = 0;
    for promql in &queries {
        let tree = parse(prom, promql).await;
        for (family, label) in labels_used(&tree) {
            let Some(source) = upstream_source(&family) else {
                continue;
            };
            label_checks += 1;
            let carried = upstream.get(source).cloned().unwrap_or_default();
            if !carried.contains(&label) && !target_labels.contains(&label) && label != "cluster" {
                failures.push(format!(
                    "`{promql}` uses label {label} on {family}, but the manager's {source} carries only {carried:?} \
                     (and the scrape adds {target_labels:?})"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}{}",
        failures.len(),
        failures.join("\n"),
        logs()
    );
    eprintln!(
        "dashboard_e2e: {label_checks} labels on upstream-derived families checked against the manager's /metrics"
    );
    eprintln!(
        "dashboard_e2e: {checked} panel queries answered; {} alerts fired as expected, {} stayed quiet",
        firing.len(),
        names.len()
            - expect
                .values()
                .filter(|e| matches!(e, Expect::Fire(_)))
                .count()
    );
}

/// The family of the manager's /metrics a family a query reads comes from: upstream families
/// pass through under their own names, and the exporter turns controller-runtime's reconcile
/// families into `ksit_reconcile_*` (src/upstream.rs), labels kept.
fn upstream_source(family: &str) -> Option<&str> {
    match family {
        "ksit_reconcile_total" => Some("controller_runtime_reconcile_total"),
        "ksit_reconcile_duration_seconds_bucket" => {
            Some("controller_runtime_reconcile_time_seconds_bucket")
        }
        "ksit_reconcile_duration_seconds_sum" => {
            Some("controller_runtime_reconcile_time_seconds_sum")
        }
        "ksit_reconcile_duration_seconds_count" => {
            Some("controller_runtime_reconcile_time_seconds_count")
        }
        f if f.starts_with("workqueue_")
            || f.starts_with("controller_runtime_")
            || f.starts_with("leader_election_") =>
        {
            Some(f)
        }
        _ => None,
    }
}

/// Every (family, label) a query's syntax tree names: the matchers of each selector, and the
/// `by`/`without` labels of each aggregation over it.
fn labels_used(tree: &Value) -> Vec<(String, String)> {
    // Prometheus's tree writes `x{...}[5m]` as one matrixSelector with the name and matchers.
    fn is_selector(node: &Value) -> bool {
        node["type"] == "vectorSelector" || node["type"] == "matrixSelector"
    }
    fn selectors(node: &Value, out: &mut Vec<String>) {
        if is_selector(node)
            && let Some(name) = node["name"].as_str()
        {
            out.push(name.to_string());
        }
        match node {
            Value::Object(m) => m.values().for_each(|v| selectors(v, out)),
            Value::Array(a) => a.iter().for_each(|v| selectors(v, out)),
            _ => {}
        }
    }
    fn walk(node: &Value, out: &mut Vec<(String, String)>) {
        if is_selector(node)
            && let Some(name) = node["name"].as_str()
        {
            for m in node["matchers"].as_array().into_iter().flatten() {
                if let Some(label) = m["name"].as_str().filter(|l| *l != "__name__") {
                    out.push((name.to_string(), label.to_string()));
                }
            }
        }
        if node["type"] == "aggregation" {
            let mut under = Vec::new();
            selectors(&node["expr"], &mut under);
            for label in node["grouping"].as_array().into_iter().flatten() {
                for family in &under {
                    out.push((
                        family.clone(),
                        label.as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        match node {
            Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(tree, &mut out);
    out
}

/// The label names of every series family on the manager's /metrics, by sample name; and the
/// label sets controller-runtime v0.16.3 gives them, asserted: `workqueue_*` carry `name` and
/// nothing else (v0.19 added `controller`), `controller_runtime_reconcile_total` carries
/// `controller` and `result`, for upstream's two controllers.
async fn manager_label_sets(
    metrics_addr: &str,
) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let reply = common::http::get(metrics_addr, "/metrics").await;
    let text = reply.text();
    let mut sets: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut controllers = std::collections::BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, labels) = match line.split_once('{') {
            Some((n, rest)) => (n, rest.rsplit_once('}').map_or("", |(l, _)| l)),
            None => (line.split(' ').next().unwrap_or_default(), ""),
        };
        let set = sets.entry(name.to_string()).or_default();
        // Label values here have no `,` or `"` escaped inside (controller and queue names).
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (label, value) = pair.split_once('=').expect("label=value");
            set.insert(label.to_string());
            if name.starts_with("controller_runtime_reconcile_total") && label == "controller" {
                controllers.insert(value.trim_matches('"').to_string());
            }
        }
    }
    let workqueue: Vec<_> = sets
        .keys()
        .filter(|n| n.starts_with("workqueue_"))
        .collect();
    assert!(
        !workqueue.is_empty(),
        "no workqueue_* on the manager's /metrics:\n{text}"
    );
    for name in workqueue {
        let labels: Vec<&str> = sets[name]
            .iter()
            .map(String::as_str)
            .filter(|l| *l != "le")
            .collect();
        assert_eq!(
            labels,
            ["name"],
            "{name}: controller-runtime v0.16.3 labels workqueue_* by name only"
        );
    }
    let reconcile: Vec<&str> = sets["controller_runtime_reconcile_total"]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        reconcile,
        ["controller", "result"],
        "controller_runtime_reconcile_total"
    );
    assert_eq!(
        controllers.into_iter().collect::<Vec<_>>(),
        ["integration", "integrationtarget"],
        "upstream's controller names"
    );
    sets
}

/// The labels a scrape adds to every series of the exporter's target (job, instance,
/// namespace, pod, ...), as its `up` series carries them.
async fn target_label_names(prom: &str) -> std::collections::BTreeSet<String> {
    let up = query(prom, "up").await.unwrap_or_else(|e| panic!("{e}"));
    up.iter()
        .flat_map(|s| s["metric"].as_object().into_iter().flatten())
        .map(|(k, _)| k.clone())
        .filter(|k| k != "__name__")
        .collect()
}

#[test]
fn a_query_s_labels_are_found_in_its_syntax_tree() {
    let tree = json!({"type": "aggregation", "op": "sum", "grouping": ["controller"],
        "expr": {"type": "call", "args": [{"type": "matrixSelector", "name": "workqueue_depth",
            "matchers": [{"name": "name", "type": "=", "value": "x"},
                         {"name": "__name__", "type": "=", "value": "workqueue_depth"}]}]}});
    assert_eq!(
        labels_used(&tree),
        [
            ("workqueue_depth".to_string(), "controller".to_string()),
            ("workqueue_depth".to_string(), "name".to_string())
        ]
    );
    assert_eq!(
        upstream_source("ksit_reconcile_total"),
        Some("controller_runtime_reconcile_total")
    );
    assert_eq!(
        upstream_source("workqueue_adds_total"),
        Some("workqueue_adds_total")
    );
    assert_eq!(upstream_source("ksit_cluster_status"), None);
}

#[test]
fn grafana_variables_are_substituted_as_grafana_does() {
    let grafana = Grafana {
        start: 1000.0,
        end: 1120.0,
        scrape_seconds: 1,
        variables: vec![("ns".to_string(), "ksit-system".to_string())],
    };
    assert_eq!(
        grafana
            .substitute(r#"rate(x{namespace="$ns",a="${ns}",b="${ns:raw}",c="[[ns]]"}[$__rate_interval]) / $__range_s"#)
            .as_deref(),
        Ok(r#"rate(x{namespace="ksit-system",a="ksit-system",b="ksit-system",c="ksit-system"}[4s]) / 120"#)
    );
    assert_eq!(
        grafana
            .substitute("x[$__interval] offset $__range")
            .as_deref(),
        Ok("x[1s] offset 120s")
    );
    // A name that only starts like a known variable is left, and reported.
    assert!(grafana.substitute(r#"x{a="$nsx"}"#).is_err());
    assert!(grafana.substitute(r#"x{a=~"end$"}"#).is_ok());
}

#[test]
fn comparisons_become_bool_and_printed_labels_are_found() {
    assert_eq!(with_bool("x == 0").as_deref(), Some("x == bool 0"));
    assert_eq!(
        with_bool(r#"histogram_quantile(0.99, sum by (le) (rate(x{a!="b"}[5m]))) > 5"#).as_deref(),
        Some(r#"histogram_quantile(0.99, sum by (le) (rate(x{a!="b"}[5m]))) > bool 5"#)
    );
    assert_eq!(with_bool(r#"absent(x{a=">"})"#), None);
    assert_eq!(
        printed_labels(
            "{{ $labels.pod }} in {{ with $labels.namespace }}{{ . }}{{ end }} {{ $value }} {{ $labels.pod }}"
        ),
        vec!["pod".to_string()]
    );
}
