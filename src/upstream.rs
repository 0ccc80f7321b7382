//! Reads the component's own metrics endpoint (`KSIT_UPSTREAM_METRICS_URL`) every interval.
//!
//! Two things come of one read: the reconcile families, re-exposed under `ksit_` names, and the
//! upstream's families passed through whole, because a manager whose metrics port the sidecar
//! took over has no other way to be scraped. Both are cached between reads, never fetched at
//! scrape time: a scrape must not wait on the component.
//!
//! Parsing uses the `prometheus-parse` crate, both its line classifier (to split the body into
//! families and reject what is not the text format) and its sample parser (for the reconcile
//! histograms).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use prometheus::proto::{Bucket, Counter, Histogram, Metric, MetricType};
use prometheus_parse::{LineInfo, Scrape, Value};

use crate::collector::Collect;
use crate::fetch;
use crate::metrics::{Family, Gauges, Mirror, Registry, label};

const RECONCILE_TIME: &str = "controller_runtime_reconcile_time_seconds";
const RECONCILE_TOTAL: &str = "controller_runtime_reconcile_total";

pub const UP: Family = Family {
    name: "ksit_exporter_upstream_up",
    help: "1 when the component's own metrics endpoint was last read and parsed, 0 otherwise.",
};
pub const RECONCILE_DURATION: Family = Family {
    name: "ksit_reconcile_duration_seconds",
    help: "Duration of the component's reconciles, from controller_runtime_reconcile_time_seconds.",
};
pub const RECONCILES: Family = Family {
    name: "ksit_reconcile_total",
    help: "Reconciles by result, from controller_runtime_reconcile_total.",
};

#[derive(Clone)]
pub struct Families {
    up: Gauges<()>,
    /// `ksit_reconcile_duration_seconds` and `ksit_reconcile_total`, rebuilt from the upstream's.
    reconcile: Mirror,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            up: registry.gauges(UP),
            reconcile: registry.mirror(&[
                (RECONCILE_DURATION, &["controller"]),
                (RECONCILES, &["controller", "result"]),
            ]),
        }
    }

    /// Sets the reconcile families; empty input removes them (the upstream is gone).
    fn set_reconciles(&self, histograms: &[ReconcileHistogram], counts: &[ReconcileCount]) {
        let mut families = Vec::new();
        if !histograms.is_empty() {
            let metrics = histograms
                .iter()
                .map(|h| {
                    let mut hist = Histogram::default();
                    hist.set_sample_sum(h.sum);
                    hist.set_sample_count(h.count);
                    hist.set_bucket(
                        h.buckets
                            .iter()
                            .map(|(le, n)| {
                                let mut b = Bucket::default();
                                b.set_upper_bound(*le);
                                b.set_cumulative_count(*n);
                                b
                            })
                            .collect(),
                    );
                    let mut m = Metric::from_label(vec![label("controller", &h.controller)]);
                    m.set_histogram(hist);
                    m
                })
                .collect();
            families.push(RECONCILE_DURATION.with(MetricType::HISTOGRAM, metrics));
        }
        if !counts.is_empty() {
            let metrics = counts
                .iter()
                .map(|c| {
                    let mut counter = Counter::default();
                    counter.set_value(c.value);
                    let mut m = Metric::from_label(vec![
                        label("controller", &c.controller),
                        label("result", &c.result),
                    ]);
                    m.set_counter(counter);
                    m
                })
                .collect();
            families.push(RECONCILES.with(MetricType::COUNTER, metrics));
        }
        self.reconcile.set(families);
    }
}

/// One controller's reconcile-time histogram as the upstream reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileHistogram {
    pub controller: String,
    /// (upper bound, cumulative count), without the +Inf bucket, which `count` gives.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// One `controller_runtime_reconcile_total` series.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileCount {
    pub controller: String,
    pub result: String,
    pub value: f64,
}

/// The upstream's body did not read as the Prometheus text format.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("line {line} is not in the Prometheus text format: {text:?}")]
    BadLine { line: usize, text: String },
    #[error("family {0} appears in two places")]
    SplitFamily(String),
}

/// The parts of one upstream read the exporter serves.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    /// Upstream families whose names the exporter does not serve itself, as text.
    pub passthrough: String,
    /// Upstream families dropped because the exporter serves a family of that name.
    pub shadowed: BTreeSet<String>,
    pub histograms: Vec<ReconcileHistogram>,
    pub counts: Vec<ReconcileCount>,
}

