//! The rows of the clusters and integrations tables, written once per change of an object by
//! its collector and kept with its series (so the object itself need not be). Their markup is
//! a contract with the browser test: `data-*` attributes say kind, namespace, name and state.

use std::fmt::Write;

use k8s_openapi::jiff::Timestamp;

use super::html::{attr, cell, summary};
use crate::metrics::Note;

/// A cluster's ranks, and the names the summary counts them by: failing first.
pub const CLUSTER_RANKS: &[&str] = &["failing", "unknown", "ready"];
pub const FAILING: usize = 0;
pub const UNKNOWN: usize = 1;
pub const READY: usize = 2;

/// An Integration's ranks by phase: Failed first, then one with no phase KSIT knows.
pub const INTEGRATION_RANKS: &[&str] = &["Failed", "other", "Initializing", "Running", "Succeeded"];

/// What a cluster's state is, as a person reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Failing,
    Unknown,
}

impl State {
    fn rank(self) -> usize {
        match self {
            Self::Failing => FAILING,
            Self::Unknown => UNKNOWN,
            Self::Ready => READY,
        }
    }

    pub fn name(self) -> &'static str {
        CLUSTER_RANKS[self.rank()]
    }
}

/// One IntegrationTarget or ManagedCluster.
pub struct Cluster<'a> {
    /// `IntegrationTarget` or `ManagedCluster`.
    pub kind: &'a str,
    /// Empty for a ManagedCluster.
    pub namespace: &'a str,
    pub name: &'a str,
    pub cluster_name: &'a str,
    pub state: State,
    pub reason: &'a str,
    pub message: &'a str,
    /// RFC 3339.
    pub last_sync: Option<String>,
}

impl Cluster<'_> {
    pub fn note(&self) -> Note {
        let fields = [
            self.kind,
            self.namespace,
            self.name,
            self.state.name(),
            self.cluster_name,
            &summary(self.reason),
            &summary(self.message),
            self.last_sync.as_deref().unwrap_or(""),
        ];
        Note::new(rank(self.state.rank()), cluster_row, &fields)
    }
}

/// A cluster's row from its note's fields.
fn cluster_row(f: &[&str]) -> String {
    let [
        kind,
        namespace,
        name,
        state,
        cluster_name,
        reason,
        message,
        last_sync,
    ] = fields(f);
    let mut row = String::with_capacity(256 + message.len());
    row.push_str("<tr");
    attr(&mut row, "data-kind", kind);
    attr(&mut row, "data-namespace", namespace);
    attr(&mut row, "data-name", name);
    let _ = write!(
        row,
        " data-state=\"{state}\"><td class=\"{state}\">{state}</td>"
    );
    for value in [
        kind,
        namespace,
        name,
        cluster_name,
        reason,
        message,
        last_sync,
    ] {
        cell(&mut row, value);
    }
    row.push_str("</tr>");
    row
}

/// A note's fields as the row wants them; a missing one (never, for a note made here) empty.
fn fields<'a, const N: usize>(f: &[&'a str]) -> [&'a str; N] {
    std::array::from_fn(|i| f.get(i).copied().unwrap_or(""))
}

/// One Integration.
pub struct Integration<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub type_: &'a str,
    pub enabled: bool,
    pub phase: Option<&'a str>,
    /// `(type, status, reason)` of each condition.
    pub conditions: Vec<(&'a str, &'a str, &'a str)>,
    pub message: &'a str,
    /// RFC 3339.
    pub last_reconcile: Option<String>,
}

impl Integration<'_> {
    pub fn note(&self) -> Note {
        let phase = self.phase.unwrap_or("");
        let type_ = if self.enabled {
            self.type_.to_string()
        } else {
            format!("{} (disabled)", self.type_)
        };
        let mut conditions = String::new();
        for (type_, status, reason) in &self.conditions {
            if !conditions.is_empty() {
                conditions.push_str("; ");
            }
            let _ = write!(conditions, "{type_}={status}");
            if !reason.is_empty() {
                let _ = write!(conditions, " ({reason})");
            }
        }
        let fields = [
            self.namespace,
            self.name,
            &type_,
            phase,
            &summary(&conditions),
            &summary(self.message),
            self.last_reconcile.as_deref().unwrap_or(""),
        ];
        Note::new(rank(phase_class(phase).1), integration_row, &fields)
    }
}

