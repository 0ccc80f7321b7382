//! The docs say what the binary does: the variable tables and the metrics reference in `docs/`
//! match the binary's, and every relative link in the README and `docs/` leads to a file (and a
//! heading) that exists, so a newcomer following them never lands nowhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ksit_exporter::exporter::Exporter;
use ksit_exporter::metrics::Registry;
use ksit_exporter::webhook::metrics::WebhookMetrics;
use ksit_exporter::{cmd, config, inject};

const CONFIGURATION: &str = include_str!("../docs/configuration.md");
const METRICS: &str = include_str!("../docs/metrics.md");
const INJECTION: &str = include_str!("../docs/injection.md");
const OPERATIONS: &str = include_str!("../docs/operations.md");
const PROMETHEUS_RULE: &str = include_str!("../manifests/monitoring/common/prometheusrule.yaml");
const WEBHOOK_CONFIGURATION: &str =
    include_str!("../manifests/webhook/base/mutatingwebhookconfiguration.yaml");

// What the binary says, one library call per function so that an API change touches one place.

/// (name, default) of each variable in a command's table, as `--help` prints it.
fn defaults(variables: &[(&str, &str, &str)]) -> BTreeMap<String, String> {
    variables
        .iter()
        .map(|(name, default, _)| (name.to_string(), default.to_string()))
        .collect()
}

fn exporter_variables() -> BTreeMap<String, String> {
    defaults(config::VARIABLES)
}

fn sidecar_variables() -> BTreeMap<String, String> {
    defaults(inject::VARIABLES)
}

fn webhook_variables() -> BTreeMap<String, String> {
    defaults(cmd::webhook::VARIABLES)
}

/// Every family the exporter registers, with its variable labels.
fn exporter_families() -> BTreeMap<String, Vec<String>> {
    Exporter::new().registry.families()
}

/// The webhook's family names, as registered.
fn webhook_families() -> BTreeSet<String> {
    let registry = Registry::new();
    WebhookMetrics::register(&registry);
    registry.families().into_keys().collect()
}

// What the docs say.

/// Rows of the first Markdown table after the line `heading` of `doc`: cells, trimmed, without
/// the header rows.
fn table(doc: &str, name: &str, heading: &str) -> Vec<Vec<String>> {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{name} has no line {heading:?}"));
    let rows: Vec<Vec<String>> = doc[start..]
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
        .collect();
    assert!(!rows.is_empty(), "{name} has no table under {heading:?}");
    rows
}

fn unquote(cell: &str) -> String {
    cell.trim_matches('`').to_string()
}

/// The (variable, default) pairs of the table under `heading` in docs/configuration.md.
fn documented_variables(heading: &str) -> BTreeMap<String, String> {
    table(CONFIGURATION, "docs/configuration.md", heading)
        .into_iter()
        .map(|r| (unquote(&r[0]), unquote(&r[1])))
        .collect()
}

#[test]
fn configuration_tables_match_the_binary() {
    for (heading, binary) in [
        ("## The exporter", exporter_variables()),
        (
            "## The sidecar that inject and the webhook add",
            sidecar_variables(),
        ),
        ("## The webhook", webhook_variables()),
    ] {
        assert_eq!(
            documented_variables(heading),
            binary,
            "docs/configuration.md {heading:?} (variable, default) vs the binary's"
        );
    }
}

#[test]
fn metrics_reference_matches_the_registry() {
    let rows: BTreeMap<String, Vec<String>> =
        table(METRICS, "docs/metrics.md", "## The exporter's families")
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
    let registered = exporter_families();
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
        "docs/metrics.md lacks {missing:?}; docs/metrics.md has unknown {extra:?}"
    );
    for (name, labels) in &registered {
        assert_eq!(&rows[name], labels, "labels of {name}");
    }
}

#[test]
fn webhook_metrics_table_matches_its_registry() {
    let rows: BTreeSet<String> = table(METRICS, "docs/metrics.md", "## The webhook's families")
        .iter()
        .map(|r| unquote(&r[0]))
        .collect();
    assert_eq!(
        rows,
        webhook_families(),
        "docs/metrics.md webhook families vs WebhookMetrics"
    );
}

/// `text` without any whitespace: a YAML block scalar and a table cell wrap differently.
fn squeezed(text: &str) -> String {
    text.split_whitespace().collect()
}

#[test]
fn alerts_table_matches_the_prometheus_rule() {
    let rows: BTreeMap<String, (String, String)> =
        table(OPERATIONS, "docs/operations.md", "## Alerts and dashboard")
            .into_iter()
            .map(|r| (unquote(&r[0]), (squeezed(&unquote(&r[1])), unquote(&r[2]))))
            .collect();
    let rule: serde_json::Value =
        serde_saphyr::from_str(PROMETHEUS_RULE).expect("prometheusrule.yaml is YAML");
    let shipped: BTreeMap<String, (String, String)> = rule["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules"))
        .map(|r| {
            let text = |key: &str| r[key].as_str().map(str::to_string);
            (
                text("alert").expect("an alert name"),
                (
                    squeezed(&text("expr").expect("an expression")),
                    text("for").unwrap_or_else(|| "-".to_string()),
                ),
            )
        })
        .collect();
    assert_eq!(
        rows, shipped,
        "docs/operations.md alerts (alert, expression, for) vs prometheusrule.yaml"
    );
}

