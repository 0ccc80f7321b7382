//! The property the upstream parser is fuzzed for, shared by the cargo-fuzz target and
//! `tests/upstream_parse.rs`: it never panics, what it serves re-parses strictly (nothing
//! rejected) to the same text, and each family served is the family the input held (its HELP,
//! TYPE and samples, values to the bit); its OpenMetrics form holds the same samples, with one
//! TYPE per family before them and no blank line. The including crate provides `crate::parse`.

use std::collections::HashMap;

use crate::parse::{self, Kind, Line};

/// One sample: name, labels in order, value bits, timestamp.
type Sample = (String, Vec<(String, String)>, u64, Option<i64>);

/// The families a text holds, grouped as the parser groups them, lines it cannot read left out.
#[derive(Debug, Default, PartialEq)]
struct Family {
    help: Option<String>,
    kind: Option<Kind>,
    samples: Vec<Sample>,
    /// Found in more than one place.
    split: bool,
}

fn model(text: &[u8]) -> HashMap<String, Family> {
    let mut families: HashMap<String, Family> = HashMap::new();
    // The family being read, its type, and whether a TYPE or a sample was seen in this place.
    let mut current: Option<(String, Kind, bool)> = None;
    for line in text.split(|b| *b == b'\n') {
        let line = match parse::parse_line(line) {
            Ok(line) => line,
            // As the parser does, a bad line whose metric name reads joins or starts a family.
            Err(e) => {
                if let Some(name) = e.family {
                    let joins = current
                        .as_ref()
                        .is_some_and(|(f, kind, _)| parse::belongs(name, f, *kind));
                    if !joins {
                        let seen = families.contains_key(name);
                        families.entry(name.to_string()).or_default().split |= seen;
                        current = Some((name.to_string(), Kind::Untyped, false));
                    }
                }
                continue;
            }
        };
        let name = match &line {
            Line::Blank | Line::Comment => continue,
            Line::Help { name, .. } | Line::Type { name, .. } => name.to_string(),
            Line::Sample(s) => match &current {
                Some((f, kind, _)) if parse::belongs(s.name, f, *kind) => f.clone(),
                _ => s.name.to_string(),
            },
        };
        if current.as_ref().is_none_or(|(c, _, _)| *c != name) {
            let seen = families.contains_key(&name);
            families.entry(name.clone()).or_default().split |= seen;
            current = Some((name.clone(), Kind::Untyped, false));
        }
        let f = families.get_mut(&name).expect("entered above");
        let (_, kind, settled) = current.as_mut().expect("set above");
        match line {
            Line::Help { text, .. } => f.help = Some(text.into_owned()),
            // As the parser groups: the first TYPE before samples says what belongs here.
            Line::Type { kind: k, .. } => {
                if !*settled {
                    *kind = k;
                    f.kind = Some(k);
                }
                *settled = true;
            }
            Line::Sample(s) => {
                *settled = true;
                // One NaN: the bits of NaNs differ and mean the same.
                let bits = if s.value.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    s.value.to_bits()
                };
                f.samples.push((
                    s.name.to_string(),
                    s.labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    bits,
                    s.timestamp,
                ));
            }
            Line::Blank | Line::Comment => {}
        }
    }
    families
}

/// Checks the property for one input; the error says what broke.
pub fn check(body: &[u8]) -> Result<(), String> {
    let own = |name: &str| name == "own" || name == "own_total";
    let first = parse::parse(body, &own);
    let again = parse::parse(&first.text, &own);
    if again.counts.iter().any(|n| *n > 0) {
        return Err(format!(
            "the served text is rejected on a second parse: {:?}\n{}",
            again.rejected,
            String::from_utf8_lossy(&first.text)
        ));
    }
    if again.text != first.text {
        return Err(format!(
            "a second parse writes other text:\n{}\n---\n{}",
            String::from_utf8_lossy(&first.text),
            String::from_utf8_lossy(&again.text)
        ));
    }
    let input = model(body);
    let served = model(&first.text);
    if served.len() != first.served.len() {
        return Err(format!(
            "{} families served, {} read back",
            first.served.len(),
            served.len()
        ));
    }
    for f in &first.served {
        let name = &f.name;
        let Some(original) = input.get(name) else {
            return Err(format!("{name} is served but not in the input"));
        };
        if original.split {
            return Err(format!("{name} is in two places in the input, and served"));
        }
        if parse::shadowed(name, &own) {
            return Err(format!("{name} is shadowed, and served"));
        }
        let out = &served[name];
        if out.samples.is_empty() || out != original {
            return Err(format!(
                "{name} served differs from the input's:\n{out:?}\n{original:?}"
            ));
        }
    }
    openmetrics_holds(&first)
}

/// The OpenMetrics form of what is served: the text's sample lines in order (a timestamp in
/// seconds rather than milliseconds), and per family one `# TYPE` line before its samples.
fn openmetrics_holds(parsed: &parse::Parsed) -> Result<(), String> {
    let om = parse::to_openmetrics(parsed);
    let text_samples: Vec<&[u8]> = parsed
        .text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .collect();
    let mut om_samples = Vec::new();
    let mut types = 0;
    let mut typed = false;
    let show = || String::from_utf8_lossy(&om).into_owned();
    for line in om.strip_suffix(b"\n").unwrap_or(&om).split(|b| *b == b'\n') {
        if om.is_empty() {
            break;
        }
        if line.is_empty() {
            return Err(format!("a blank line in OpenMetrics:\n{}", show()));
        }
        if line.starts_with(b"# TYPE ") {
            types += 1;
            typed = true;
        } else if line.starts_with(b"# HELP ") {
            typed = false;
        } else if line.starts_with(b"#") {
            return Err(format!(
                "a comment OpenMetrics has no place for:\n{}",
                show()
            ));
        } else if !typed {
            return Err(format!("a sample before its family's TYPE:\n{}", show()));
        } else {
            om_samples.push(line);
        }
    }
    if types != parsed.served.len() {
        return Err(format!(
            "{types} TYPE lines for {} families:\n{}",
            parsed.served.len(),
            show()
        ));
    }
    if om_samples.len() != text_samples.len() {
        return Err(format!("other samples in OpenMetrics:\n{}", show()));
    }
    for (om, text) in om_samples.iter().zip(&text_samples) {
        // The same bytes, but for a timestamp, which is in seconds there.
        let mut expected = text.to_vec();
        if let Ok(Line::Sample(parse::Sample {
            timestamp: Some(ms),
            ..
        })) = parse::parse_line(text)
        {
            let at = text
                .iter()
                .rposition(|b| *b == b' ')
                .expect("a timestamp follows a blank");
            expected.truncate(at + 1);
            parse::write_float(&mut expected, ms as f64 / 1000.0);
        }
        let same = **om == expected[..];
        if !same {
            return Err(format!(
                "{:?} in OpenMetrics for {:?}",
                String::from_utf8_lossy(om),
                String::from_utf8_lossy(text)
            ));
        }
    }
    Ok(())
}
