//! Every metric family the exporter serves is named here, and only here.
//!
//! Collectors write into these handles in the background and call [`Metrics::touch`]; the HTTP
//! handler calls [`Metrics::snapshot`], which encodes (and gzips, when asked) at most once per
//! change of state, so repeated scrapes of an unchanged state cost a pointer copy.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// A family whose samples a collector computes whole (upstream histograms, counters read from
/// the kernel): the prometheus crate cannot set a counter or a histogram to a given value, so the
/// collector hands over finished families and this serves them.
#[derive(Clone)]
pub struct Mirror {
    descs: Arc<Vec<Desc>>,
    families: Arc<Mutex<Vec<MetricFamily>>>,
}

impl Mirror {
    fn new(descs: Vec<Desc>) -> Self {
        Self {
            descs: Arc::new(descs),
            families: Arc::default(),
        }
    }

    /// Replaces everything this mirror serves.
    pub fn set(&self, families: Vec<MetricFamily>) {
        *self
            .families
            .lock()
            .expect("mirror lock is never poisoned: set only swaps a Vec") = families;
    }
}

impl Collector for Mirror {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families
            .lock()
            .expect("mirror lock is never poisoned: set only swaps a Vec")
            .clone()
    }
}

fn desc(name: &str, help: &str, labels: &[&str]) -> Desc {
    Desc::new(
        name.to_string(),
        help.to_string(),
        labels.iter().map(|l| l.to_string()).collect(),
        Default::default(),
    )
    .expect("metric descriptions are static and valid")
}

/// An encoded exposition of one state; the gzip form is made the first time a client asks.
pub struct Snapshot {
    pub text: Bytes,
    gzip: OnceLock<Bytes>,
}

impl Snapshot {
    pub fn gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.text.len() / 4),
                    flate2::Compression::fast(),
                );
                enc.write_all(&self.text)
                    .and_then(|_| enc.finish())
                    .map(Bytes::from)
                    .expect("gzip into a Vec cannot fail")
            })
            .clone()
    }
}

pub struct Metrics {
    registry: Registry,
    /// Every family the exporter registers, with its variable labels.
    families: BTreeMap<String, Vec<String>>,
    names: BTreeSet<String>,
    generation: AtomicU64,
    cache: Mutex<Option<(u64, Arc<Snapshot>)>>,
    /// Upstream families passed through as text, already stripped of names the exporter serves.
    passthrough: RwLock<Bytes>,

    pub scrapes: IntCounter,
    pub collect_duration: GaugeVec,
    pub collector_up: IntGaugeVec,
    pub upstream_up: IntGauge,

    pub health_up: IntGaugeVec,
    pub health_duration: GaugeVec,
    pub health_last_success: GaugeVec,

    pub process_count: IntGauge,
    pub process_resident_memory: IntGauge,
    pub process_start_time: Gauge,
    /// `ksit_component_process_cpu_seconds_total`, a counter read from the kernel.
    process_cpu: Mirror,
    /// The exporter's own standard `process_*` families, read in the background.
    pub own_process: Mirror,
    /// `ksit_reconcile_duration_seconds` and `ksit_reconcile_total`, from the upstream.
    reconcile: Mirror,

    pub kube: KubeMetrics,
}

/// The series the Kubernetes collectors write.
pub struct KubeMetrics {
    pub up: IntGauge,
    pub objects: IntGaugeVec,
    pub objects_dropped: IntCounterVec,

    pub component_info: GaugeVec,
    pub pod_phase: GaugeVec,
    pub container_ready: GaugeVec,
    /// `ksit_component_container_restarts_total`, a counter the kubelet keeps.
    container_restarts: Mirror,
    pub container_last_terminated: GaugeVec,
    pub replicas: GaugeVec,
    pub leader: IntGauge,

    pub cluster_status: GaugeVec,
    pub cluster_condition: GaugeVec,
    pub cluster_last_sync: GaugeVec,

    pub integration_info: GaugeVec,
    pub integration_phase: GaugeVec,
    pub integration_condition: GaugeVec,
    pub integration_cluster_connected: GaugeVec,
    pub integration_last_reconcile: GaugeVec,
    pub integration_generation_lag: GaugeVec,
}

