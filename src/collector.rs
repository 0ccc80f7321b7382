//! What every collector reports about itself, and the loop the local collectors run in.

use std::time::{Duration, Instant};

use crate::labels;
use crate::metrics::{Family, Gauges, Registry};
use crate::server::FirstPass;
use crate::status::Board;

labels! {
    /// The collector a series is about: `health`, `process`, `upstream`, `pod`, ...
    pub struct Collector { collector }
}

impl Collector {
    pub fn named(name: &str) -> Self {
        Self {
            collector: name.to_string(),
        }
    }
}

pub const COLLECTOR_UP: Family = Family {
    name: "ksit_exporter_collector_up",
    help: "1 when the collector's last run succeeded, 0 when it failed.",
};
pub const COLLECT_DURATION: Family = Family {
    name: "ksit_exporter_collect_duration_seconds",
    help: "Wall time of the last run of each collector.",
};

/// The families every collector, local or Kubernetes, reports its own state in, and the
/// status page's note of it.
#[derive(Clone)]
pub struct Families {
    pub up: Gauges<Collector>,
    pub duration: Gauges<Collector>,
    board: Board,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            up: registry.gauges(COLLECTOR_UP),
            duration: registry.gauges(COLLECT_DURATION),
            board: registry.board().clone(),
        }
    }

    /// Sets `ksit_exporter_collector_up` of `name`, and the page's note with the error.
    pub fn report(&self, name: &Collector, result: Result<(), &str>) {
        self.up.set(name, f64::from(u8::from(result.is_ok())));
        self.board.collected(&name.collector, result);
    }
}

/// One pass of a local collector: read something, write it into its families.
pub trait Collect {
    /// The `collector` label of this collector's own series.
    fn name(&self) -> &'static str;
    /// Err means the collector could not do its job; its message is logged on the change to down.
    fn collect(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs `collector` every `interval` until the task is dropped, recording its duration and
/// success, and logging only when it goes down or comes back.
pub async fn run_every<C: Collect>(
    mut collector: C,
    interval: Duration,
    families: Families,
    mut first: FirstPass,
) {
    let name = Collector::named(collector.name());
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_up = true;
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let result = collector.collect().await;
        families
            .duration
            .set(&name, started.elapsed().as_secs_f64());
        families.report(&name, result.as_ref().map(|_| ()).map_err(String::as_str));
        match result {
            Err(e) if was_up => {
                tracing::warn!(collector = %name.collector, error = %e, "collector failed; will retry every interval");
                was_up = false;
            }
            Ok(()) if !was_up => {
                tracing::info!(collector = %name.collector, "collector recovered");
                was_up = true;
            }
            _ => {}
        }
        first.done();
    }
}
