//! The shipped Grafana dashboard and alert rules (manifests/monitoring/common) as Grafana and
//! Prometheus read them: the rules with a short `for`, Grafana's variables substituted, every
//! panel's queries, and what makes a panel's answer empty-handed. tests/dashboard_e2e.rs runs
//! them against one Prometheus, tests/fleet_e2e.rs against Thanos Query over two clusters.

use serde_json::{Value, json};

use super::ControlPlane;
use super::prometheus::{api, urlencode};

/// The shipped PrometheusRule's groups, each alert's `for` set to `short` (the shipped minutes
/// would make a test that long). Only `for` is rewritten; expressions, labels and annotations are
/// as shipped.
pub fn rules_with_short_for(cp: &ControlPlane, short: &str) -> Value {
    let rule = cp
        .render("manifests/monitoring/common")
        .into_iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .expect("manifests/monitoring/common has a PrometheusRule");
    let mut spec = rule["spec"].clone();
    for group in spec["groups"].as_array_mut().expect("rule groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            if rule.get("for").is_some() {
                rule["for"] = json!(short);
            }
        }
    }
    spec
}

/// The rules of a rule file that have `key`: `alert` or `record`.
pub fn rules_with<'a>(rules: &'a Value, key: &str) -> Vec<&'a Value> {
    rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter(|r| r.get(key).is_some())
        .collect()
}

/// The names of `{{ $labels.NAME }}` printed as they are in a template (not inside `with` or
/// `if`, which handle a missing label).
pub fn printed_labels(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else {
            break;
        };
        let action = rest[start + 2..start + end].trim();
        if let Some(name) = action.strip_prefix("$labels.")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
        rest = &rest[start + end + 2..];
    }
    out
}

