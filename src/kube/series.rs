//! Writes one collector's series and removes, at the end of a pass, those it did not write again.
//!
//! Two collectors share some families (`ksit_cluster_*` from IntegrationTargets and from
//! ManagedClusters, told apart by `source`), so a collector cannot reset a family whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::metrics::{ErasedGauges, Gauges, Labels};

#[derive(Default)]
pub struct Series {
    families: HashMap<Arc<str>, ErasedGauges>,
    previous: HashSet<(Arc<str>, Vec<String>)>,
    written: HashSet<(Arc<str>, Vec<String>)>,
}

impl Series {
    pub fn set<L: Labels>(&mut self, family: &Gauges<L>, labels: &L, value: f64) {
        family.set(labels, value);
        let erased = family.erased();
        let name = erased.name().clone();
        let values = labels.values().into_iter().map(String::from).collect();
        self.families.entry(name.clone()).or_insert(erased);
        self.written.insert((name, values));
    }

    /// Writes one series per state, 1 for `current` and 0 for the others; `labels` makes the
    /// label set of each state.
    pub fn one_hot<L: Labels>(
        &mut self,
        family: &Gauges<L>,
        states: &[&str],
        current: &str,
        labels: impl Fn(&str) -> L,
    ) {
        for state in states {
            self.set(
                family,
                &labels(state),
                f64::from(u8::from(*state == current)),
            );
        }
    }

    /// Ends a pass: every series written in the previous pass and not in this one is removed.
    pub fn finish(&mut self) {
        for (name, values) in self.previous.difference(&self.written) {
            if let Some(family) = self.families.get(name) {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                family.remove(&values);
            }
        }
        self.previous = std::mem::take(&mut self.written);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Family, Registry};

    crate::labels! {
        struct Named { source, name }
    }

    crate::labels! {
        struct Phase { phase }
    }

    const F: Family = Family {
        name: "t",
        help: "t",
    };

    fn named(source: &str, name: &str) -> Named {
        Named {
            source: source.into(),
            name: name.into(),
        }
    }

    #[test]
    fn unwritten_series_are_removed_and_others_kept() {
        let r = Registry::new();
        let family = r.gauges::<Named>(F);
        let mut a = Series::default();
        let mut b = Series::default();
        b.set(&family, &named("b", "x"), 1.0);
        b.finish();
        a.set(&family, &named("a", "x"), 1.0);
        a.set(&family, &named("a", "y"), 0.0);
        a.finish();
        a.set(&family, &named("a", "y"), 1.0);
        a.finish();
        assert_eq!(family.get(&named("a", "x")), None, "not written again");
        assert_eq!(family.get(&named("a", "y")), Some(1.0));
        assert_eq!(family.get(&named("b", "x")), Some(1.0), "another writer's");
    }

    #[test]
    fn one_hot_sets_exactly_one() {
        let r = Registry::new();
        let family = r.gauges::<Phase>(F);
        let mut s = Series::default();
        let phase = |p: &str| Phase { phase: p.into() };
        s.one_hot(&family, &["Pending", "Running"], "Running", phase);
        assert_eq!(family.get(&phase("Running")), Some(1.0));
        assert_eq!(family.get(&phase("Pending")), Some(0.0));
    }
}
