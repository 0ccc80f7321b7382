//! Probes the component's local health endpoints (`KSIT_HEALTH_URLS`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::collector::Collect;
use crate::config::HealthTarget;
use crate::fetch;
use crate::metrics::Metrics;

/// Health answers are short; a body past this is read no further.
const MAX_BODY: usize = 64 * 1024;

pub struct Health {
    targets: Vec<HealthTarget>,
    timeout: Duration,
    client: fetch::Client,
    metrics: Arc<Metrics>,
    /// Last known state of each probe, so a failure is logged once, not every interval.
    up: Vec<bool>,
}

impl Health {
    pub fn new(targets: Vec<HealthTarget>, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        let up = vec![true; targets.len()];
        Self {
            targets,
            timeout,
            client: fetch::Client::default(),
            metrics,
            up,
        }
    }

    async fn probe(&self, target: &HealthTarget) -> (Duration, Result<(), String>) {
        let started = Instant::now();
        let result = match self
            .client
            .get(&target.url, "*/*", self.timeout, MAX_BODY)
            .await
        {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, body)) => Err(format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
            )),
            // A body over the cap still came with a status; the probe is about the status.
            Err(fetch::FetchError::TooLarge(_)) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        (started.elapsed(), result)
    }
}

impl Collect for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    /// Probes all endpoints at once. The collector itself always succeeds: a failing endpoint
    /// is the component's state, reported by `ksit_component_health_up`, not a collector fault.
    async fn collect(&mut self) -> Result<(), String> {
        let results = futures::future::join_all(self.targets.iter().map(|t| self.probe(t))).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        for ((target, (elapsed, result)), was_up) in
            self.targets.iter().zip(results).zip(&mut self.up)
        {
            let labels = [target.name.as_str()];
            self.metrics
                .health_duration
                .with_label_values(&labels)
                .set(elapsed.as_secs_f64());
            self.metrics
                .health_up
                .with_label_values(&labels)
                .set(i64::from(result.is_ok()));
            match result {
                Ok(()) => {
                    self.metrics
                        .health_last_success
                        .with_label_values(&labels)
                        .set(now);
                    if !*was_up {
                        tracing::info!(probe = %target.name, url = %target.url, "health probe recovered");
                    }
                    *was_up = true;
                }
                Err(e) => {
                    if *was_up {
                        tracing::warn!(probe = %target.name, url = %target.url, error = %e, "health probe failed");
                    }
                    *was_up = false;
                }
            }
        }
        Ok(())
    }
}