/// Splits `body` into families, keeps those not named in `own`, and extracts the reconcile series.
pub fn parse(body: &[u8], own: &BTreeSet<String>) -> Result<Parsed, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotUtf8)?;
    let mut parsed = Parsed::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for (index, line) in text.lines().enumerate() {
        let family = match LineInfo::parse(line) {
            LineInfo::Empty => continue,
            LineInfo::Doc { metric_name, .. } => metric_name.to_string(),
            LineInfo::Type {
                metric_name,
                metric_alias,
                ..
            } => metric_alias.unwrap_or(metric_name),
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                if parse_value(value).is_none() {
                    return Err(bad_line(index, line));
                }
                match &current {
                    Some(f) if belongs_to(metric_name, f) => f.clone(),
                    _ => metric_name.to_string(),
                }
            }
            // Other comments are allowed by the format and carry nothing.
            LineInfo::Ignored if line.trim_start().starts_with('#') => continue,
            LineInfo::Ignored => return Err(bad_line(index, line)),
        };
        if current.as_deref() != Some(family.as_str()) {
            if !seen.insert(family.clone()) {
                return Err(ParseError::SplitFamily(family));
            }
            current = Some(family.clone());
        }
        if own.contains(&family) {
            parsed.shadowed.insert(family);
        } else {
            parsed.passthrough.push_str(line.trim());
            parsed.passthrough.push('\n');
        }
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| bad_line(0, &e.to_string()))?;
    (parsed.histograms, parsed.counts) = reconciles(&scrape);
    Ok(parsed)
}

