//! Reads the component's own metrics endpoint (`KSIT_UPSTREAM_METRICS_URL`) every interval.
//!
//! Two things come of one read: the reconcile families, re-exposed under `ksit_` names, and the
//! upstream's families passed through, because a manager whose metrics port the sidecar took
//! over has no other way to be scraped. Both are cached between reads, never fetched at scrape
//! time: a scrape must not wait on the component.
//!
//! The body is parsed strictly ([`parse`]) on a blocking thread, off the one thread that serves
//! /healthz: a malformed family is dropped alone and counted, and what is passed through is
//! written from the parsed form, so it always parses in Prometheus.

pub mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::Uri;
use prometheus::proto::{Bucket, Counter, Histogram, Metric, MetricType};

use crate::collector::Collect;
use crate::fetch;
use crate::labels;
use crate::metrics::{Family, Gauges, Mirror, Registry, label};
use parse::{Kind, Line, Reason};

const RECONCILE_TIME: &str = "controller_runtime_reconcile_time_seconds";
const RECONCILE_TOTAL: &str = "controller_runtime_reconcile_total";
/// Family names whose rejection was logged are kept up to this many, so a body of ever new
/// names cannot grow the set; past it, rejections are only counted.
const MAX_TOLD: usize = 1000;

pub const UP: Family = Family {
    name: "ksit_exporter_upstream_up",
    help: "1 when the component's own metrics endpoint was last read and parsed, 0 otherwise.",
};
pub const REJECTED: Family = Family {
    name: "ksit_exporter_upstream_rejected_families",
    help: "Upstream families dropped from the last read, by reason (a line that names no family counts as one).",
};
pub const RECONCILE_DURATION: Family = Family {
    name: "ksit_reconcile_duration_seconds",
    help: "Duration of the component's reconciles, from controller_runtime_reconcile_time_seconds.",
};
pub const RECONCILES: Family = Family {
    name: "ksit_reconcile_total",
    help: "Reconciles by result, from controller_runtime_reconcile_total.",
};

labels! {
    /// Why upstream families were dropped: `syntax`, `metadata`, `type`, `duplicate_series`,
    /// `split`, `clash`, `shadowed`, `limit`.
    pub struct Rejection { reason }
}

