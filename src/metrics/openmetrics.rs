//! OpenMetrics 1.0.0 text, the format Prometheus 3 asks for first, beside the classic text
//! format 0.0.4: which one a scrape gets ([`negotiate`]), and the OpenMetrics encoding of the
//! registry's own families.
//!
//! The two formats differ only in metadata for what this process serves, so a series reads the
//! same in both: a counter's family is named without `_total` (its samples keep it), `untyped`
//! is `unknown`, a family whose name ends in a base unit says so in `# UNIT`, HELP escapes `"`,
//! and the body ends with `# EOF`. A counter named without `_total` (only an upstream's can be)
//! is served as `unknown`: OpenMetrics would rename its samples, and Prometheus would store a
//! different series under each format. No `_created` lines: Prometheus 3.5 stores each one as
//! a series of its own unless created-timestamp ingestion is on, which would also make the two
//! formats store different series (client_golang leaves them out by default for this reason).

use hyper::header::HeaderValue;
use prometheus::proto::{Metric, MetricFamily, MetricType};

use super::objects::{escape_into, write_value};

/// The exposition formats served on /metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text (also the answer to a request for 0.0.1, as client_golang's).
    OpenMetrics,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Text, Format::OpenMetrics];

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Format::Text => 0,
            Format::OpenMetrics => 1,
        }
    }
}

/// The body's last line in OpenMetrics.
pub(super) const EOF: &[u8] = b"# EOF\n";

/// The format a request's `Accept` fields ask for, as client_golang's `expfmt.Negotiate` picks
/// it: media ranges by quality, highest first (ties in the order sent), and the first one served
/// wins. `application/openmetrics-text` with version 1.0.0, 0.0.1 or none is OpenMetrics; anything
/// else, a range that does not parse, or no `Accept` at all falls back to the text format, which
/// every scraper reads.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> Format {
    let mut ranges: Vec<(u16, Format)> = Vec::new();
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for element in value.split(',') {
            let Ok(mime) = element.trim().parse::<mime::Mime>() else {
                continue;
            };
            let quality = match mime.get_param("q") {
                Some(q) => match qvalue(q.as_str()) {
                    Some(q) => q,
                    None => continue,
                },
                None => 1000,
            };
            if quality == 0 {
                continue;
            }
            let openmetrics = mime.type_() == "application"
                && mime.subtype() == "openmetrics-text"
                && mime
                    .get_param("version")
                    .is_none_or(|v| matches!(v.as_str(), "1.0.0" | "0.0.1"));
            let format = if openmetrics {
                Format::OpenMetrics
            } else {
                Format::Text
            };
            ranges.push((quality, format));
        }
    }
    // Stable: among equal qualities the first sent wins.
    ranges.sort_by_key(|&(q, _)| std::cmp::Reverse(q));
    ranges.first().map_or(Format::Text, |&(_, f)| f)
}

/// A qvalue (`0`, `0.5`, `1.000`...) in thousandths, or `None` if it is not one (RFC 9110,
/// 12.4.2).
pub fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Base units a family's name may end in (Prometheus's naming guide); OpenMetrics wants the
/// unit in `# UNIT` and as the name's suffix.
const UNITS: [&str; 9] = [
    "seconds", "bytes", "ratio", "celsius", "meters", "volts", "amperes", "joules", "grams",
];

/// The unit a family name ends in, if it ends in one of [`UNITS`].
pub(super) fn unit_of(name: &str) -> Option<&'static str> {
    UNITS.iter().copied().find(|u| {
        name.strip_suffix(u)
            .is_some_and(|rest| rest.ends_with('_') && rest.len() > 1)
    })
}

/// HELP text escaped for OpenMetrics: `\\`, `\n` and `\"`.
pub(super) fn escape_help(out: &mut Vec<u8>, help: &str) {
    escape_into(out, help);
}

/// A family's metadata lines: `# HELP`, `# TYPE` and `# UNIT` when it has one.
pub(super) fn header(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) {
    if !help.is_empty() {
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        escape_help(out, help);
        out.push(b'\n');
    }
    out.extend_from_slice(b"# TYPE ");
    out.extend_from_slice(name.as_bytes());
    out.push(b' ');
    out.extend_from_slice(kind.as_bytes());
    out.push(b'\n');
    if let Some(unit) = unit_of(name) {
        out.extend_from_slice(b"# UNIT ");
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        out.extend_from_slice(unit.as_bytes());
        out.push(b'\n');
    }
}

