//! A fleet of KSIT installs end to end (issue 15): two hosting clusters, `east` (the test control
//! plane every suite uses) and `west` (a second one this test starts, in target/controlplane-fleet),
//! each with the stand-in KSIT manager, its sidecar and a Prometheus in agent mode with the page's
//! scrape config, `external_labels: {cluster: <name>}` and `remote_write` into one Thanos Receive
//! (tests/common/fleet.rs). Thanos Query reads the central store; Thanos Rule evaluates the
//! shipped rules (their `for` shortened) through it. Thanos v0.42.4 is built from its Go module
//! by `scripts/controlplane.sh build` (tests/controlplane/thanos).
//!
//! Both hosting clusters hold the same namespace, pod and managed clusters (manifests/samples:
//! IntegrationTarget cluster1 ready, cluster2 not), so only `cluster` tells their series apart:
//! a label lost on the way would merge them. Checked:
//! - the series of both arrive, each with its own `cluster` and the managed cluster in
//!   `cluster_name`, and no series of the test's namespace lacks `cluster`;
//! - every shipped alert's expression keeps `cluster` (made a `bool` comparison, it answers
//!   for both hosting clusters, each series naming one), and KsitClusterNotReady fires in
//!   Thanos Rule once per hosting cluster for cluster2, naming both `cluster` and `cluster_name`;
//! - every dashboard panel's query, with `$cluster` set to each hosting cluster in turn, answers
//!   with data (and its legend's labels), every series naming that hosting cluster; set to a
//!   cluster no one has, it answers nothing but zeros.
//!
//! Needs the control plane and root (network namespaces); under `CI=true` a missing one is a
//! failure.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::fleet::{ExtraControlPlane, HostingCluster, Thanos};
use common::grafana::{
    Grafana, Run, check_answer, dashboard, finite, legend_labels, panels, resolve_variable,
    rules_with, rules_with_short_for, with_bool,
};
use common::prometheus::{api, query, query_range, urlencode};
use common::{check, control_plane, eventually, repo_path, test_namespace};
use serde_json::Value;

/// Every wait for data; two control planes, Thanos and the other suites share two cores.
const WAIT: Duration = Duration::from_secs(120);
/// This test's /30s: 198.19.0.0/24, in the benchmarking range (198.18.0.0/15), apart from
/// dashboard_e2e's 198.18.0.0/24.
const NET: &str = "198.19.0";
/// The agents' scrape interval and Thanos Rule's evaluation interval.
const SCRAPE_SECONDS: u64 = 1;
/// The `for` of every alert in the test's copy of the rules.
const FOR: &str = "3s";
/// The hosting clusters' names: the `cluster` external label of each agent.
const EAST: &str = "east";
const WEST: &str = "west";
/// A hosting cluster no agent names: the dashboard must show nothing for it.
const NOWHERE: &str = "nowhere";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs_f64()
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