#[test]
fn webhook_entries_table_matches_the_configuration() {
    let rows: BTreeMap<String, String> =
        table(INJECTION, "docs/injection.md", "### Which pods reach it")
            .into_iter()
            .map(|r| (unquote(&r[0]), unquote(&r[3])))
            .collect();
    let config: serde_json::Value = serde_saphyr::from_str(WEBHOOK_CONFIGURATION)
        .expect("mutatingwebhookconfiguration.yaml is YAML");
    let shipped: BTreeMap<String, String> = config["webhooks"]
        .as_array()
        .expect("webhooks")
        .iter()
        .map(|w| {
            let text = |v: &serde_json::Value| v.as_str().expect("a string").to_string();
            (
                text(&w["name"]),
                text(&w["clientConfig"]["service"]["path"]),
            )
        })
        .collect();
    assert_eq!(
        rows, shipped,
        "docs/injection.md webhook entries (entry, path) vs the MutatingWebhookConfiguration"
    );
}

// Links.

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .expect("the crate directory exists")
}

/// The README and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/ is readable") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The lines of a Markdown page outside fenced code blocks (where `#` starts a comment, not a
/// heading, and `](` is not a link).
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
/// hyphens, `-1`, `-2`... on repeats.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose(text) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let slug: String = title
            .trim_start_matches('#')
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of a page's inline links `[text](target)`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// What is wrong with a relative link from `page`, if anything.
fn broken(root: &Path, page: &Path, target: &str) -> Option<String> {
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = if path.is_empty() {
        page.to_path_buf()
    } else {
        let joined = page.parent().expect("a page is in a directory").join(path);
        match joined.canonicalize() {
            Ok(file) if file.starts_with(root) => file,
            // A clone holds only the repository: a link out of it leads nowhere there.
            Ok(_) => return Some("leaves the repository".to_string()),
            Err(e) => return Some(format!("{}: {e}", joined.display())),
        }
    };
    let is_page = file.extension().is_some_and(|e| e == "md");
    if !anchor.is_empty() && is_page && !anchors(&read(&file)).contains(anchor) {
        return Some(format!("{} has no heading #{anchor}", file.display()));
    }
    None
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading() {
    let root = root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for page in pages() {
        for target in links(&read(&page)) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            if let Some(problem) = broken(&root, &page, &target) {
                problems.push(format!("{}: ({target}) {problem}", page.display()));
            }
        }
    }
    assert!(
        checked > 20,
        "found only {checked} relative links: is the link parser broken?"
    );
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_readme_leads_to_every_page_under_docs() {
    let root = root();
    let readme = links(&read(&root.join("README.md")));
    let unlinked: Vec<_> = pages()
        .into_iter()
        .filter(|p| p.parent() == Some(root.join("docs").as_path()))
        .filter_map(|p| {
            let name = format!("docs/{}", p.file_name()?.to_str()?);
            (!readme
                .iter()
                .any(|l| l.split('#').next() == Some(name.as_str())))
            .then_some(name)
        })
        .collect();
    assert!(unlinked.is_empty(), "README.md links none of {unlinked:?}");
}

#[test]
fn link_checker_sees_what_is_broken() {
    let root = root();
    let readme = root.join("README.md");
    assert_eq!(
        broken(&root, &readme, "docs/metrics.md#labels-that-cannot-clash"),
        None
    );
    assert_eq!(broken(&root, &readme, "LICENSE"), None);
    assert!(broken(&root, &readme, "docs/nowhere.md").is_some());
    assert!(broken(&root, &readme, "docs/metrics.md#no-such-heading").is_some());
    assert!(
        broken(&root, &readme, "../").is_some(),
        "leaving the repository"
    );
    assert_eq!(
        links("[a](x.md) and [b](y.md#z)\n```sh\n[c](inside-a-fence)\n```\n"),
        ["x.md", "y.md#z"]
    );
    assert!(
        anchors("## The webhook's families\n## With `ksit-exporter inject`\n").is_superset(
            &BTreeSet::from([
                "the-webhooks-families".to_string(),
                "with-ksit-exporter-inject".to_string()
            ])
        )
    );
}

/// The code map names files that exist, and every source file is on it, so it cannot rot
/// silently as modules come and go.
#[test]
fn the_code_map_names_every_source_file_and_only_those() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = include_str!("../docs/architecture.md");
    let named: BTreeSet<String> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("src/") && s.ends_with(".rs"))
        .map(String::from)
        .collect();
    let mut files = BTreeSet::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(root).expect("under the root");
                files.insert(relative.display().to_string());
            }
        }
    }
    let missing: Vec<_> = files.difference(&named).collect();
    let stale: Vec<_> = named.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "docs/architecture.md's code map lacks {missing:?} and names files that do not exist: {stale:?}"
    );
}

/// The facts the project relies on live in it (docs/upstream.md): a clone holds only the
/// repository, so a file that points at a page outside it (the shared facts page the project
/// once cited) points at nothing.
#[test]
fn no_project_file_points_outside_the_repository() {
    let root = root();
    let out = std::process::Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .expect("running git ls-files");
    assert!(out.status.success(), "git ls-files: {out:?}");
    // Spelled in two halves so this file does not match itself.
    let needles = [concat!("../", "shared/"), concat!("ksit-", "api.md")];
    let mut files = 0;
    let mut hits = Vec::new();
    for name in out.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let Ok(text) = std::fs::read_to_string(root.join(&name)) else {
            continue; // binary files (images) and files deleted in the work tree
        };
        files += 1;
        for (n, line) in text.lines().enumerate() {
            if needles.iter().any(|needle| line.contains(needle)) {
                hits.push(format!("{name}:{}: {line}", n + 1));
            }
        }
    }
    assert!(
        files > 100,
        "read only {files} files: is git ls-files broken?"
    );
    assert!(
        hits.is_empty(),
        "files point outside the repository:\n{}",
        hits.join("\n")
    );
}