#[derive(Clone)]
pub struct Families {
    up: Gauges<()>,
    /// A gauge of the last read rather than a counter: it says how many families are missing
    /// from what is served now (the passthrough is the last read's), needs no rate(), and does
    /// not grow every interval for one fault that persists.
    rejected: Gauges<Rejection>,
    /// `ksit_reconcile_duration_seconds` and `ksit_reconcile_total`, rebuilt from the upstream's.
    reconcile: Mirror,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        let f = Self {
            up: registry.gauges(UP),
            rejected: registry.gauges(REJECTED),
            reconcile: registry.mirror(&[
                (RECONCILE_DURATION, &["controller"]),
                (RECONCILES, &["controller", "result"]),
            ]),
        };
        f.set_rejected(&[0; Reason::ALL.len()]);
        f
    }

    /// Every reason's series, 0 included, so a query sees 0 rather than nothing.
    fn set_rejected(&self, counts: &[usize; Reason::ALL.len()]) {
        for (reason, n) in Reason::ALL.iter().zip(counts) {
            let labels = Rejection {
                reason: reason.as_str().to_string(),
            };
            self.rejected.set(&labels, *n as f64);
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

/// One controller's reconcile-time histogram, summed over the upstream's other labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileHistogram {
    pub controller: String,
    /// (upper bound, cumulative count), without the +Inf bucket, which `count` gives.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// `controller_runtime_reconcile_total` of one controller and result, summed over other labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileCount {
    pub controller: String,
    pub result: String,
    pub value: f64,
}

/// The parts of one upstream read the exporter serves.
#[derive(Debug, Default)]
pub struct Read {
    /// The upstream families kept, in the text format.
    pub passthrough: Bytes,
    /// The same families in OpenMetrics (made once per read, not per scrape).
    pub openmetrics: Bytes,
    pub histograms: Vec<ReconcileHistogram>,
    pub counts: Vec<ReconcileCount>,
    /// Families kept.
    pub served: usize,
    /// Families dropped, by reason in [`Reason::ALL`]'s order.
    pub rejected: [usize; Reason::ALL.len()],
    /// The first rejections, for the log.
    pub reasons: Vec<parse::Rejected>,
}

impl Read {
    /// Something was sent and none of it is a family: not a metrics endpoint.
    fn unusable(&self) -> bool {
        self.served == 0
            && self.rejected.iter().sum::<usize>() > self.rejected[Reason::Shadowed as usize]
    }
}

/// Family groups the exporter serves about itself, so every upstream family of the group is
/// dropped, not only the names both serve: the exporter's `process_*` describe the exporter,
/// and an upstream `process_virtual_memory_max_bytes` beside them would describe another
/// process under the same prefix (the component's process is `ksit_component_process_*`).
const OWN_PREFIXES: &[&str] = &["process_"];

/// Parses one upstream body; `own` names the families the exporter serves itself.
pub fn read_body(body: &[u8], own: &BTreeSet<String>) -> Read {
    let parsed = parse::parse(body, &|name| {
        own.contains(name) || OWN_PREFIXES.iter().any(|p| name.starts_with(p))
    });
    let (histograms, counts) = reconciles(&parsed);
    let openmetrics = Bytes::from(parse::to_openmetrics(&parsed));
    Read {
        histograms,
        counts,
        served: parsed.served.len(),
        rejected: parsed.counts,
        reasons: parsed.rejected,
        openmetrics,
        passthrough: Bytes::from(parsed.text),
    }
}

/// The samples of served family `name` (of type `kind`), parsed again from the served text.
fn samples_of<'a>(
    parsed: &'a parse::Parsed,
    name: &str,
    kind: Kind,
) -> impl Iterator<Item = parse::Sample<'a>> {
    parsed
        .served
        .iter()
        .find(|f| f.name == name && f.kind == kind)
        .map(|f| &parsed.text[f.range.clone()])
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter_map(|line| match parse::parse_line(line) {
            Ok(Line::Sample(s)) => Some(s),
            _ => None,
        })
}

/// The reconcile series, summed per controller (and result, and bucket bound) over any other
/// labels the upstream adds, so each is served once.
fn reconciles(parsed: &parse::Parsed) -> (Vec<ReconcileHistogram>, Vec<ReconcileCount>) {
    #[derive(Default)]
    struct Sums {
        buckets: Vec<(f64, f64)>,
        inf: f64,
        sum: f64,
        count: Option<f64>,
    }
    let mut by_controller: BTreeMap<String, Sums> = BTreeMap::new();
    for s in samples_of(parsed, RECONCILE_TIME, Kind::Histogram) {
        let sums = by_controller
            .entry(s.label("controller").unwrap_or_default().to_string())
            .or_default();
        match &s.name[RECONCILE_TIME.len()..] {
            "_bucket" => {
                // The parser has checked that every bucket has a float `le`.
                let le = s
                    .label("le")
                    .and_then(|v| parse::parse_float(v.as_bytes()))
                    .unwrap_or(f64::INFINITY);
                if le == f64::INFINITY {
                    sums.inf += s.value;
                } else if let Some(b) = sums.buckets.iter_mut().find(|(bound, _)| *bound == le) {
                    b.1 += s.value;
                } else {
                    sums.buckets.push((le, s.value));
                }
            }
            "_sum" => sums.sum += s.value,
            "_count" => *sums.count.get_or_insert(0.0) += s.value,
            _ => {}
        }
    }
    let histograms = by_controller
        .into_iter()
        .map(|(controller, mut s)| {
            s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            ReconcileHistogram {
                controller,
                // `as` saturates: a negative or NaN count from the upstream is served as 0.
                buckets: s.buckets.iter().map(|(le, n)| (*le, *n as u64)).collect(),
                sum: s.sum,
                count: s.count.unwrap_or(s.inf) as u64,
            }
        })
        .collect();
    let mut totals: BTreeMap<(String, String), f64> = BTreeMap::new();
    for kind in [Kind::Counter, Kind::Untyped] {
        for s in samples_of(parsed, RECONCILE_TOTAL, kind) {
            let key = (
                s.label("controller").unwrap_or_default().to_string(),
                s.label("result").unwrap_or_default().to_string(),
            );
            *totals.entry(key).or_default() += s.value;
        }
    }
    let counts = totals
        .into_iter()
        .map(|((controller, result), value)| ReconcileCount {
            controller,
            result,
            value,
        })
        .collect();
    (histograms, counts)
}

