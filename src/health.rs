//! Probes the component's local health endpoints (`KSIT_HEALTH_URLS`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::collector::Collect;
use crate::config::HealthTarget;
use crate::fetch::{self, redact};
use crate::metrics::{Family, Gauges, Registry};
use crate::status::Board;
use crate::{labels, telemetry};

/// Health answers are short; a body past this is read no further.
const MAX_BODY: usize = 64 * 1024;
/// What a failure's log line quotes of the body, in characters.
const BODY_EXCERPT: usize = 120;

labels! {
    /// The probe's name from `KSIT_HEALTH_URLS`.
    pub struct Probe { probe }
}

pub const UP: Family = Family {
    name: "ksit_component_health_up",
    help: "1 when the component's health endpoint last answered 200-399 (as the kubelet counts a probe) within the timeout.",
};
pub const DURATION: Family = Family {
    name: "ksit_component_health_probe_duration_seconds",
    help: "Duration of the last probe of the component's health endpoint.",
};
pub const LAST_SUCCESS: Family = Family {
    name: "ksit_component_health_last_success_timestamp_seconds",
    help: "Unix time of the last successful probe of the component's health endpoint.",
};

#[derive(Clone)]
pub struct Families {
    up: Gauges<Probe>,
    duration: Gauges<Probe>,
    last_success: Gauges<Probe>,
    /// The status page's probe table: the URL, and what the probe last answered.
    board: Board,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            up: registry.gauges(UP),
            duration: registry.gauges(DURATION),
            last_success: registry.gauges(LAST_SUCCESS),
            board: registry.board().clone(),
        }
    }
}

pub struct Health {
    targets: Vec<HealthTarget>,
    timeout: Duration,
    client: fetch::Client,
    families: Families,
    /// Last known state of each probe, so a failure is logged once, not every interval.
    up: Vec<bool>,
    /// Each probe's place on the status page's board.
    notes: Vec<usize>,
}

impl Health {
    pub fn new(targets: Vec<HealthTarget>, timeout: Duration, families: Families) -> Self {
        let up = vec![true; targets.len()];
        let notes = targets
            .iter()
            .map(|t| {
                families
                    .board
                    .add_probe(&t.name, &redact(&t.url).to_string())
            })
            .collect();
        Self {
            targets,
            timeout,
            client: fetch::Client::default(),
            families,
            up,
            notes,
        }
    }

    /// The probe's duration, and what it answered: `Ok` with the status when up.
    async fn probe(&self, target: &HealthTarget) -> (Duration, Result<String, String>) {
        let started = Instant::now();
        let result = match self
            .client
            .get(&target.url, "*/*", self.timeout, MAX_BODY)
            .await
        {
            // As the kubelet counts an HTTP probe: 200 to 399 is healthy.
            Ok((status, _)) if (200..400).contains(&status.as_u16()) => {
                Ok(format!("answered {status}"))
            }
            Ok((status, body)) => Err(format!(
                "answered {status}: {}",
                telemetry::excerpt(body.trim_ascii(), BODY_EXCERPT)
            )),
            // A body over the cap still came with a status; the probe is about the status.
            Err(fetch::FetchError::TooLarge(max)) => {
                Ok(format!("answered with a body over {max} bytes"))
            }
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
        for (((target, (elapsed, result)), was_up), note) in self
            .targets
            .iter()
            .zip(results)
            .zip(&mut self.up)
            .zip(&self.notes)
        {
            let probe = Probe {
                probe: target.name.clone(),
            };
            let f = &self.families;
            f.duration.set(&probe, elapsed.as_secs_f64());
            f.up.set(&probe, f64::from(u8::from(result.is_ok())));
            f.board
                .probed(*note, result.as_deref().map_err(String::as_str), now as i64);
            match result {
                Ok(_) => {
                    f.last_success.set(&probe, now);
                    if !*was_up {
                        tracing::info!(probe = %target.name, url = %redact(&target.url), "health probe recovered");
                    }
                    *was_up = true;
                }
                Err(e) => {
                    if *was_up {
                        tracing::warn!(probe = %target.name, url = %redact(&target.url), error = %e, "health probe failed");
                    }
                    *was_up = false;
                }
            }
        }
        Ok(())
    }
}
