//! The background loop every local collector runs in, and the readiness it reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// One pass of a collector: read something, write it into [`Metrics`].
pub trait Collect {
    /// The `collector` label of this collector's own series.
    fn name(&self) -> &'static str;
    /// Err means the collector could not do its job; its message is logged on the change to down.
    fn collect(&mut self) -> impl Future<Output = Result<(), String>>;
}

/// Counts the collectors that have not yet finished a first pass; /readyz waits for zero.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<AtomicUsize>,
}

impl Readiness {
    /// Registers one more collector that must finish a pass before the exporter is ready.
    pub fn expect_one(&self) -> FirstPass {
        self.pending.fetch_add(1, Ordering::AcqRel);
        FirstPass {
            pending: Some(self.pending.clone()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }
}

/// Held by a collector until its first pass is over.
pub struct FirstPass {
    pending: Option<Arc<AtomicUsize>>,
}

impl FirstPass {
    pub fn done(&mut self) {
        if let Some(p) = self.pending.take() {
            p.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Runs `collector` every `interval` until the task is dropped, recording its duration and
/// success, and logging only when it goes down or comes back.
pub async fn run_every<C: Collect>(
    mut collector: C,
    interval: Duration,
    metrics: Arc<Metrics>,
    mut first: FirstPass,
) {
    let name = collector.name();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let result = collector.collect().await;
        metrics
            .collect_duration
            .with_label_values(&[name])
            .set(started.elapsed().as_secs_f64());
        metrics
            .collector_up
            .with_label_values(&[name])
            .set(i64::from(result.is_ok()));
        match result {
            Err(e) if was_up => {
                tracing::warn!(collector = name, error = %e, "collector failed; will retry every interval");
                was_up = false;
            }
            Ok(()) if !was_up => {
                tracing::info!(collector = name, "collector recovered");
                was_up = true;
            }
            _ => {}
        }
        metrics.touch();
        first.done();
    }
}