/// `expr` with `bool` after its last top-level comparison operator (outside brackets and
/// strings), or `None` when it has none.
pub fn with_bool(expr: &str) -> Option<String> {
    let bytes = expr.as_bytes();
    let (mut depth, mut quote, mut at) = (0i32, None, None);
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match (quote, c) {
            (Some(q), b'\\') if q != b'`' => i += 1,
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'' | b'`') => quote = Some(c),
            (None, b'(' | b'[' | b'{') => depth += 1,
            (None, b')' | b']' | b'}') => depth -= 1,
            (None, b'=' | b'!' | b'>' | b'<') if depth == 0 => {
                let two = bytes.get(i + 1) == Some(&b'=');
                if c == b'>' || c == b'<' || two {
                    let len = if two { 2 } else { 1 };
                    at = Some(i + len);
                    i += len;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    at.map(|at| format!("{} bool{}", &expr[..at], &expr[at..]))
}

/// Prometheus's syntax tree of `expr`.
pub async fn parse(prom: &str, expr: &str) -> Value {
    api(
        prom,
        &format!("/api/v1/parse_query?query={}", urlencode(expr)),
    )
    .await
    .unwrap_or_else(|e| panic!("parsing {expr}: {e}"))
}

/// Grafana's view of the data: its time range, and the variables it substitutes.
pub struct Grafana {
    pub start: f64,
    pub end: f64,
    /// The scrape interval the datasource is told, in seconds (Grafana derives
    /// `$__rate_interval` from it).
    pub scrape_seconds: u64,
    /// The dashboard's template variables, resolved.
    pub variables: Vec<(String, String)>,
}

/// Points Grafana asks for in a panel (its width in pixels, about).
pub const MAX_DATA_POINTS: f64 = 1000.0;

impl Grafana {
    /// `$__interval` in seconds: the range over the points, at least the scrape interval.
    pub fn interval(&self) -> u64 {
        (((self.end - self.start) / MAX_DATA_POINTS).ceil() as u64).max(self.scrape_seconds)
    }

    /// `expr` with Grafana's variables substituted, or an error naming what is left.
    pub fn substitute(&self, expr: &str) -> Result<String, String> {
        let interval = self.interval();
        // Grafana's definition: at least four scrapes, and one scrape more than the step.
        let rate_interval = (interval + self.scrape_seconds).max(4 * self.scrape_seconds);
        let range = (self.end - self.start).round() as u64;
        // Longer names first: `$__interval_ms` is not `$__interval` followed by `_ms`.
        let builtins = [
            ("__rate_interval", format!("{rate_interval}s")),
            ("__interval_ms", (interval * 1000).to_string()),
            ("__interval", format!("{interval}s")),
            ("__range_ms", (range * 1000).to_string()),
            ("__range_s", range.to_string()),
            ("__range", format!("{range}s")),
        ];
        let mut out = expr.to_string();
        for (name, value) in &builtins {
            out = substitute_one(&out, name, value);
        }
        // A variable's own name never starts with `__`, so the built-ins go first.
        for (name, value) in &self.variables {
            out = substitute_one(&out, name, value);
        }
        match out.find(['$']).filter(|&i| {
            out[i + 1..]
                .chars()
                .next()
                .is_some_and(|c| c == '{' || c == '_' || c.is_ascii_alphabetic())
        }) {
            Some(i) => Err(format!(
                "a variable the test cannot resolve at `{}`",
                &out[i..]
            )),
            None if out.contains("[[") => Err(format!("a `[[variable]]` left in {out}")),
            None => Ok(out),
        }
    }
}

/// `text` with Grafana's three forms of the variable `name` (`$name`, `${name}` or
/// `${name:format}`, `[[name]]`) replaced by `value`. `$name` must end at a non-word character,
/// so `$ns` is not the start of `$nsx`.
pub fn substitute_one(text: &str, name: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let braced = format!("${{{name}");
        let bare = format!("${name}");
        let bracketed = format!("[[{name}]]");
        let skip = if let Some(after) = tail.strip_prefix(&braced) {
            match after.chars().next() {
                Some('}') => Some(braced.len() + 1),
                Some(':') => after.find('}').map(|end| braced.len() + end + 1),
                _ => None,
            }
        } else if tail.starts_with(&bracketed) {
            Some(bracketed.len())
        } else if let Some(after) = tail.strip_prefix(&bare) {
            (!after
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then_some(bare.len())
        } else {
            None
        };
        match skip {
            Some(n) => {
                out.push_str(value);
                rest = &tail[n..];
            }
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value Grafana gives a template variable when the dashboard opens with none chosen: its
/// `allValue` when it is saved with "All" chosen, else the first its query yields. Supported:
/// `datasource` (this Prometheus), `query` variables `label_values(label)` and
/// `label_values(selector, label)` without a regex, and `custom` and `constant` ones; another
/// kind fails, naming it.
pub async fn resolve_variable(prom: &str, variable: &Value, known: &Grafana) -> String {
    let name = variable["name"].as_str().unwrap_or_default();
    if variable["includeAll"] == true && variable["current"]["value"] == "$__all" {
        // Without allValue Grafana joins every value into a regex; the test does not.
        return variable["allValue"]
            .as_str()
            .unwrap_or_else(|| {
                panic!("variable {name}: All without allValue; teach resolve_variable")
            })
            .to_string();
    }
    let definition = match &variable["query"] {
        Value::String(s) => s.clone(),
        q => q["query"].as_str().unwrap_or_default().to_string(),
    };
    let definition = known
        .substitute(&definition)
        .unwrap_or_else(|e| panic!("variable {name}: {e}"));
    assert!(
        variable["regex"].as_str().is_none_or(str::is_empty),
        "variable {name}: the test does not apply a variable's regex; teach resolve_variable"
    );
    let first = |values: Vec<String>| {
        values
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("variable {name} ({definition}) has no value"))
    };
    match variable["type"].as_str() {
        Some("datasource") => "prometheus".to_string(),
        Some("custom") => first(
            definition
                .split(',')
                .map(|v| v.trim().to_string())
                .collect(),
        ),
        Some("constant") => definition,
        Some("query") => {
            let call = |f: &str| {
                definition
                    .trim()
                    .strip_prefix(f)
                    .and_then(|a| a.strip_prefix('('))
                    .and_then(|a| a.strip_suffix(')'))
                    .map(str::to_string)
            };
            if let Some(args) = call("label_values") {
                let (selector, label) = match args.rsplit_once(',') {
                    Some((selector, label)) => (Some(selector.trim()), label.trim()),
                    None => (None, args.trim()),
                };
                let path = match selector {
                    Some(s) => format!("/api/v1/label/{label}/values?match[]={}", urlencode(s)),
                    None => format!("/api/v1/label/{label}/values"),
                };
                let values = api(prom, &path)
                    .await
                    .unwrap_or_else(|e| panic!("variable {name}: {e}"));
                first(
                    values
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect(),
                )
            } else {
                panic!(
                    "variable {name}: the test does not know Grafana's `{definition}`; teach resolve_variable"
                )
            }
        }
        other => panic!(
            "variable {name}: the test does not resolve {other:?} variables; teach resolve_variable"
        ),
    }
}

/// Every panel, rows' collapsed panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"]
        .as_array()
        .expect("the dashboard's panels")
    {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The `{{name}}` labels a legend format prints.
pub fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}"))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

/// Whether a sample value is a number Grafana can draw.
pub fn finite(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| s.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// How a panel's query was run, which decides where its series hold their samples.
#[derive(Clone, Copy, Debug)]
pub enum Run {
    Instant,
    Range,
}

/// What is wrong with the answer to a panel's query: an error, no series, none with a value,
/// or a legend label missing.
pub fn check_answer(
    answer: Result<Vec<Value>, String>,
    run: Run,
    legend: &[String],
) -> Option<String> {
    let result = match answer {
        Ok(result) if result.is_empty() => return Some("no series".to_string()),
        Ok(result) => result,
        Err(e) => return Some(e),
    };
    let has_value = |s: &Value| match run {
        Run::Instant => finite(&s["value"][1]),
        Run::Range => s["values"]
            .as_array()
            .is_some_and(|points| points.iter().any(|p| finite(&p[1]))),
    };
    if !result.iter().any(has_value) {
        return Some(format!("no series with a finite value: {result:?}"));
    }
    for s in &result {
        for label in legend {
            if s["metric"][label].as_str().is_none_or(str::is_empty) {
                return Some(format!("legend label `{label}` missing on {}", s["metric"]));
            }
        }
    }
    None
}

/// The dashboard JSON, as the shipped kustomization's `ksit-dashboard` ConfigMap carries it.
pub fn dashboard(cp: &ControlPlane) -> Value {
    let items = cp.render("manifests/monitoring/common");
    let cm = items
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "ksit-dashboard")
        .expect("the ksit-dashboard ConfigMap");
    serde_json::from_str(
        cm["data"]["ksit-dashboard.json"]
            .as_str()
            .expect("the dashboard JSON"),
    )
    .expect("the dashboard is JSON")
}
