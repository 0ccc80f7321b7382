//! The exporter: every collector's families in one registry, and the collectors the
//! configuration asks for started in the background. Adding a collector is one module and one
//! line in each of [`Exporter::new`] and [`Exporter::start`].

use std::sync::Arc;
use std::time::Duration;

use crate::collector::Collect;
use crate::config::Config;
use crate::config::MetricsAuth;
use crate::metrics::Registry;
use crate::server::{self, Readiness};
use crate::status::Page;
use crate::{auth, collector, health, kube, process, upstream};

pub struct Exporter {
    pub registry: Arc<Registry>,
    serving: server::ServingFamilies,
    auth: auth::Families,
    collectors: collector::Families,
    health: health::Families,
    process: process::Families,
    upstream: upstream::Families,
    kube: kube::Families,
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter {
    /// Registers every collector's families, whether it will run or not: the registry names
    /// them all, and an upstream family of one of those names is dropped.
    pub fn new() -> Self {
        let registry = Arc::new(Registry::new());
        let serving = server::register_exporter_families(&registry);
        let collectors = collector::Families::register(&registry);
        Self {
            serving,
            auth: auth::Families::register(&registry),
            health: health::Families::register(&registry),
            process: process::Families::register(&registry),
            upstream: upstream::Families::register(&registry),
            kube: kube::Families::register(&registry, collectors.clone()),
            collectors,
            registry,
        }
    }

    /// The counter of failed TLS handshakes, for [`server::serve_https`].
    pub fn handshake_failures(&self) -> crate::metrics::Counters<()> {
        self.serving.handshake_failures.clone()
    }

    /// Starts the collectors `config` asks for (the Kubernetes ones when `kube` is given) and
    /// returns what the server serves. Must run inside the Tokio runtime.
    pub fn start(self, config: &Config, kube: Option<::kube::Client>) -> server::State {
        let readiness = Readiness::default();
        self.registry
            .board()
            .set_pod(config.pod_name.as_deref(), config.pod_namespace.as_deref());
        self.registry.board().set_kubernetes(kube.is_some());
        if kube.is_some() {
            self.registry
                .board()
                .set_managed_clusters_from(match &config.its_kubeconfig {
                    Some(path) => Some(kube::ocm::its_server(path)),
                    None if config.ocm_clusters => Some(
                        "this cluster's API server (set KSIT_ITS_KUBECONFIG when the ITS is another one)"
                            .to_string(),
                    ),
                    None => None,
                });
        }
        let (clusters, integrations) = self.kube.status_groups();
        let page = Page::new(self.registry.clone(), clusters, integrations);
        let interval = config.probe_interval;
        let every = Every {
            interval,
            families: &self.collectors,
            readiness: &readiness,
        };
        every.spawn(process::Processes::new(
            config.process_match.clone(),
            interval,
            self.process,
        ));
        if !config.health_targets.is_empty() {
            every.spawn(health::Health::new(
                config.health_targets.clone(),
                config.probe_timeout,
                self.health,
            ));
        }
        if let Some(url) = config.upstream_url.clone() {
            every.spawn(upstream::Upstream::new(
                url,
                config.probe_timeout,
                config.upstream_max_bytes,
                self.upstream,
                self.registry.clone(),
            ));
        }
        let auth = match (config.metrics_auth, &kube) {
            (MetricsAuth::Kubernetes, Some(client)) => Some(Arc::new(auth::Authorizer::new(
                client.clone(),
                self.auth.clone(),
            ))),
            _ => None,
        };
        if let Some(client) = kube {
            // Not part of readiness: /readyz means "can serve /metrics", which never waits on
            // the API server.
            kube::spawn(client, config.into(), self.kube);
        }
        server::State {
            registry: self.registry,
            scrapes: Some(self.serving.scrapes),
            readiness,
            page: Some(std::sync::Arc::new(page)),
            auth,
        }
    }
}

/// Spawns local collectors, each run every `interval` and awaited by /readyz once.
struct Every<'a> {
    interval: Duration,
    families: &'a collector::Families,
    readiness: &'a Readiness,
}

impl Every<'_> {
    fn spawn<C: Collect + Send + 'static>(&self, c: C) {
        tokio::spawn(collector::run_every(
            c,
            self.interval,
            self.families.clone(),
            self.readiness.expect_one(),
        ));
    }
}