const CONTAINER_RESTARTS: &str = "ksit_component_container_restarts_total";
const CONTAINER_RESTARTS_HELP: &str =
    "Restarts of each container of the component's pod, as the kubelet counts them.";

/// Label sets of the object series; `cluster`, `pod`, `service`, `instance` and `job` are left to
/// Prometheus (external and target labels), so objects use `cluster_name`, `target`, `integration`.
const CLUSTER_LABELS: &[&str] = &["source", "namespace", "target", "cluster_name"];
const INTEGRATION_LABELS: &[&str] = &["namespace", "integration"];

impl KubeMetrics {
    fn new(reg: &mut impl FnMut(Box<dyn Collector>)) -> Self {
        fn gauge(
            reg: &mut impl FnMut(Box<dyn Collector>),
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> IntGaugeVec {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            reg(Box::new(g.clone()));
            g
        }
        fn float(
            reg: &mut impl FnMut(Box<dyn Collector>),
            name: &str,
            help: &str,
            labels: &[&str],
        ) -> GaugeVec {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric");
            reg(Box::new(g.clone()));
            g
        }
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            CLUSTER_LABELS.iter().chain(extra).copied().collect()
        };
        let integration = |extra: &[&'static str]| -> Vec<&'static str> {
            INTEGRATION_LABELS.iter().chain(extra).copied().collect()
        };

        let up = IntGauge::new(
            "ksit_exporter_kube_up",
            "1 when the Kubernetes API server last answered the exporter, 0 when it could not be reached.",
        )
        .expect("static metric");
        reg(Box::new(up.clone()));
        let objects = gauge(
            reg,
            "ksit_exporter_kube_objects",
            "Objects of each kind the exporter watches.",
            &["kind"],
        );
        let objects_dropped = IntCounterVec::new(
            Opts::new(
                "ksit_exporter_kube_objects_dropped_total",
                "Objects left out of the series because KSIT_MAX_OBJECTS was reached, counted once each.",
            ),
            &["kind"],
        )
        .expect("static metric");
        reg(Box::new(objects_dropped.clone()));
        let leader = IntGauge::new(
            "ksit_component_leader",
            "1 when this pod holds the component's leader Lease (KSIT_LEADER_LEASE).",
        )
        .expect("static metric");
        reg(Box::new(leader.clone()));
        let container_restarts = Mirror::new(vec![desc(
            CONTAINER_RESTARTS,
            CONTAINER_RESTARTS_HELP,
            &["container"],
        )]);
        reg(Box::new(container_restarts.clone()));
        Self {
            up,
            objects,
            objects_dropped,
            component_info: float(
                reg,
                "ksit_component_info",
                "The component beside this exporter; always 1. The pod name comes as the target's pod label.",
                &["component", "node", "workload_kind", "workload"],
            ),
            pod_phase: float(
                reg,
                "ksit_component_pod_phase",
                "The component pod's phase, one-hot.",
                &["phase"],
            ),
            container_ready: float(
                reg,
                "ksit_component_container_ready",
                "1 when the container of the component's pod is ready.",
                &["container"],
            ),
            container_restarts,
            container_last_terminated: float(
                reg,
                "ksit_component_container_last_terminated_reason",
                "Why the container last terminated (OOMKilled, Error, Completed, ...); 1 for the last reason.",
                &["container", "reason"],
            ),
            replicas: float(
                reg,
                "ksit_component_replicas",
                "Replicas of the component's workload (Deployment or StatefulSet) by state: desired, ready, available, updated.",
                &["state"],
            ),
            leader,
            cluster_status: float(
                reg,
                "ksit_cluster_status",
                "1 when the managed cluster is ready (IntegrationTarget status.ready, or ManagedCluster Available), else 0.",
                &with(&[]),
            ),
            cluster_condition: float(
                reg,
                "ksit_cluster_condition",
                "Conditions of the managed cluster, one-hot over True, False and Unknown.",
                &with(&["condition", "status"]),
            ),
            cluster_last_sync: float(
                reg,
                "ksit_cluster_last_sync_timestamp_seconds",
                "Unix time of the IntegrationTarget's status.lastSyncTime.",
                &with(&[]),
            ),
            integration_info: float(
                reg,
                "ksit_integration_info",
                "Each Integration, its type and whether it is enabled; always 1.",
                &integration(&["type", "enabled"]),
            ),
            integration_phase: float(
                reg,
                "ksit_integration_status_phase",
                "The Integration's status.phase, one-hot over Initializing, Running, Failed and Succeeded.",
                &integration(&["type", "phase"]),
            ),
            integration_condition: float(
                reg,
                "ksit_integration_condition",
                "Conditions of the Integration, one-hot over True, False and Unknown.",
                &integration(&["condition", "status"]),
            ),
            integration_cluster_connected: float(
                reg,
                "ksit_integration_cluster_connected",
                "1 when the Integration reports the target cluster connected (status.clusterStatuses).",
                &integration(&["cluster_name"]),
            ),
            integration_last_reconcile: float(
                reg,
                "ksit_integration_last_reconcile_timestamp_seconds",
                "Unix time of the Integration's status.lastReconcileTime.",
                &integration(&[]),
            ),
            integration_generation_lag: float(
                reg,
                "ksit_integration_generation_lag",
                "metadata.generation minus status.observedGeneration: above 0, the controller has not caught up.",
                &integration(&[]),
            ),
        }
    }

    /// Sets the restart counters of the component's containers.
    pub fn set_container_restarts(&self, restarts: &[(String, i64)]) {
        let metrics = restarts
            .iter()
            .map(|(container, n)| {
                let mut counter = Counter::default();
                counter.set_value(*n as f64);
                let mut m = Metric::from_label(vec![label("container", container)]);
                m.set_counter(counter);
                m
            })
            .collect::<Vec<_>>();
        let families = if metrics.is_empty() {
            Vec::new()
        } else {
            vec![family(
                CONTAINER_RESTARTS,
                CONTAINER_RESTARTS_HELP,
                MetricType::COUNTER,
                metrics,
            )]
        };
        self.container_restarts.set(families);
    }
}

const RECONCILE_DURATION: &str = "ksit_reconcile_duration_seconds";
const RECONCILE_DURATION_HELP: &str =
    "Duration of the component's reconciles, from controller_runtime_reconcile_time_seconds.";
const RECONCILE_TOTAL: &str = "ksit_reconcile_total";
const RECONCILE_TOTAL_HELP: &str = "Reconciles by result, from controller_runtime_reconcile_total.";
const PROCESS_CPU: &str = "ksit_component_process_cpu_seconds_total";
const PROCESS_CPU_HELP: &str =
    "User and system CPU time of the matching processes, summed; resets when one exits.";

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

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let mut families = BTreeMap::new();
        let mut reg = |c: Box<dyn Collector>| {
            families.extend(
                c.desc()
                    .iter()
                    .map(|d| (d.fq_name.clone(), d.variable_labels.clone())),
            );
            registry
                .register(c)
                .expect("each family is registered once");
        };