pub struct Upstream {
    url: Uri,
    timeout: Duration,
    max_bytes: usize,
    client: fetch::Client,
    families: Families,
    /// Names the registry serves itself: an upstream family of one of these names is dropped.
    registry: Arc<Registry>,
    /// Family names whose rejection was logged, so each is said once.
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

    async fn read(&self) -> Result<Read, String> {
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
        // A large body takes a while to parse: on the blocking pool, the one runtime thread
        // goes on answering /healthz and scrapes.
        tokio::task::spawn_blocking(move || read_body(&body, &own))
            .await
            .map_err(|e| format!("parsing the body of GET {}: {e}", fetch::redact(&self.url)))
    }

    /// Logs each rejected family once (by name, for the life of the process).
    fn tell(&mut self, reasons: &[parse::Rejected]) {
        for r in reasons {
            if self.told.len() >= MAX_TOLD || self.told.contains(&r.family) {
                continue;
            }
            self.told.insert(r.family.clone());
            let reason = r.reason.as_str();
            if r.reason == Reason::Shadowed {
                tracing::info!(family = %r.family, reason, "upstream family not served: {}", r.detail);
            } else {
                tracing::warn!(family = %r.family, reason, "upstream family dropped, the rest is served: {}", r.detail);
            }
        }
    }

