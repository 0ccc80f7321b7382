//! Writes one collector's series and removes, at the end of a pass, those it did not write again.
//!
//! Two collectors share some families (`ksit_cluster_*` from IntegrationTargets and from
//! ManagedClusters, told apart by `source`), so a collector cannot reset a family whole.

use std::collections::{HashMap, HashSet};

use prometheus::GaugeVec;
use prometheus::core::Collector;

#[derive(Default)]
pub struct Series {
    families: HashMap<String, GaugeVec>,
    previous: HashSet<(String, Vec<String>)>,
    written: HashSet<(String, Vec<String>)>,
}

impl Series {
    pub fn set(&mut self, family: &GaugeVec, labels: &[&str], value: f64) {
        family.with_label_values(labels).set(value);
        let name = family
            .desc()
            .first()
            .map(|d| d.fq_name.clone())
            .unwrap_or_default();
        self.families
            .entry(name.clone())
            .or_insert_with(|| family.clone());
        self.written
            .insert((name, labels.iter().map(|l| l.to_string()).collect()));
    }

    /// Sets `labels + [state]` to 1 for `current` and to 0 for every other state.
    pub fn one_hot(&mut self, family: &GaugeVec, labels: &[&str], states: &[&str], current: &str) {
        for state in states {
            let mut all = labels.to_vec();
            all.push(state);
            self.set(family, &all, f64::from(u8::from(*state == current)));
        }
    }

    /// Ends a pass: every series written in the previous pass and not in this one is removed.
    pub fn finish(&mut self) {
        for (name, labels) in self.previous.difference(&self.written) {
            if let Some(family) = self.families.get(name) {
                let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
                let _ = family.remove_label_values(&labels);
            }
        }
        self.previous = std::mem::take(&mut self.written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    #[test]
    fn unwritten_series_are_removed_and_others_kept() {
        let vec = GaugeVec::new(Opts::new("t", "t"), &["source", "name"]).expect("valid");
        let mut a = Series::default();
        let mut b = Series::default();
        b.set(&vec, &["b", "x"], 1.0);
        b.finish();
        a.set(&vec, &["a", "x"], 1.0);
        a.set(&vec, &["a", "y"], 0.0);
        a.finish();
        a.set(&vec, &["a", "y"], 1.0);
        a.finish();
        let mut left: Vec<String> = vec
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| {
                m.get_label()
                    .iter()
                    .map(|l| l.value().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect();
        left.sort();
        // Labels come sorted by name: name, then source.
        assert_eq!(left, ["x/b", "y/a"]);
    }

    #[test]
    fn one_hot_sets_exactly_one() {
        let vec = GaugeVec::new(Opts::new("p", "p"), &["phase"]).expect("valid");
        let mut s = Series::default();
        s.one_hot(&vec, &[], &["Pending", "Running"], "Running");
        assert_eq!(vec.with_label_values(&["Running"]).get(), 1.0);
        assert_eq!(vec.with_label_values(&["Pending"]).get(), 0.0);
    }
}