/// Encodes the registry's own families (as `prometheus::Registry::gather` returns them).
pub(super) fn encode(families: &[MetricFamily], out: &mut Vec<u8>) {
    for family in families {
        let name = family.name();
        let (family_name, kind) = match family.get_field_type() {
            MetricType::COUNTER => match name.strip_suffix("_total") {
                Some(stem) => (stem, "counter"),
                None => (name, "unknown"),
            },
            MetricType::GAUGE => (name, "gauge"),
            MetricType::HISTOGRAM => (name, "histogram"),
            MetricType::SUMMARY => (name, "summary"),
            MetricType::UNTYPED => (name, "unknown"),
        };
        header(out, family_name, kind, family.help());
        for m in family.get_metric() {
            match family.get_field_type() {
                MetricType::COUNTER => sample(out, name, m, None, m.get_counter().get_value()),
                MetricType::GAUGE => sample(out, name, m, None, m.get_gauge().get_value()),
                // The registry makes none (nor can the text encoder write one).
                MetricType::UNTYPED => {}
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    let bucket = format!("{name}_bucket");
                    let mut inf = false;
                    for b in h.get_bucket() {
                        inf |= b.upper_bound() == f64::INFINITY;
                        let le = float(b.upper_bound());
                        let count = b.cumulative_count() as f64;
                        sample(out, &bucket, m, Some(("le", &le)), count);
                    }
                    let count = h.get_sample_count() as f64;
                    if !inf {
                        sample(out, &bucket, m, Some(("le", "+Inf")), count);
                    }
                    sample(out, &format!("{name}_sum"), m, None, h.get_sample_sum());
                    sample(out, &format!("{name}_count"), m, None, count);
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let quantile = float(q.quantile());
                        sample(out, name, m, Some(("quantile", &quantile)), q.value());
                    }
                    sample(out, &format!("{name}_sum"), m, None, s.sample_sum());
                    let count = s.sample_count() as f64;
                    sample(out, &format!("{name}_count"), m, None, count);
                }
            }
        }
    }
}

fn float(v: f64) -> String {
    let mut out = Vec::new();
    write_value(&mut out, v);
    String::from_utf8_lossy(&out).into_owned()
}