    fn withdraw(&self) {
        self.families.set_reconciles(&[], &[]);
        self.registry.set_passthrough(Bytes::new(), Bytes::new());
        self.families.up.set(&(), 0.0);
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
            Ok(read) => {
                self.tell(&read.reasons);
                self.families.set_rejected(&read.rejected);
                if read.unusable() {
                    self.withdraw();
                    let first = read.reasons.first().map(|r| r.detail.as_str());
                    return Err(format!(
                        "GET {}: no family of the body is in the Prometheus text format ({})",
                        fetch::redact(&self.url),
                        first.unwrap_or_default()
                    ));
                }
                self.families.set_reconciles(&read.histograms, &read.counts);
                self.registry
                    .set_passthrough(read.passthrough, read.openmetrics);
                self.families.up.set(&(), 1.0);
                Ok(())
            }
            Err(e) => {
                self.families.set_rejected(&[0; Reason::ALL.len()]);
                self.withdraw();
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
workqueue_depth{name="integration"} 0
untyped_without_comments 3
"#;

    fn own() -> BTreeSet<String> {
        [
            "process_open_fds",
            "ksit_reconcile_duration_seconds",
            "ksit_reconcile_total",
        ]
        .map(String::from)
        .into()
    }

    fn text(read: &Read) -> &str {
        std::str::from_utf8(&read.passthrough).expect("served text is UTF-8")
    }

    /// The families served, by name, in order.
    fn served(read: &Read) -> Vec<String> {
        let parsed = parse::parse(&read.passthrough, &|_| false);
        parsed.served.into_iter().map(|f| f.name).collect()
    }

    /// Served text parses again with nothing rejected, to the same text.
    fn assert_reparses(read: &Read) {
        let again = parse::parse(&read.passthrough, &|_| false);
        assert_eq!(again.counts, [0; Reason::ALL.len()], "{:?}", again.rejected);
        assert_eq!(String::from_utf8_lossy(&again.text), text(read));
    }

    #[test]
    fn reconcile_series_are_extracted() {
        let r = read_body(CONTROLLER_RUNTIME.as_bytes(), &own());
        assert_eq!(
            r.histograms,
            [ReconcileHistogram {
                controller: "integration".into(),
                buckets: vec![(0.005, 2), (0.01, 5)],
                sum: 0.125,
                count: 7,
            }]
        );
        assert_eq!(
            r.counts,
            [
                ReconcileCount {
                    controller: "integration".into(),
                    result: "error".into(),
                    value: 1.0
                },
                ReconcileCount {
                    controller: "integration".into(),
                    result: "success".into(),
                    value: 6.0
                },
            ]
        );
    }

    #[test]
    fn own_family_names_shadow_upstream_ones() {
        let r = read_body(CONTROLLER_RUNTIME.as_bytes(), &own());
        assert_eq!(r.rejected[Reason::Shadowed as usize], 1);
        assert_eq!(r.reasons[0].family, "process_open_fds");
        assert_eq!(
            served(&r),
            [
                RECONCILE_TIME,
                RECONCILE_TOTAL,
                "workqueue_depth",
                "untyped_without_comments"
            ]
        );
        assert!(text(&r).contains("workqueue_depth{name=\"integration\"} 0\n"));
        assert!(text(&r).ends_with("untyped_without_comments 3\n"));
        assert_reparses(&r);
    }

    #[test]
    fn every_upstream_process_family_is_dropped() {
        // controller-runtime serves process_virtual_memory_max_bytes; the exporter's own
        // process collector may not, and it must not be served beside the exporter's others.
        let body = "\
# TYPE process_virtual_memory_max_bytes gauge
process_virtual_memory_max_bytes -1
# TYPE process_open_fds gauge
process_open_fds 12
# TYPE process_network_receive_bytes_total counter
process_network_receive_bytes_total 5
# TYPE processes_unrelated gauge
processes_unrelated 1
";
        let r = read_body(body.as_bytes(), &own());
        assert_eq!(served(&r), ["processes_unrelated"]);
        assert_eq!(r.rejected[Reason::Shadowed as usize], 3, "{:?}", r.reasons);
        assert!(
            !r.unusable(),
            "only shadowed families: still a metrics endpoint"
        );
    }

    #[test]
    fn suffixes_of_own_names_shadow_too() {
        let body = "\
ksit_reconcile_duration_seconds_count 1
ksit_reconcile_duration_seconds_bucket{le=\"1\"} 1
# TYPE ksit_reconcile counter
ksit_reconcile 1
process_open_fds_total 2
# TYPE process_open histogram
process_open_fds{le=\"1\"} 1
kept 1
";
        let r = read_body(body.as_bytes(), &own());
        assert_eq!(served(&r), ["kept"]);
        assert_eq!(r.rejected[Reason::Shadowed as usize], 6, "{:?}", r.reasons);
        // `process_open` is a histogram, so `process_open_fds` is not its sample: its own family
        // (dropped as every upstream `process_*` is).
        assert_eq!(r.rejected[Reason::Type as usize], 0);
    }

    /// A good family before and after each bad one: only the bad one is dropped.
    #[test]
    fn a_malformed_family_is_dropped_alone() {
        let cases: &[(&str, Reason, &[u8])] = &[
            ("unbalanced braces", Reason::Syntax, b"bad{a=\"b\" 1\n"),
            ("unclosed value", Reason::Syntax, b"bad{a=\"b} 1\n"),
            ("unquoted value", Reason::Syntax, b"bad{a=b} 1\n"),
            ("missing comma", Reason::Syntax, b"bad{a=\"1\" b=\"2\"} 1\n"),
            ("leading comma", Reason::Syntax, b"bad{,a=\"1\"} 1\n"),
            ("double comma", Reason::Syntax, b"bad{a=\"1\",,} 1\n"),
            ("label name", Reason::Syntax, b"bad{1a=\"1\"} 1\n"),
            ("__name__", Reason::Syntax, b"bad{__name__=\"x\"} 1\n"),
            ("label twice", Reason::Syntax, b"bad{a=\"1\",a=\"2\"} 1\n"),
            ("trailing garbage", Reason::Syntax, b"bad 1 2 3\n"),
            ("text after value", Reason::Syntax, b"bad 1 x\n"),
            ("no value", Reason::Syntax, b"bad\n"),
            ("value word", Reason::Syntax, b"bad oops\n"),
            ("hex value", Reason::Syntax, b"bad 0x1p3\n"),
            ("underscore", Reason::Syntax, b"bad 1_000\n"),
            ("overflow", Reason::Syntax, b"bad 1e400\n"),
            ("signed NaN", Reason::Syntax, b"bad -NaN\n"),
            ("float timestamp", Reason::Syntax, b"bad 1 1.5\n"),
            ("negative timestamp", Reason::Syntax, b"bad 1 -5\n"),
            (
                "huge timestamp",
                Reason::Syntax,
                b"bad 1 99999999999999999999\n",
            ),
            ("CRLF", Reason::Syntax, b"bad 1\r\n"),
            ("non-UTF-8 name", Reason::Syntax, b"bad\xff 1\n"),
            ("non-UTF-8 value", Reason::Syntax, b"bad{a=\"\xff\"} 1\n"),
            (
                "non-UTF-8 HELP",
                Reason::Syntax,
                b"# HELP bad \xff\nbad 1\n",
            ),
            ("dash after name", Reason::Syntax, b"bad-1 2\n"),
            ("NUL in a value", Reason::Syntax, b"bad{a=\"\0\"} 1\n"),
            ("NUL in HELP", Reason::Syntax, b"# HELP bad a\0b\nbad 1\n"),
            (
                "TYPE word after two blanks",
                Reason::Metadata,
                b"# TYPE bad  counter\nbad 1\n",
            ),
            (
                "unknown type",
                Reason::Metadata,
                b"# TYPE bad bogus\nbad 1\n",
            ),
            (
                "OpenMetrics type",
                Reason::Metadata,
                b"# TYPE bad info\nbad 1\n",
            ),
            (
                "second TYPE",
                Reason::Metadata,
                b"# TYPE bad counter\n# TYPE bad gauge\nbad 1\n",
            ),
            (
                "second HELP",
                Reason::Metadata,
                b"# HELP bad a\n# HELP bad b\nbad 1\n",
            ),
            (
                "TYPE after samples",
                Reason::Metadata,
                b"bad 1\n# TYPE bad gauge\n",
            ),
            (
                "duplicate series",
                Reason::DuplicateSeries,
                b"bad{a=\"1\",b=\"2\"} 1\nbad{b=\"2\",a=\"1\"} 2\n",
            ),
            (
                "bucket without le",
                Reason::Type,
                b"# TYPE bad histogram\nbad_bucket 1\nbad_sum 1\nbad_count 1\n",
            ),
            (
                "le not a float",
                Reason::Type,
                b"# TYPE bad histogram\nbad_bucket{le=\"x\"} 1\n",
            ),
            (
                "bare histogram sample",
                Reason::Type,
                b"# TYPE bad histogram\nbad 1\n",
            ),
            (
                "summary without quantile",
                Reason::Type,
                b"# TYPE bad summary\nbad 1\n",
            ),
            (
                "exemplar",
                Reason::Syntax,
                b"# TYPE bad histogram\nbad_bucket{le=\"1\"} 1 # {trace_id=\"x\"} 1\n",
            ),
        ];
        for (what, reason, bad) in cases {
            let mut body = b"# HELP before Before.\n# TYPE before gauge\nbefore 1\n".to_vec();
            body.extend_from_slice(bad);
            body.extend_from_slice(b"# TYPE after_total counter\nafter_total 2\n");
            let r = read_body(&body, &BTreeSet::new());
            assert_eq!(served(&r), ["before", "after_total"], "{what}");
            let mut expected = [0; Reason::ALL.len()];
            expected[*reason as usize] = 1;
            assert_eq!(r.rejected, expected, "{what}: {:?}", r.reasons);
            assert_eq!(r.reasons[0].family, "bad", "{what}");
            assert_eq!(
                text(&r),
                "# HELP before Before.\n# TYPE before gauge\nbefore 1\n# TYPE after_total counter\nafter_total 2\n",
                "{what}"
            );
        }
    }

    #[test]
    fn a_split_family_is_dropped_whole() {
        let r = read_body(b"a 1\nb 2\na 3\n", &BTreeSet::new());
        assert_eq!(served(&r), ["b"]);
        assert_eq!(r.rejected[Reason::Split as usize], 1, "{:?}", r.reasons);
        assert_eq!(text(&r), "b 2\n");
    }

    #[test]
    fn families_whose_series_names_overlap_are_dropped() {
        let body = "\
# TYPE h histogram
h_bucket{le=\"+Inf\"} 1
h_sum 1
h_count 1
# TYPE h_count gauge
h_count{x=\"1\"} 1
# TYPE go_memstats_alloc_bytes gauge
go_memstats_alloc_bytes 1
# TYPE go_memstats_alloc_bytes_total counter
go_memstats_alloc_bytes_total 1
";
        let r = read_body(body.as_bytes(), &BTreeSet::new());
        assert_eq!(
            served(&r),
            ["go_memstats_alloc_bytes", "go_memstats_alloc_bytes_total"]
        );
        assert_eq!(r.rejected[Reason::Clash as usize], 2, "{:?}", r.reasons);
    }

    #[test]
    fn a_line_naming_no_family_is_dropped_and_counted() {
        let r = read_body(
            b"a 1\n{a=\"b\"} 1\n!!!\n# HELP \na 2x\nb 1\n",
            &BTreeSet::new(),
        );
        // The second `a` line is malformed: its family goes with it.
        assert_eq!(served(&r), ["b"]);
        assert_eq!(r.rejected[Reason::Syntax as usize], 4, "{:?}", r.reasons);
        assert_eq!(r.reasons[0].family, "");
    }

    #[test]
    fn valid_text_prometheus_accepts_is_served() {
        let body = "\
foo{} 1
foo:bar 2
# HELP esc A \\\\ backslash, a \\n newline and a \\t kept.
# TYPE esc gauge
esc{v=\"a}b,c\\\"d\\\\e\\nf\\tg\",} 3
  spaced { a = \"1\" , b = \"2\" , } 4   1700000000000  
nan NaN
inf{s=\"+\"} +Inf
inf{s=\"-\"} -Inf
inf{s=\"word\"} Infinity
exp 1.5e-3
big 1e300
neg -0.5
stamped 7 1700000000000
# a comment
#no blank
# TYPE sum summary
sum{quantile=\"0.5\"} 1
sum_sum 2
sum_count 3
# TYPE hist histogram
hist_bucket{le=\"1\"} 1
hist_bucket{le=\"+Inf\"} 2
hist_sum 3
hist_count 2
# HELP hist Help after samples is allowed.
last 1";
        let r = read_body(body.as_bytes(), &BTreeSet::new());
        assert_eq!(r.rejected, [0; Reason::ALL.len()], "{:?}", r.reasons);
        assert_eq!(
            served(&r),
            [
                "foo", "foo:bar", "esc", "spaced", "nan", "inf", "exp", "big", "neg", "stamped",
                "sum", "hist", "last"
            ]
        );
        let t = text(&r);
        for line in [
            "foo 1\n",
            "foo:bar 2\n",
            "# HELP esc A \\\\ backslash, a \\n newline and a \\\\t kept.\n",
            "esc{v=\"a}b,c\\\"d\\\\e\\nf\\\\tg\"} 3\n",
            "spaced{a=\"1\",b=\"2\"} 4 1700000000000\n",
            "nan NaN\n",
            "inf{s=\"+\"} +Inf\n",
            "inf{s=\"word\"} +Inf\n",
            "exp 0.0015\n",
            "big 1e300\n",
            "neg -0.5\n",
            "# HELP hist Help after samples is allowed.\n# TYPE hist histogram\n",
            "last 1\n",
        ] {
            assert!(t.contains(line), "{line:?} not in:\n{t}");
        }
        assert_reparses(&r);
    }

    #[test]
    fn reconciles_sum_over_extra_labels_and_keep_values_whole() {
        let body = r#"# TYPE controller_runtime_reconcile_time_seconds histogram
controller_runtime_reconcile_time_seconds_bucket{controller="a,b",le="0.1",pod="x"} 1
controller_runtime_reconcile_time_seconds_bucket{controller="a,b",le="0.1",pod="y"} 2
controller_runtime_reconcile_time_seconds_bucket{controller="a,b",le="+Inf",pod="x"} 2
controller_runtime_reconcile_time_seconds_bucket{controller="a,b",le="+Inf",pod="y"} 3
controller_runtime_reconcile_time_seconds_sum{controller="a,b",pod="x"} 0.5
controller_runtime_reconcile_time_seconds_sum{controller="a,b",pod="y"} 0.25
controller_runtime_reconcile_time_seconds_count{controller="a,b",pod="x"} 2
controller_runtime_reconcile_time_seconds_count{controller="a,b",pod="y"} 3
# TYPE controller_runtime_reconcile_total counter
controller_runtime_reconcile_total{controller="a,b",result="success",pod="x"} 4
controller_runtime_reconcile_total{controller="a,b",result="success",pod="y"} 5
controller_runtime_reconcile_total{controller="a,b",result="error",pod="y"} 1
"#;
        let r = read_body(body.as_bytes(), &own());
        assert_eq!(
            r.histograms,
            [ReconcileHistogram {
                controller: "a,b".into(),
                buckets: vec![(0.1, 3)],
                sum: 0.75,
                count: 5,
            }]
        );
        assert_eq!(
            r.counts
                .iter()
                .map(|c| (c.controller.as_str(), c.result.as_str(), c.value))
                .collect::<Vec<_>>(),
            [("a,b", "error", 1.0), ("a,b", "success", 9.0)]
        );
        // Encoded once per series.
        let registry = Registry::new();
        let f = Families::register(&registry);
        f.set_reconciles(&r.histograms, &r.counts);
        let text = String::from_utf8(registry.snapshot().text().to_vec()).expect("utf8");
        assert_eq!(text.matches("ksit_reconcile_total{").count(), 2, "{text}");
        assert_eq!(
            text.matches("ksit_reconcile_duration_seconds_bucket{")
                .count(),
            2,
            "{text}"
        );
        assert!(
            text.contains(
                "ksit_reconcile_duration_seconds_bucket{controller=\"a,b\",le=\"0.1\"} 3\n"
            )
        );
    }

    #[test]
    fn a_malformed_reconcile_family_yields_no_reconcile_series() {
        let body = "# TYPE controller_runtime_reconcile_total counter\n\
                    controller_runtime_reconcile_total{controller=\"a\"} 1\n\
                    controller_runtime_reconcile_total{controller=\"a\"} 2\n";
        let r = read_body(body.as_bytes(), &own());
        assert!(r.counts.is_empty());
        assert_eq!(r.rejected[Reason::DuplicateSeries as usize], 1);
    }

    #[test]
    fn families_past_the_limit_are_dropped() {
        let body: String = (0..parse::MAX_FAMILIES + 5)
            .map(|i| format!("f{i} 1\n"))
            .collect();
        let r = read_body(body.as_bytes(), &BTreeSet::new());
        assert_eq!(r.served, parse::MAX_FAMILIES);
        assert_eq!(r.rejected[Reason::Limit as usize], 5);
    }

    #[test]
    fn nothing_usable_is_told_apart_from_an_empty_body() {
        assert!(read_body(b"this is { not metrics\n", &BTreeSet::new()).unusable());
        assert!(read_body(&[0xff, 0xfe], &BTreeSet::new()).unusable());
        let empty = read_body(b"", &BTreeSet::new());
        assert!(!empty.unusable());
        assert!(empty.passthrough.is_empty());
        assert!(!read_body(b"process_open_fds 1\n", &own()).unusable());
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
        let text = String::from_utf8(r.snapshot().text().to_vec()).expect("utf8");
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
        let text = String::from_utf8(r.snapshot().text().to_vec()).expect("utf8");
        assert!(!text.contains("ksit_reconcile"), "{text}");
        assert!(text.contains("ksit_exporter_upstream_rejected_families{reason=\"syntax\"} 0\n"));
    }
}