/// The cell class of a phase, and its index into INTEGRATION_RANKS.
fn phase_class(phase: &str) -> (&'static str, usize) {
    match phase {
        "Failed" => ("bad", 0),
        "Initializing" => ("pending", 2),
        "Running" => ("ok", 3),
        "Succeeded" => ("ok", 4),
        _ => ("unknown", 1),
    }
}

/// An Integration's row from its note's fields.
fn integration_row(f: &[&str]) -> String {
    let [
        namespace,
        name,
        type_,
        phase,
        conditions,
        message,
        last_reconcile,
    ] = fields(f);
    let mut row = String::with_capacity(256 + message.len());
    row.push_str("<tr");
    attr(&mut row, "data-namespace", namespace);
    attr(&mut row, "data-name", name);
    attr(&mut row, "data-phase", phase);
    row.push('>');
    cell(&mut row, namespace);
    cell(&mut row, name);
    cell(&mut row, type_);
    let (class, _) = phase_class(phase);
    let _ = write!(row, "<td class=\"{class}\">");
    super::html::text(&mut row, if phase.is_empty() { "(none)" } else { phase });
    row.push_str("</td>");
    for value in [conditions, message, last_reconcile] {
        cell(&mut row, value);
    }
    row.push_str("</tr>");
    row
}

fn rank(index: usize) -> u8 {
    u8::try_from(index).expect("a handful of ranks")
}

/// Unix seconds as RFC 3339.
pub fn time(seconds: i64) -> String {
    Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_row_carries_its_state_in_data_and_text() {
        let note = Cluster {
            kind: "IntegrationTarget",
            namespace: "ksit-system",
            name: "edge-1",
            cluster_name: "edge-cluster-1",
            state: State::Failing,
            reason: "SecretNotFound",
            message: "secret edge-cluster-1-kubeconfig not found",
            last_sync: Some("2026-11-27T10:00:00Z".into()),
        }
        .note();
        assert_eq!(note.rank, 0);
        assert_eq!(
            &*note.row(),
            "<tr data-kind=\"IntegrationTarget\" data-namespace=\"ksit-system\" data-name=\"edge-1\" data-state=\"failing\">\
             <td class=\"failing\">failing</td><td>IntegrationTarget</td><td>ksit-system</td><td>edge-1</td><td>edge-cluster-1</td>\
             <td>SecretNotFound</td><td>secret edge-cluster-1-kubeconfig not found</td><td>2026-11-27T10:00:00Z</td></tr>"
        );
    }

    #[test]
    fn an_integration_row_lists_phase_and_conditions() {
        let note = Integration {
            namespace: "ns",
            name: "argo",
            type_: "argocd",
            enabled: false,
            phase: Some("Running"),
            conditions: vec![("Ready", "True", "Reconciled"), ("Degraded", "False", "")],
            message: "",
            last_reconcile: None,
        }
        .note();
        assert_eq!(note.rank, 3);
        assert_eq!(
            &*note.row(),
            "<tr data-namespace=\"ns\" data-name=\"argo\" data-phase=\"Running\"><td>ns</td><td>argo</td>\
             <td>argocd (disabled)</td><td class=\"ok\">Running</td><td>Ready=True (Reconciled); Degraded=False</td>\
             <td></td><td></td></tr>"
        );
        let none = Integration {
            namespace: "ns",
            name: "new",
            type_: "t",
            enabled: true,
            phase: None,
            conditions: vec![],
            message: "",
            last_reconcile: None,
        }
        .note();
        assert_eq!(none.rank, 1);
        let row = none.row();
        assert!(row.contains("data-phase=\"\""), "{row}");
        assert!(row.contains("<td class=\"unknown\">(none)</td>"), "{row}");
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(10_000);
        let note = Cluster {
            kind: "ManagedCluster",
            namespace: "",
            name: "c",
            cluster_name: "c",
            state: State::Unknown,
            reason: &long,
            message: &long,
            last_sync: None,
        }
        .note();
        assert!(note.row().len() < 1024, "{}", note.row().len());
        assert!(note.row().contains("x…</td>"));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time(1_795_773_600), "2026-11-27T10:00:00Z");
    }
}
