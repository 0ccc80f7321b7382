//! The upstream collector against a large, real Prometheus endpoint of someone else's making:
//! the test control plane's etcd (about 150 families, its own `process_*` and `go_*` among them).

mod common;
mod exporter_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::control_plane;
use exporter_support::{get, has_line, start};

#[tokio::test]
async fn etcd_metrics_are_merged_without_duplicate_families() {
    let Some(cp) = control_plane().await else {
        return;
    };
    let url = format!("{}/metrics", cp.etcd_url);
    let e = start(&[
        ("KSIT_KUBERNETES", "false"),
        ("KSIT_UPSTREAM_METRICS_URL", url.as_str()),
        ("KSIT_PROBE_INTERVAL", "500ms"),
        ("KSIT_PROBE_TIMEOUT", "400ms"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let body = get(e.addr, "/metrics").text();
        if has_line(&body, "ksit_exporter_upstream_up 1") {
            break body;
        }
        assert!(Instant::now() < deadline, "upstream never up:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    };

    assert!(has_line(&body, "etcd_server_has_leader 1"), "{body}");
    let mut types: BTreeMap<&str, usize> = BTreeMap::new();
    for name in body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
    {
        *types.entry(name).or_default() += 1;
    }
    let repeated: Vec<_> = types.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "families typed twice: {repeated:?}");
    assert!(
        types.len() > 100,
        "etcd's families are served through the exporter, got {}",
        types.len()
    );
    for family in ["go_goroutines", "etcd_disk_wal_fsync_duration_seconds"] {
        assert!(types.contains_key(family), "{family} not passed through");
    }
    // Both processes have process_resident_memory_bytes; the exporter's own is the one served.
    let own_pid_series = body
        .lines()
        .filter(|l| l.starts_with("process_start_time_seconds "))
        .count();
    assert_eq!(own_pid_series, 1, "one process_start_time_seconds sample");
}
