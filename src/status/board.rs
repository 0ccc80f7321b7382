//! What the status page shows that no series carries (a collector's last error, a probe's
//! last answer, the pod's identity), in a few short strings. Each write that changes a note
//! counts as a change of the registry, so the page's cache and /metrics' share one counter.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::html::summary;
use crate::metrics::Changes;
use crate::telemetry::redact_text;

/// The notes, shared by the collectors that write them and the page that reads them.
#[derive(Clone)]
pub struct Board {
    notes: Arc<Mutex<Notes>>,
    changes: Changes,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notes {
    /// The pod beside which this sidecar runs, from `POD_NAME` and `POD_NAMESPACE`.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// Whether the Kubernetes collectors run (`KSIT_KUBERNETES`, and a client found).
    pub kubernetes: bool,
    /// As `ksit_component_info` says, once the pod was read.
    pub component: Option<Component>,
    /// `None` until the Lease was read (never, outside a pod).
    pub leader: Option<bool>,
    /// With `KSIT_CR_METRICS=sharded`, which share of the objects this sidecar exports.
    pub shard: Option<String>,
    /// In `KSIT_HEALTH_URLS` order.
    pub probes: Vec<Probe>,
    pub collectors: BTreeMap<String, CollectorNote>,
    /// Where ManagedClusters are read from, when they are (`KSIT_OCM_CLUSTERS`,
    /// `KSIT_ITS_KUBECONFIG`).
    pub managed_clusters_from: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Component {
    pub name: String,
    pub node: String,
    /// `Deployment/name`, `StatefulSet/name`, or empty when the pod has no workload followed.
    pub workload: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub name: String,
    /// With its credentials masked.
    pub url: String,
    /// `None` before the first probe; else whether it was up and what it answered.
    pub last: Option<(bool, Box<str>)>,
    /// Unix seconds of the last success.
    pub last_success: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectorNote {
    pub up: bool,
    /// The last failure, kept after a recovery (the page says it is past).
    pub last_error: Option<Box<str>>,
}

impl Board {
    pub(crate) fn new(changes: Changes) -> Self {
        Self {
            notes: Arc::default(),
            changes,
        }
    }

    /// A copy of the notes, for a page being rendered.
    pub fn notes(&self) -> Notes {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Notes> {
        // Nothing panics while holding it, and the notes are valid after any update.
        self.notes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies `f`, and counts a change if it changed anything.
    fn update(&self, f: impl FnOnce(&mut Notes)) {
        let mut notes = self.lock();
        let before = notes.clone();
        f(&mut notes);
        if *notes != before {
            self.changes.bump();
        }
    }

    pub fn set_pod(&self, pod: Option<&str>, namespace: Option<&str>) {
        self.update(|n| {
            n.pod = pod.map(String::from);
            n.namespace = namespace.map(String::from);
        });
    }

    pub fn set_kubernetes(&self, on: bool) {
        self.update(|n| n.kubernetes = on);
    }

    pub fn set_managed_clusters_from(&self, from: Option<String>) {
        self.update(|n| n.managed_clusters_from = from);
    }

    pub fn set_component(&self, component: Option<Component>) {
        self.update(|n| n.component = component);
    }

    pub fn set_leader(&self, leader: Option<bool>) {
        self.update(|n| n.leader = leader);
    }

    pub fn set_shard(&self, shard: Option<String>) {
        self.update(|n| n.shard = shard);
    }

    /// Adds a probe, before it first runs; returns its index for [`Board::probed`].
    pub fn add_probe(&self, name: &str, url: &str) -> usize {
        let mut index = 0;
        self.update(|n| {
            index = n.probes.len();
            n.probes.push(Probe {
                name: name.to_string(),
                url: url.to_string(),
                last: None,
                last_success: None,
            });
        });
        index
    }

    /// The result of one probe at `now` (Unix seconds).
    pub fn probed(&self, index: usize, result: Result<&str, &str>, now: i64) {
        self.update(|n| {
            let Some(p) = n.probes.get_mut(index) else {
                return;
            };
            let (up, text) = match result {
                Ok(t) => (true, t),
                Err(t) => (false, t),
            };
            if p.last
                .as_ref()
                .is_none_or(|(u, t)| *u != up || **t != *text)
            {
                p.last = Some((up, summary(&redact_text(text))));
            }
            if up {
                p.last_success = Some(now);
            }
        });
    }

    /// A collector's pass: its state, and its error when it failed.
    pub fn collected(&self, collector: &str, result: Result<(), &str>) {
        let mut notes = self.lock();
        let note = notes.collectors.get(collector);
        let unchanged = match (note, result) {
            (Some(n), Ok(())) => n.up,
            (Some(n), Err(e)) => {
                !n.up
                    && n.last_error
                        .as_deref()
                        .is_some_and(|last| *last == *summary(&redact_text(e)))
            }
            (None, _) => false,
        };
        if unchanged {
            return;
        }
        let note = notes.collectors.entry(collector.to_string()).or_default();
        note.up = result.is_ok();
        if let Err(e) = result {
            note.last_error = Some(summary(&redact_text(e)));
        }
        self.changes.bump();
    }
}