#[tokio::test]
async fn two_hosting_clusters_into_thanos() {
    let Some(east_cp) = control_plane().await else {
        return;
    };
    let west_cp = ExtraControlPlane::up("controlplane-fleet").await;
    let ns = test_namespace(&east_cp, "fleet", &[]).await;
    // The same namespace in west; its data goes with the control plane when the test ends.
    check(
        west_cp.cp.kubectl(&["create", "namespace", &ns.name]),
        "creating the namespace in west",
    );
    let data = tempfile::tempdir().expect("a temporary directory");
    let target = repo_path("target");
    let tag = std::process::id().to_string();
    let mut thanos = Thanos::start(&east_cp.bin_dir, data.path(), &target, &tag).await;
    let scrape = format!("{SCRAPE_SECONDS}s");
    let Some(east) = HostingCluster::start(
        &east_cp,
        EAST,
        &ns.name,
        (NET, 0),
        &scrape,
        &thanos.remote_write_url,
        data.path(),
    )
    .await
    else {
        return;
    };
    let Some(west) = HostingCluster::start(
        &west_cp.cp,
        WEST,
        &ns.name,
        (NET, 1),
        &scrape,
        &thanos.remote_write_url,
        data.path(),
    )
    .await
    else {
        return;
    };
    let rules = rules_with_short_for(&east_cp, FOR);
    thanos.start_rule(&rules, &scrape).await;
    let started = now();
    let q = thanos.query.clone();
    let q = q.as_str();
    let rule = thanos.rule.clone().expect("Thanos Rule started");
    let logs = || {
        format!(
            "\n{}\n{}\n--- thanos:\n{}",
            east.logs(),
            west.logs(),
            thanos.logs()
        )
    };

    // Both hosting clusters' managed clusters, with the same names, apart by `cluster`.
    let mine = format!(r#"ksit_cluster_status{{namespace="{}"}}"#, ns.name);
    let want: BTreeSet<(String, String, String)> = [EAST, WEST]
        .iter()
        .flat_map(|c| {
            [("cluster1", "1"), ("cluster2", "0")]
                .map(|(name, v)| (c.to_string(), name.to_string(), v.to_string()))
        })
        .collect();
    eventually(
        WAIT,
        "cluster1 and cluster2 of both hosting clusters in Thanos Query",
        || async {
            let result = query(q, &mine).await?;
            let seen: BTreeSet<(String, String, String)> = result
                .iter()
                .map(|s| {
                    (
                        label(s, "cluster").to_string(),
                        label(s, "cluster_name").to_string(),
                        s["value"][1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            if result.len() == want.len() && seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}{}", logs()))
            }
        },
    )
    .await;
    let orphans = query(q, &format!(r#"{{namespace="{}",cluster=""}}"#, ns.name))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        orphans.is_empty(),
        "series without `cluster` in the central store: {orphans:?}"
    );
    // Reconciles from both, so the rate panels have data.
    eventually(WAIT, "reconciles of both hosting clusters", || async {
        let result = query(q, "sum by (cluster) (rate(ksit_reconcile_total[5s])) > 0").await?;
        let seen: BTreeSet<&str> = result.iter().map(|s| label(s, "cluster")).collect();
        if seen == BTreeSet::from([EAST, WEST]) {
            Ok(())
        } else {
            Err(format!("{seen:?}{}", logs()))
        }
    })
    .await;

    let mut failures = Vec::new();

    // Every shipped alert's expression keeps `cluster`: as a `bool` comparison it answers for
    // every series it compares, each naming the hosting cluster it came from.
    let alerts = rules_with(&rules, "alert");
    for rule in &alerts {
        let name = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("alert expr").trim();
        let Some(compared) = with_bool(expr) else {
            failures.push(format!(
                "{name}: `{expr}` has no comparison to make `bool`; teach the test"
            ));
            continue;
        };
        // Both hosting clusters' inputs are in by now (their reconciles were seen): an answer
        // without one of them is an aggregation that dropped `cluster`, not data still coming.
        let result = eventually(WAIT, &format!("{name}'s expression answering"), || async {
            match query(q, &compared).await {
                Ok(r) if r.is_empty() => Err("no series".to_string()),
                other => other,
            }
        })
        .await;
        let seen: BTreeSet<&str> = result.iter().map(|s| label(s, "cluster")).collect();
        if !seen.is_superset(&BTreeSet::from([EAST, WEST])) {
            failures.push(format!(
                "{name}: `{compared}` answers for hosting clusters {seen:?}, not both"
            ));
        }
        for s in &result {
            if ![EAST, WEST].contains(&label(s, "cluster")) {
                failures.push(format!(
                    "{name}: `{compared}` answers a series without its hosting cluster: {}",
                    s["metric"]
                ));
            }
        }
    }

    // KsitClusterNotReady fires in Thanos Rule for cluster2 of each hosting cluster, apart.
    let firing = eventually(
        WAIT,
        "KsitClusterNotReady firing for both hosting clusters",
        || async {
            let data = api(&rule, "/api/v1/alerts").await?;
            // Thanos Rule's /api/v1/alerts names the list `Alerts` (Prometheus: `alerts`).
            let alerts: Vec<Value> = data["Alerts"]
                .as_array()
                .or(data["alerts"].as_array())
                .into_iter()
                .flatten()
                .filter(|a| a["state"] == "firing" && a["labels"]["namespace"] == ns.name.as_str())
                .cloned()
                .collect();
            let seen: BTreeSet<(&str, &str)> = alerts
                .iter()
                .filter(|a| a["labels"]["alertname"] == "KsitClusterNotReady")
                .map(|a| {
                    (
                        a["labels"]["cluster"].as_str().unwrap_or_default(),
                        a["labels"]["cluster_name"].as_str().unwrap_or_default(),
                    )
                })
                .collect();
            if seen == BTreeSet::from([(EAST, "cluster2"), (WEST, "cluster2")]) {
                Ok(alerts)
            } else {
                Err(format!("Thanos Rule's alerts: {data}{}", logs()))
            }
        },
    )
    .await;
    for alert in &firing {
        if alert["labels"]["alertname"] != "KsitClusterNotReady" {
            failures.push(format!("unexpected alert firing: {}", alert["labels"]));
        }
    }
    let groups = api(&rule, "/api/v1/rules")
        .await
        .unwrap_or_else(|e| panic!("Thanos Rule's rules: {e}"));
    for r in groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
    {
        if r["health"] != "ok" {
            failures.push(format!("rule {} not evaluated cleanly: {r}", r["name"]));
        }
    }

    // Every panel's every query, `$cluster` set to each hosting cluster and to one no one has.
    let dashboard = dashboard(&east_cp);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        variables.iter().any(|v| v["name"] == "cluster"),
        "the dashboard has no `cluster` template variable (issue 15, item 3)"
    );
    // The variable offers both hosting clusters: its `label_values(selector, cluster)` over Query.
    let definition = variables
        .iter()
        .find(|v| v["name"] == "cluster")
        .and_then(|v| v["query"]["query"].as_str().or(v["query"].as_str()))
        .unwrap_or_default();
    let selector = definition
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(", cluster)"))
        .unwrap_or_else(|| {
            panic!("the cluster variable's `{definition}` is not label_values(selector, cluster)")
        });
    let offered = api(
        q,
        &format!(
            "/api/v1/label/cluster/values?match[]={}",
            urlencode(selector)
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("the cluster variable's values: {e}"));
    assert_eq!(
        offered,
        serde_json::json!([EAST, WEST]),
        "the cluster variable's `{definition}` over Thanos Query"
    );
    let end = now();
    let mut checked = 0;
    for cluster in [EAST, WEST, NOWHERE] {
        let mut grafana = Grafana {
            start: started,
            end,
            scrape_seconds: SCRAPE_SECONDS,
            variables: Vec::new(),
        };
        for variable in &variables {
            let name = variable["name"]
                .as_str()
                .expect("variable name")
                .to_string();
            let value = if name == "cluster" {
                cluster.to_string()
            } else {
                resolve_variable(q, variable, &grafana).await
            };
            grafana.variables.push((name, value));
        }
        let step = grafana.interval();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for t in panel["targets"].as_array().into_iter().flatten() {
                let Some(raw) = t["expr"].as_str() else {
                    continue;
                };
                let promql = match grafana.substitute(raw) {
                    Ok(p) => p,
                    Err(e) => {
                        failures.push(format!("panel {title:?} `{raw}`: {e}"));
                        continue;
                    }
                };
                let legend = legend_labels(t["legendFormat"].as_str().unwrap_or_default());
                let mut answers = vec![(Run::Instant, query(q, &promql).await)];
                if t["instant"] != true {
                    let range = query_range(q, &promql, grafana.start, grafana.end, step).await;
                    answers.push((Run::Range, range));
                }
                for (run, answer) in answers {
                    let problem = if cluster == NOWHERE {
                        not_only_zeros(answer)
                    } else {
                        from_cluster_only(answer, run, &legend, cluster)
                    };
                    if let Some(why) = problem {
                        failures.push(format!(
                            "panel {title:?}, $cluster={cluster}, `{promql}` ({run:?}): {why}"
                        ));
                    }
                }
                checked += 1;
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
        "fleet_e2e: {} alert expressions keep `cluster`; {} alerts fired; {checked} panel queries checked",
        alerts.len(),
        firing.len()
    );
}

/// What is wrong with a panel's answer for `cluster`: what [`check_answer`] finds, or a series
/// that does not name that hosting cluster (another one's, or one whose aggregation dropped
/// `cluster`, which in a fleet adds up every hosting cluster).
fn from_cluster_only(
    answer: Result<Vec<Value>, String>,
    run: Run,
    legend: &[String],
    cluster: &str,
) -> Option<String> {
    if let Ok(result) = &answer
        && let Some(s) = result.iter().find(|s| label(s, "cluster") != cluster)
    {
        return Some(format!(
            "a series not of hosting cluster {cluster}: {}",
            s["metric"]
        ));
    }
    check_answer(answer, run, legend)
}

/// What is wrong with a panel's answer for a hosting cluster no one has: an error, or a value
/// other than 0 (an `or vector(0)` fallback is fine).
fn not_only_zeros(answer: Result<Vec<Value>, String>) -> Option<String> {
    let result = match answer {
        Ok(result) => result,
        Err(e) => return Some(e),
    };
    let values = |s: &Value| -> Vec<Value> {
        match s["values"].as_array() {
            Some(points) => points.iter().map(|p| p[1].clone()).collect(),
            None => vec![s["value"][1].clone()],
        }
    };
    result
        .iter()
        .find(|s| values(s).iter().any(|v| finite(v) && v != "0"))
        .map(|s| format!("data although no hosting cluster has this name: {s}"))
}