/// One sample line: `name{labels[,extra]} value`, labels in the metric's order.
fn sample(out: &mut Vec<u8>, name: &str, m: &Metric, extra: Option<(&str, &str)>, value: f64) {
    out.extend_from_slice(name.as_bytes());
    let labels = m.get_label().iter().map(|l| (l.name(), l.value()));
    let mut first = true;
    for (n, v) in labels.chain(extra) {
        out.push(if first { b'{' } else { b',' });
        first = false;
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_into(out, v);
        out.push(b'"');
    }
    if !first {
        out.push(b'}');
    }
    out.push(b' ');
    write_value(out, value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(accept: &[&str]) -> Format {
        let values: Vec<HeaderValue> = accept
            .iter()
            .map(|a| HeaderValue::from_str(a).expect("header"))
            .collect();
        negotiate(&values)
    }

    #[test]
    fn negotiation_follows_quality_then_order() {
        // Prometheus 3.5's default scrape_protocols.
        let prometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
            application/openmetrics-text;version=0.0.1;q=0.5,\
            text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
            text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(pick(&[prometheus3]), Format::OpenMetrics);
        // Prometheus 2's default, which prefers the text format.
        let prometheus2 =
            "application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(pick(&[prometheus2]), Format::OpenMetrics);
        assert_eq!(
            pick(&[
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.9"
            ]),
            Format::Text
        );
        assert_eq!(
            pick(&["application/openmetrics-text; version=1.0.0"]),
            Format::OpenMetrics
        );
        assert_eq!(pick(&["application/openmetrics-text"]), Format::OpenMetrics);
        assert_eq!(
            pick(&["application/openmetrics-text;version=\"1.0.0\""]),
            Format::OpenMetrics
        );
        assert_eq!(
            pick(&["Application/OpenMetrics-Text; Version=1.0.0; Q=0.5"]),
            Format::OpenMetrics
        );
        assert_eq!(pick(&[]), Format::Text);
        assert_eq!(pick(&["*/*"]), Format::Text);
        // Split over two fields, as proxies may send it.
        assert_eq!(
            pick(&["text/plain;q=0.1", "application/openmetrics-text;q=0.9"]),
            Format::OpenMetrics
        );
    }

    #[test]
    fn what_cannot_be_served_or_read_falls_back_to_text() {
        assert_eq!(
            pick(&["application/openmetrics-text; version=2.0.0"]),
            Format::Text
        );
        assert_eq!(pick(&["application/openmetrics-text;q=0"]), Format::Text);
        assert_eq!(
            pick(&["application/openmetrics-text;q=0.000"]),
            Format::Text
        );
        // A quality that is not one drops that range alone.
        assert_eq!(pick(&["application/openmetrics-text;q=2"]), Format::Text);
        assert_eq!(
            pick(&["application/openmetrics-text;q=abc, text/plain;q=0.1"]),
            Format::Text
        );
        assert_eq!(
            pick(&[
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
            ]),
            Format::Text
        );
        assert_eq!(
            pick(&[";;;,,=,application/openmetrics-text/x"]),
            Format::Text
        );
        assert_eq!(pick(&["\"application/openmetrics-text\""]), Format::Text);
    }

    #[test]
    fn qvalues_are_read_as_rfc_9110_writes_them() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0."), Some(0));
        assert_eq!(qvalue("1."), Some(1000));
        assert_eq!(qvalue(".5"), None);
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1.001"), None);
        assert_eq!(qvalue("0.1234"), None);
        assert_eq!(qvalue("-0"), None);
        assert_eq!(qvalue(""), None);
        assert_eq!(qvalue("0.+1"), None);
    }

    /// The sample lines of a body, sorted (the metadata is where the formats differ).
    fn samples(body: &[u8]) -> Vec<String> {
        let mut lines: Vec<String> = String::from_utf8_lossy(body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn both_formats_hold_the_same_samples_and_differ_in_metadata() {
        use crate::metrics::{Family, Registry, Render};
        crate::labels! {
            struct Kind { kind }
        }
        let r = Registry::new();
        let counter = r.counters::<Kind>(Family {
            name: "ksit_test_events_total",
            help: "Events, \"quoted\".",
        });
        counter.inc(&Kind {
            kind: "a\"b".into(),
        });
        r.gauges::<()>(Family {
            name: "ksit_test_age_seconds",
            help: "An age.",
        })
        .set(&(), 1.5);
        r.histograms::<()>(
            Family {
                name: "ksit_test_duration_seconds",
                help: "A duration.",
            },
            vec![0.1, 1.0],
        )
        .observe(&(), 0.5);
        let objects = r.objects();
        let status = r.object_gauges::<Kind>(
            &objects,
            Family {
                name: "ksit_test_object_seconds",
                help: "Per object.",
            },
        );
        let mut render = Render::default();
        render.set(&status, &Kind { kind: "x".into() }, 2.0);
        objects.put("uid", render);
        let upstream = b"# TYPE up_total counter\nup_total 3\n";
        r.set_passthrough(
            bytes::Bytes::from_static(upstream),
            bytes::Bytes::from_static(b"# TYPE up counter\nup_total 3\n"),
        );

        let text = r.snapshot_in(Format::Text).text();
        let om = r.snapshot_in(Format::OpenMetrics).text();
        assert_eq!(samples(&text), samples(&om));
        let om = String::from_utf8_lossy(&om).into_owned();
        for line in [
            "# HELP ksit_test_events Events, \\\"quoted\\\".",
            "# TYPE ksit_test_events counter",
            "ksit_test_events_total{kind=\"a\\\"b\"} 1",
            "# TYPE ksit_test_age_seconds gauge\n# UNIT ksit_test_age_seconds seconds",
            "# UNIT ksit_test_duration_seconds seconds",
            "ksit_test_duration_seconds_bucket{le=\"+Inf\"} 1",
            "# TYPE ksit_test_object_seconds gauge\n# UNIT ksit_test_object_seconds seconds",
        ] {
            assert!(om.contains(line), "{line:?} in\n{om}");
        }
        assert!(om.ends_with("up_total 3\n# EOF\n"), "{om}");
        assert!(!String::from_utf8_lossy(&text).contains("# EOF"));
        assert!(!String::from_utf8_lossy(&text).contains("# UNIT"));
        // Each format is cached on its own: asking for one does not re-encode the other.
        let again = r.snapshot_in(Format::Text);
        assert!(std::sync::Arc::ptr_eq(&again, &r.snapshot_in(Format::Text)));
    }

    #[test]
    fn units_come_from_the_name_suffix() {
        assert_eq!(
            unit_of("ksit_exporter_scrape_duration_seconds"),
            Some("seconds")
        );
        assert_eq!(unit_of("process_resident_memory_bytes"), Some("bytes"));
        assert_eq!(unit_of("ksit_cluster_status"), None);
        assert_eq!(unit_of("seconds"), None);
        assert_eq!(unit_of("x_nanoseconds"), None);
    }
}
