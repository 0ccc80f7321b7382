//! The upstream collector against a large, real Prometheus endpoint of someone else's making:
//! the test control plane's etcd (about 150 families, its own `process_*` and `go_*` among them).

mod common;

use std::collections::BTreeSet;

use common::{Scrape, control_plane, http, start};

/// When process `pid` started, in seconds since the epoch, computed as the exporter's process
/// collector does: boot time plus the start in clock ticks from /proc.
fn process_start_time(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Field 22; counted after the command name, which may hold spaces but ends at the last ')'.
    let ticks: f64 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .expect("starttime in /proc/PID/stat");
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .expect("/proc/stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .expect("btime in /proc/stat");
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf runs");
    let hz: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK");
    btime + ticks / hz
}

fn families(s: &Scrape) -> BTreeSet<String> {
    s.types().iter().map(|(name, _)| name.clone()).collect()
}

#[tokio::test]
async fn etcd_metrics_are_merged_without_duplicate_families() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let etcd_addr = cp.etcd_url.trim_start_matches("http://").to_string();
    let url = format!("{}/metrics", cp.etcd_url);
    let e = start(&[
        ("KSIT_KUBERNETES", "false"),
        ("KSIT_UPSTREAM_METRICS_URL", url.as_str()),
        ("KSIT_PROBE_INTERVAL", "500ms"),
        ("KSIT_PROBE_TIMEOUT", "400ms"),
    ])
    .await;
    // The same exporter without an upstream: which families are its own.
    let alone = start(&[("KSIT_KUBERNETES", "false")]).await;
    let own = families(
        &alone
            .scrape_until("its first collection", |s| {
                s.has("ksit_exporter_collector_up{collector=\"process\"}")
            })
            .await,
    );

    let served = e
        .scrape_until("the upstream up", |s| {
            s.is("ksit_exporter_upstream_up", 1.0)
        })
        .await;
    let etcd = Scrape::parse(&http::get(&etcd_addr, "/metrics").await.text());
    let etcd_families = families(&etcd);
    served.assert("etcd_server_has_leader", 1.0);

    // Every family once: the exporter's own, and each of etcd's (those of the same name as one
    // of the exporter's served once, as the exporter's), but none of etcd's `process_*`: the
    // exporter's describe the exporter, so the whole upstream group is dropped.
    let mut seen = BTreeSet::new();
    let repeated: Vec<_> = served
        .types()
        .iter()
        .filter(|(name, _)| !seen.insert(name.clone()))
        .collect();
    assert!(repeated.is_empty(), "families typed twice: {repeated:?}");
    let etcd_passed: BTreeSet<String> = etcd_families
        .iter()
        .filter(|f| !f.starts_with("process_"))
        .cloned()
        .collect();
    let expected: BTreeSet<String> = own.union(&etcd_passed).cloned().collect();
    assert!(
        seen == expected,
        "served families differ from the exporter's own plus etcd's: only served {:?}, missing {:?}",
        seen.difference(&expected).collect::<Vec<_>>(),
        expected.difference(&seen).collect::<Vec<_>>()
    );
    let shadowed: Vec<_> = own.intersection(&etcd_families).collect();
    assert!(
        shadowed.iter().any(|f| *f == "process_start_time_seconds"),
        "etcd and the exporter share process families: {shadowed:?}"
    );
    let etcd_process_only: Vec<_> = etcd_families
        .iter()
        .filter(|f| f.starts_with("process_") && !own.contains(*f))
        .collect();
    assert!(
        !etcd_process_only.is_empty(),
        "etcd serves a process_* family the exporter does not (such as process_virtual_memory_max_bytes), so the group drop is tested"
    );
    assert!(
        etcd_families.len() > 100,
        "etcd's families are many, got {}",
        etcd_families.len()
    );

    // A shared family carries the exporter's value: its own start time, which is not etcd's.
    let served_start = served
        .get("process_start_time_seconds")
        .expect("process_start_time_seconds served");
    let etcd_start = etcd
        .get("process_start_time_seconds")
        .expect("etcd's process_start_time_seconds");
    let own_start = process_start_time(e.child.id());
    // The exporter's process collector gives whole seconds.
    assert!(
        (0.0..1.0).contains(&(own_start - served_start)),
        "served {served_start}, the exporter started at {own_start} (etcd at {etcd_start})"
    );
    assert!(
        (own_start - etcd_start).abs() >= 1.0,
        "the exporter and etcd started within a second ({own_start}, {etcd_start}): the check cannot tell them apart"
    );
    // A family of etcd's alone passes through with etcd's values.
    for series in ["etcd_server_has_leader", "etcd_server_is_leader"] {
        assert_eq!(
            served.get(series),
            etcd.get(series),
            "{series}: served and etcd's own"
        );
    }
}