fn bad_line(index: usize, line: &str) -> ParseError {
    ParseError::BadLine {
        line: index + 1,
        text: line.chars().take(120).collect(),
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

/// Whether a sample named `sample` is part of family `family` (histogram and summary samples
/// carry suffixes).
fn belongs_to(sample: &str, family: &str) -> bool {
    sample == family
        || sample
            .strip_prefix(family)
            .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count"))
}

fn reconciles(scrape: &Scrape) -> (Vec<ReconcileHistogram>, Vec<ReconcileCount>) {
    let controller =
        |s: &prometheus_parse::Sample| s.labels.get("controller").unwrap_or_default().to_string();
    let mut sums: BTreeMap<String, f64> = BTreeMap::new();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(f64, u64)>> = BTreeMap::new();
    let mut totals = Vec::new();
    for s in &scrape.samples {
        match (s.metric.as_str(), &s.value) {
            (RECONCILE_TIME, Value::Histogram(hs)) => {
                let mut b: Vec<(f64, u64)> = hs
                    .iter()
                    .filter(|h| h.less_than.is_finite())
                    .map(|h| (h.less_than, h.count as u64))
                    .collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                buckets.insert(controller(s), b);
            }
            (m, Value::Untyped(v) | Value::Counter(v) | Value::Gauge(v)) => {
                if m.strip_prefix(RECONCILE_TIME) == Some("_sum") {
                    sums.insert(controller(s), *v);
                } else if m.strip_prefix(RECONCILE_TIME) == Some("_count") {
                    counts.insert(controller(s), *v as u64);
                } else if m == RECONCILE_TOTAL {
                    totals.push(ReconcileCount {
                        controller: controller(s),
                        result: s.labels.get("result").unwrap_or_default().to_string(),
                        value: *v,
                    });
                }
            }
            _ => {}
        }
    }
    let histograms = buckets
        .into_iter()
        .map(|(controller, buckets)| ReconcileHistogram {
            sum: sums.get(&controller).copied().unwrap_or_default(),
            count: counts.get(&controller).copied().unwrap_or_default(),
            controller,
            buckets,
        })
        .collect();
    totals.sort_by(|a, b| (&a.controller, &a.result).cmp(&(&b.controller, &b.result)));
    (histograms, totals)
}

pub struct Upstream {
    url: Uri,
    timeout: Duration,
    max_bytes: usize,
    client: fetch::Client,
    families: Families,
    /// Names the registry serves itself: an upstream family of one of these names is dropped.
    registry: Arc<Registry>,
    /// Shadowed family names already logged, so each is said once.
    told: BTreeSet<String>,
}

impl Upstream {
    pub fn new(
        url: Uri,
        timeout: Duration,
        max_bytes: usize,
        families: Families,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            url,
            timeout,
            max_bytes,
            client: fetch::Client::default(),
            families,
            registry,
            told: BTreeSet::new(),
        }
    }

    async fn read(&self) -> Result<Parsed, String> {
        let (status, body) = self
            .client
            .get(
                &self.url,
                "text/plain;version=0.0.4",
                self.timeout,
                self.max_bytes,
            )
            .await
            .map_err(|e| format!("GET {}: {e}", fetch::redact(&self.url)))?;
        if !status.is_success() {
            return Err(format!(
                "GET {}: answered {status}",
                fetch::redact(&self.url)
            ));
        }
        let own: BTreeSet<String> = self.registry.families().into_keys().collect();
        parse(&body, &own).map_err(|e| format!("GET {}: {e}", fetch::redact(&self.url)))
    }
}

impl Collect for Upstream {
    fn name(&self) -> &'static str {
        "upstream"
    }

    /// On failure the upstream's series are withdrawn rather than served stale, so Prometheus
    /// marks them stale too; `ksit_exporter_upstream_up` says why they are gone.
    async fn collect(&mut self) -> Result<(), String> {
        match self.read().await {
            Ok(parsed) => {
                for name in parsed.shadowed.difference(&self.told) {
                    tracing::info!(family = %name, "upstream family shadowed by the exporter's own family of that name");
                }
                self.told.extend(parsed.shadowed);
                self.families
                    .set_reconciles(&parsed.histograms, &parsed.counts);
                self.registry
                    .set_passthrough(Bytes::from(parsed.passthrough));
                self.families.up.set(&(), 1.0);
                Ok(())
            }
            Err(e) => {
                self.families.set_reconciles(&[], &[]);
                self.registry.set_passthrough(Bytes::new());
                self.families.up.set(&(), 0.0);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLLER_RUNTIME: &str = r#"# HELP controller_runtime_reconcile_time_seconds Length of time per reconciliation per controller
# TYPE controller_runtime_reconcile_time_seconds histogram
controller_runtime_reconcile_time_seconds_bucket{controller="integration",le="0.005"} 2
controller_runtime_reconcile_time_seconds_bucket{controller="integration",le="0.01"} 5
controller_runtime_reconcile_time_seconds_bucket{controller="integration",le="+Inf"} 7
controller_runtime_reconcile_time_seconds_sum{controller="integration"} 0.125
controller_runtime_reconcile_time_seconds_count{controller="integration"} 7
# HELP controller_runtime_reconcile_total Total number of reconciliations per controller
# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller="integration",result="error"} 1
controller_runtime_reconcile_total{controller="integration",result="success"} 6
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 12
# HELP workqueue_depth Current depth of workqueue
# TYPE workqueue_depth gauge
workqueue_depth{controller="integration",name="integration"} 0
untyped_without_comments 3
"#;

    fn own() -> BTreeSet<String> {
        ["process_open_fds".to_string()].into()
    }

    #[test]
    fn reconcile_series_are_extracted() {
        let p = parse(CONTROLLER_RUNTIME.as_bytes(), &own()).expect("valid");
        assert_eq!(
            p.histograms,
            [ReconcileHistogram {
                controller: "integration".into(),
                buckets: vec![(0.005, 2), (0.01, 5)],
                sum: 0.125,
                count: 7,
            }]
        );
        assert_eq!(p.counts.len(), 2);
        assert_eq!(p.counts[0].result, "error");
        assert_eq!(p.counts[1].value, 6.0);
    }

    #[test]
    fn own_family_names_shadow_upstream_ones() {
        let p = parse(CONTROLLER_RUNTIME.as_bytes(), &own()).expect("valid");
        assert_eq!(p.shadowed, own());
        assert!(!p.passthrough.contains("process_open_fds"));
        assert!(
            p.passthrough
                .contains("workqueue_depth{controller=\"integration\",name=\"integration\"} 0\n")
        );
        assert!(p.passthrough.contains(
            "controller_runtime_reconcile_time_seconds_count{controller=\"integration\"} 7\n"
        ));
        assert!(p.passthrough.ends_with("untyped_without_comments 3\n"));
    }

    #[test]
    fn malformed_bodies_are_rejected_with_the_line() {
        let e = parse(b"ok 1\nthis is { not metrics\n", &BTreeSet::new()).expect_err("bad");
        assert!(matches!(e, ParseError::BadLine { line: 2, .. }), "{e:?}");
        let e = parse(b"a 1\na oops\n", &BTreeSet::new()).expect_err("bad value");
        assert!(matches!(e, ParseError::BadLine { line: 2, .. }), "{e:?}");
        assert_eq!(
            parse(&[0xff, 0xfe], &BTreeSet::new()),
            Err(ParseError::NotUtf8)
        );
        let e = parse(b"a 1\nb 2\na 3\n", &BTreeSet::new()).expect_err("split");
        assert_eq!(e, ParseError::SplitFamily("a".into()));
    }

    #[test]
    fn reconcile_families_encode_as_histogram_and_counter() {
        let r = Registry::new();
        let f = Families::register(&r);
        f.set_reconciles(
            &[ReconcileHistogram {
                controller: "integration".into(),
                buckets: vec![(0.005, 1), (0.01, 3)],
                sum: 0.02,
                count: 4,
            }],
            &[ReconcileCount {
                controller: "integration".into(),
                result: "success".into(),
                value: 4.0,
            }],
        );
        let text = String::from_utf8(r.snapshot().text.to_vec()).expect("utf8");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ksit_reconcile"))
            .collect();
        assert_eq!(
            lines,
            [
                "# HELP ksit_reconcile_duration_seconds Duration of the component's reconciles, from controller_runtime_reconcile_time_seconds.",
                "# TYPE ksit_reconcile_duration_seconds histogram",
                "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"0.005\"} 1",
                "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"0.01\"} 3",
                "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"+Inf\"} 4",
                "ksit_reconcile_duration_seconds_sum{controller=\"integration\"} 0.02",
                "ksit_reconcile_duration_seconds_count{controller=\"integration\"} 4",
                "# HELP ksit_reconcile_total Reconciles by result, from controller_runtime_reconcile_total.",
                "# TYPE ksit_reconcile_total counter",
                "ksit_reconcile_total{controller=\"integration\",result=\"success\"} 4",
            ]
        );
        f.set_reconciles(&[], &[]);
        let text = String::from_utf8(r.snapshot().text.to_vec()).expect("utf8");
        assert!(!text.contains("ksit_reconcile"), "{text}");
    }

    #[test]
    fn empty_body_is_valid_and_empty() {
        assert_eq!(parse(b"", &BTreeSet::new()), Ok(Parsed::default()));
    }
}
