//! The README's configuration table and metrics reference say what the binary does.

use std::collections::BTreeMap;

use ksit_exporter::metrics::Metrics;
use ksit_exporter::server::Exposition;
use ksit_exporter::webhook::metrics::WebhookMetrics;
use ksit_exporter::{cmd::webhook, config, inject};

const README: &str = include_str!("../README.md");

/// Rows of the first Markdown table after `markers` (found one after the other): cells,
/// trimmed, without the header rows.
fn table(markers: &[&str]) -> Vec<Vec<String>> {
    let mut start = 0;
    for marker in markers {
        start += README[start..]
            .find(marker)
            .unwrap_or_else(|| panic!("README has no {marker:?} after {markers:?}"));
    }
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

/// The (variable, default) pairs of a README table, against the table a command prints in --help.
fn assert_variables(markers: &[&str], variables: &[(&str, &str, &str)]) {
    let rows: BTreeMap<String, String> = table(markers)
        .into_iter()
        .map(|r| (unquote(&r[0]), unquote(&r[1])))
        .collect();
    let known: BTreeMap<String, String> = variables
        .iter()
        .map(|(n, d, _)| (n.to_string(), d.to_string()))
        .collect();
    assert_eq!(
        rows, known,
        "README table after {markers:?} (variable, default) vs the binary's"
    );
}

#[test]
fn configuration_tables_match_the_binary() {
    assert_variables(&["## Configuration"], config::VARIABLES);
    assert_variables(&["### With `ksit-exporter inject`"], inject::VARIABLES);
    assert_variables(
        &["## Inject with the webhook", "| variable |"],
        webhook::VARIABLES,
    );
}

#[test]
fn metrics_reference_matches_the_registry() {
    let rows: BTreeMap<String, Vec<String>> = table(&["## Metrics reference"])
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

#[test]
fn webhook_metrics_table_matches_its_registry() {
    let rows: Vec<String> = table(&["## Inject with the webhook", "| family |"])
        .iter()
        .map(|r| unquote(&r[0]))
        .collect();
    let metrics = WebhookMetrics::new();
    // A labelled family is exposed only once it has a series.
    metrics
        .admissions
        .with_label_values(&["injected", "none"])
        .inc();
    let text = String::from_utf8(metrics.scrape(false).to_vec()).expect("the exposition is UTF-8");
    let registered: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect();
    let (mut rows_sorted, mut registered_sorted) = (rows.clone(), registered.clone());
    rows_sorted.sort();
    registered_sorted.sort();
    assert_eq!(
        rows_sorted, registered_sorted,
        "README webhook families vs WebhookMetrics"
    );
}
