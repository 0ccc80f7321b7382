//! The README's configuration table and metrics reference say what the binary does.

use std::collections::BTreeMap;

use ksit_exporter::config::VARIABLES;
use ksit_exporter::metrics::Metrics;

const README: &str = include_str!("../README.md");

/// Rows of the Markdown table that follows `heading`: cells, trimmed, without the header rows.
fn table(heading: &str) -> Vec<Vec<String>> {
    let start = README
        .find(heading)
        .unwrap_or_else(|| panic!("README has no {heading:?} section"));
    README[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

fn unquote(cell: &str) -> String {
    cell.trim_matches('`').to_string()
}

#[test]
fn configuration_table_matches_the_binary() {
    let rows: BTreeMap<String, String> = table("## Configuration")
        .into_iter()
        .map(|r| (unquote(&r[0]), unquote(&r[1])))
        .collect();
    let known: BTreeMap<String, String> = VARIABLES
        .iter()
        .map(|(n, d, _)| (n.to_string(), d.to_string()))
        .collect();
    assert_eq!(
        rows, known,
        "README configuration table (variable, default) vs config::VARIABLES"
    );
}

#[test]
fn metrics_reference_matches_the_registry() {
    let rows: BTreeMap<String, Vec<String>> = table("## Metrics reference")
        .into_iter()
        .map(|r| {
            let labels = r[2]
                .split(',')
                .map(|l| unquote(l.trim()))
                .filter(|l| !l.is_empty() && l != "-")
                .collect::<Vec<_>>();
            (unquote(&r[0]), labels)
        })
        .collect();
    let metrics = Metrics::new();
    let registered: BTreeMap<String, Vec<String>> = metrics.families().clone();
    let missing: Vec<_> = registered
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .collect();
    let extra: Vec<_> = rows
        .keys()
        .filter(|k| !registered.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README lacks {missing:?}; README has unknown {extra:?}"
    );
    for (name, labels) in &registered {
        assert_eq!(&rows[name], labels, "labels of {name}");
    }
}
