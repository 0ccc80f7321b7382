//! The Prometheus text exposition read into samples, so that tests compare values exactly:
//! a substring such as `{state="ready"} 1` also matches `{state="ready"} 10`.

use std::collections::BTreeMap;
use std::fmt;

/// One scrape: every sample by its series, `name{label="value",...}` with the labels sorted by
/// name (values as escaped in the text), and the `# TYPE` lines in order.
pub struct Scrape {
    pub text: String,
    samples: BTreeMap<String, f64>,
    types: Vec<(String, String)>,
}

impl Scrape {
    /// Panics, naming the line, on anything that is not a comment, blank or a sample.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        let mut types = Vec::new();
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("malformed TYPE line {line:?}"));
                types.push((name.to_string(), kind.to_string()));
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) =
                parse_sample(line).unwrap_or_else(|e| panic!("{e} in sample line {line:?}"));
            if let Some(old) = samples.insert(series.clone(), value) {
                panic!("series {series} appears twice ({old} and {value})");
            }
        }
        Scrape {
            text: text.to_string(),
            samples,
            types,
        }
    }

    /// The value of one series, written with its labels sorted by name.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// Every sample, by series.
    pub fn samples(&self) -> &BTreeMap<String, f64> {
        &self.samples
    }

    /// Whether `series` exists, whatever its value.
    pub fn has(&self, series: &str) -> bool {
        self.samples.contains_key(series)
    }

    /// Whether `series` exists with exactly `value`.
    pub fn is(&self, series: &str, value: f64) -> bool {
        self.get(series) == Some(value)
    }

    /// Panics, showing the scrape, unless `series` has exactly `value`.
    pub fn assert(&self, series: &str, value: f64) {
        assert_eq!(self.get(series), Some(value), "{series}\n{self}");
    }

    /// The samples of metric `name` (that name exactly, any labels).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples
            .range(name.to_string()..)
            .take_while(move |(k, _)| k.starts_with(name))
            .filter(move |(k, _)| k.len() == name.len() || k[name.len()..].starts_with('{'))
            .map(|(k, v)| (k.as_str(), *v))
    }

    /// Whether any sample of metric `name` exists.
    pub fn has_family(&self, name: &str) -> bool {
        self.series(name).next().is_some()
    }

    /// Whether any series has the label `name="value"` (value as escaped in the text).
    pub fn has_label(&self, name: &str, value: &str) -> bool {
        let needle = format!(",{name}=\"{value}\",");
        self.samples.keys().any(|k| {
            k.split_once('{').is_some_and(|(_, labels)| {
                format!(",{},", labels.trim_end_matches('}')).contains(&needle)
            })
        })
    }

    /// The `# TYPE` lines: (family, type), in the order of the text.
    pub fn types(&self) -> &[(String, String)] {
        &self.types
    }
}

impl fmt::Display for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--- /metrics:\n{}", self.text)
    }
}

/// `name{labels} value [timestamp]` into the series key (labels sorted) and the value.
fn parse_sample(line: &str) -> Result<(String, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value after the series")?;
    let name = &line[..name_end];
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(',');
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = inner.split_once("=\"").ok_or("unterminated labels")?;
            let bytes = after.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            if i >= bytes.len() {
                return Err("unterminated label value".into());
            }
            labels.push((label.trim(), &after[..i]));
            inner = &after[i + 1..];
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("no value")?
        .parse::<f64>()
        .map_err(|e| format!("bad value: {e}"))?;
    labels.sort();
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    Ok((key, value))
}