        let build_info = IntGaugeVec::new(
            Opts::new(
                "ksit_exporter_build_info",
                "Build of the running ksit-exporter; always 1.",
            ),
            &["version", "revision"],
        )
        .expect("static metric");
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                option_env!("KSIT_GIT_REVISION").unwrap_or("unknown"),
            ])
            .set(1);
        reg(Box::new(build_info));

        let scrapes = IntCounter::new(
            "ksit_exporter_scrapes_total",
            "Requests for /metrics served. A response carries the count as of when its body was encoded.",
        )
        .expect("static metric");
        reg(Box::new(scrapes.clone()));
        let collect_duration = GaugeVec::new(
            Opts::new(
                "ksit_exporter_collect_duration_seconds",
                "Wall time of the last run of each collector.",
            ),
            &["collector"],
        )
        .expect("static metric");
        reg(Box::new(collect_duration.clone()));
        let collector_up = IntGaugeVec::new(
            Opts::new(
                "ksit_exporter_collector_up",
                "1 when the collector's last run succeeded, 0 when it failed.",
            ),
            &["collector"],
        )
        .expect("static metric");
        reg(Box::new(collector_up.clone()));
        let upstream_up = IntGauge::new(
            "ksit_exporter_upstream_up",
            "1 when the component's own metrics endpoint was last read and parsed, 0 otherwise.",
        )
        .expect("static metric");
        reg(Box::new(upstream_up.clone()));

        let health_up = IntGaugeVec::new(
            Opts::new(
                "ksit_component_health_up",
                "1 when the component's health endpoint last answered 2xx within the timeout.",
            ),
            &["probe"],
        )
        .expect("static metric");
        reg(Box::new(health_up.clone()));
        let health_duration = GaugeVec::new(
            Opts::new(
                "ksit_component_health_probe_duration_seconds",
                "Duration of the last probe of the component's health endpoint.",
            ),
            &["probe"],
        )
        .expect("static metric");
        reg(Box::new(health_duration.clone()));
        let health_last_success = GaugeVec::new(
            Opts::new(
                "ksit_component_health_last_success_timestamp_seconds",
                "Unix time of the last successful probe of the component's health endpoint.",
            ),
            &["probe"],
        )
        .expect("static metric");
        reg(Box::new(health_last_success.clone()));

        let process_count = IntGauge::new(
            "ksit_component_processes",
            "Local processes matching KSIT_PROCESS_MATCH.",
        )
        .expect("static metric");
        reg(Box::new(process_count.clone()));
        let process_resident_memory = IntGauge::new(
            "ksit_component_process_resident_memory_bytes",
            "Resident memory of the matching processes, summed.",
        )
        .expect("static metric");
        reg(Box::new(process_resident_memory.clone()));
        let process_start_time = Gauge::new(
            "ksit_component_process_start_time_seconds",
            "Unix start time of the oldest matching process.",
        )
        .expect("static metric");
        reg(Box::new(process_start_time.clone()));
        let process_cpu = Mirror::new(vec![desc(PROCESS_CPU, PROCESS_CPU_HELP, &[])]);
        reg(Box::new(process_cpu.clone()));

        let own_process = Mirror::new(
            prometheus::process_collector::ProcessCollector::for_self()
                .desc()
                .into_iter()
                .cloned()
                .collect(),
        );
        reg(Box::new(own_process.clone()));

        let reconcile = Mirror::new(vec![
            desc(RECONCILE_DURATION, RECONCILE_DURATION_HELP, &["controller"]),
            desc(
                RECONCILE_TOTAL,
                RECONCILE_TOTAL_HELP,
                &["controller", "result"],
            ),
        ]);
        reg(Box::new(reconcile.clone()));

        let kube = KubeMetrics::new(&mut reg);

        Arc::new(Self {
            registry,
            names: families.keys().cloned().collect(),
            families,
            generation: AtomicU64::new(1),
            cache: Mutex::new(None),
            passthrough: RwLock::default(),
            scrapes,
            collect_duration,
            collector_up,
            upstream_up,
            health_up,
            health_duration,
            health_last_success,
            process_count,
            process_resident_memory,
            process_start_time,
            process_cpu,
            own_process,
            reconcile,
            kube,
        })
    }

    /// Sets `ksit_component_process_cpu_seconds_total`, read from the kernel as a total.
    pub fn set_process_cpu_seconds(&self, seconds: f64) {
        let mut counter = Counter::default();
        counter.set_value(seconds);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        self.process_cpu.set(vec![family(
            PROCESS_CPU,
            PROCESS_CPU_HELP,
            MetricType::COUNTER,
            vec![metric],
        )]);
    }

    /// Sets the reconcile families; empty input removes them (the upstream is gone).
    pub fn set_reconciles(&self, histograms: &[ReconcileHistogram], counts: &[ReconcileCount]) {
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
            families.push(family(
                RECONCILE_DURATION,
                RECONCILE_DURATION_HELP,
                MetricType::HISTOGRAM,
                metrics,
            ));
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
            families.push(family(
                RECONCILE_TOTAL,
                RECONCILE_TOTAL_HELP,
                MetricType::COUNTER,
                metrics,
            ));
        }
        self.reconcile.set(families);
    }

    /// Every family the exporter registers, with its variable labels (the README lists them).
    pub fn families(&self) -> &BTreeMap<String, Vec<String>> {
        &self.families
    }

    /// Names of every family the exporter itself registers.
    pub fn family_names(&self) -> &BTreeSet<String> {
        &self.names
    }

    /// Marks the state changed: the next scrape encodes it anew.
    pub fn touch(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Sets the upstream families served after the exporter's own.
    pub fn set_passthrough(&self, text: Bytes) {
        *self
            .passthrough
            .write()
            .expect("passthrough lock is never poisoned: writers only swap Bytes") = text;
        self.touch();
    }

    /// The exposition of the current state, encoded once per change.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let generation = self.generation.load(Ordering::Acquire);
        let mut cache = self
            .cache
            .lock()
            .expect("cache lock is never poisoned: encode does not panic");
        if let Some((g, snap)) = cache.as_ref()
            && *g == generation
        {
            return snap.clone();
        }
        let snap = Arc::new(Snapshot {
            text: self.encode(),
            gzip: OnceLock::new(),
        });
        *cache = Some((generation, snap.clone()));
        snap
    }

    /// Encodes the exporter's own families, then the upstream's.
    pub fn encode(&self) -> Bytes {
        let passthrough = self
            .passthrough
            .read()
            .expect("passthrough lock is never poisoned: writers only swap Bytes")
            .clone();
        let families = self.registry.gather();
        let mut buf = Vec::with_capacity(16 * 1024 + passthrough.len());
        TextEncoder::new()
            .encode(&families, &mut buf)
            .expect("the text encoder writes into a Vec and our families are well formed");
        buf.extend_from_slice(&passthrough);
        Bytes::from(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_prefixed_and_helpful() {
        let m = Metrics::new();
        for name in m.family_names() {
            assert!(
                name.starts_with("ksit_") || name.starts_with("process_"),
                "{name} lacks the ksit_ prefix"
            );
        }
        assert!(m.family_names().contains("ksit_exporter_build_info"));
        assert!(m.family_names().contains(RECONCILE_DURATION));
    }

    #[test]
    fn reconcile_families_encode_as_histogram_and_counter() {
        let m = Metrics::new();
        m.set_reconciles(
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
        m.set_process_cpu_seconds(1.5);
        m.touch();
        let text = String::from_utf8(m.snapshot().text.to_vec()).expect("utf8");
        for line in [
            "# TYPE ksit_reconcile_duration_seconds histogram",
            "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"0.005\"} 1",
            "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"0.01\"} 3",
            "ksit_reconcile_duration_seconds_bucket{controller=\"integration\",le=\"+Inf\"} 4",
            "ksit_reconcile_duration_seconds_sum{controller=\"integration\"} 0.02",
            "ksit_reconcile_duration_seconds_count{controller=\"integration\"} 4",
            "# TYPE ksit_reconcile_total counter",
            "ksit_reconcile_total{controller=\"integration\",result=\"success\"} 4",
            "ksit_component_process_cpu_seconds_total 1.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        m.set_reconciles(&[], &[]);
        m.touch();
        let text = String::from_utf8(m.snapshot().text.to_vec()).expect("utf8");
        assert!(!text.contains("ksit_reconcile_total{"), "{text}");
    }

    #[test]
    fn snapshot_is_cached_until_touched() {
        let m = Metrics::new();
        let a = m.snapshot();
        m.upstream_up.set(1);
        let b = m.snapshot();
        assert!(Arc::ptr_eq(&a, &b), "no touch, no new encode");
        m.touch();
        let c = m.snapshot();
        assert!(!Arc::ptr_eq(&b, &c));
        let text = std::str::from_utf8(&c.text).expect("utf8");
        assert!(text.contains("\nksit_exporter_upstream_up 1\n"), "{text}");
    }

    #[test]
    fn gzip_decodes_to_text() {
        use std::io::Read;
        let m = Metrics::new();
        let snap = m.snapshot();
        let mut out = String::new();
        flate2::read::GzDecoder::new(&snap.gzip()[..])
            .read_to_string(&mut out)
            .expect("valid gzip");
        assert_eq!(out.as_bytes(), &snap.text[..]);
    }

    #[test]
    fn passthrough_follows_own_families() {
        let m = Metrics::new();
        m.set_passthrough(Bytes::from_static(
            b"# TYPE workqueue_depth gauge\nworkqueue_depth{name=\"a\"} 3\n",
        ));
        let text = String::from_utf8(m.snapshot().text.to_vec()).expect("utf8");
        assert!(text.ends_with("workqueue_depth{name=\"a\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE ksit_exporter_build_info gauge\n"));
    }
}
