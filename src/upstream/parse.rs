//! A strict parser of the Prometheus text format 0.0.4, and the re-serializer of what it accepts.
//!
//! It accepts what both Prometheus (its `promparse` lexer) and client_golang's `expfmt` (which
//! `promtool check metrics` uses) accept, and drops a malformed family alone: the rest of the
//! body is still served. What it returns is written from the parsed form, never copied text, so
//! it always parses again. Where the two Go parsers differ, the stricter rule holds (a TYPE
//! word must follow one space; a timestamp is unsigned digits that fit an i64; a metric name is
//! followed by a blank or `{`); where Prometheus is the more lenient, that is what is read (an
//! unknown escape such as `\t` in a label value or HELP is a backslash and the letter, as
//! Prometheus stores it, and is served re-escaped so that both read it the same way).
//!
//! Only `std` is used, so the fuzz target (`fuzz/`) compiles this file on its own.
//!
//! Memory: one pass over the borrowed body writes the output as it goes; a family found bad is
//! cut from the output. Per family it keeps a 64-bit hash of each series (duplicates), and at
//! most [`MAX_FAMILIES`] family names (borrowed from the body), so that a body of a million
//! one-line families cannot make the bookkeeping larger than the body.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::ops::Range;

/// More distinct families than any real component has (etcd has ~150, kube-apiserver ~400); the
/// ones past it are dropped, so the bookkeeping stays small whatever the body.
pub const MAX_FAMILIES: usize = 10_000;
/// Rejections reported by name (for the log) per parse; all are counted.
const MAX_REPORTED: usize = 100;
/// Suffixes by which one family's series can collide with another family's name.
pub const SUFFIXES: [&str; 6] = ["_bucket", "_sum", "_count", "_total", "_created", "_info"];

/// A family's type, from its `# TYPE` line (`Untyped` without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn from_word(w: &[u8]) -> Option<Kind> {
        Some(match w {
            b"counter" => Kind::Counter,
            b"gauge" => Kind::Gauge,
            b"histogram" => Kind::Histogram,
            b"summary" => Kind::Summary,
            b"untyped" => Kind::Untyped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        }
    }

    /// The sample-name suffixes this type's samples carry besides the bare family name.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Histogram => &["_bucket", "_sum", "_count"],
            Kind::Summary => &["_sum", "_count"],
            _ => &[],
        }
    }
}

/// Why a family was dropped; the `reason` label of the rejected-families gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A line of it is not the text format (name, labels, escapes, value, timestamp, UTF-8).
    Syntax,
    /// A second TYPE or HELP, a TYPE after samples, or an unknown type.
    Metadata,
    /// A sample that does not fit the type (a bucket without a float `le`, ...).
    Type,
    /// The same series twice.
    DuplicateSeries,
    /// The family appears in two places.
    Split,
    /// Its series names overlap another upstream family's (`foo_count` beside histogram `foo`).
    Clash,
    /// The exporter serves a family of that name, or one its names collide with by a suffix.
    Shadowed,
    /// Past [`MAX_FAMILIES`].
    Limit,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Syntax,
        Reason::Metadata,
        Reason::Type,
        Reason::DuplicateSeries,
        Reason::Split,
        Reason::Clash,
        Reason::Shadowed,
        Reason::Limit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Syntax => "syntax",
            Reason::Metadata => "metadata",
            Reason::Type => "type",
            Reason::DuplicateSeries => "duplicate_series",
            Reason::Split => "split",
            Reason::Clash => "clash",
            Reason::Shadowed => "shadowed",
            Reason::Limit => "limit",
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// In the order of the text, values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}

impl Sample<'_> {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// One line of the text format.
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    Blank,
    /// Any comment other than HELP and TYPE; it carries nothing.
    Comment,
    Help {
        name: &'a str,
        text: Cow<'a, str>,
    },
    Type {
        name: &'a str,
        kind: Kind,
    },
    Sample(Sample<'a>),
}

/// A line that is not the text format; `family` when its metric name could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct LineError<'a> {
    pub family: Option<&'a str>,
    pub reason: Reason,
    pub what: &'static str,
}

fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn name_start(b: u8, colon: bool) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || (colon && b == b':')
}

/// A byte cursor over one line (without its `\n`).
struct Cursor<'a> {
    line: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.at).copied()
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(blank) {
            self.at += 1;
        }
    }

    fn done(&self) -> bool {
        self.at >= self.line.len()
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names (`colon`), `[a-zA-Z_][a-zA-Z0-9_]*` for labels.
    fn name(&mut self, colon: bool) -> Option<&'a str> {
        let start = self.at;
        if !self.peek().is_some_and(|b| name_start(b, colon)) {
            return None;
        }
        while self
            .peek()
            .is_some_and(|b| name_start(b, colon) || b.is_ascii_digit())
        {
            self.at += 1;
        }
        // ASCII by construction.
        std::str::from_utf8(&self.line[start..self.at]).ok()
    }

    /// Bytes up to the next blank or the end.
    fn word(&mut self) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(|b| !blank(b)) {
            self.at += 1;
        }
        &self.line[start..self.at]
    }
}

/// Unescapes `raw` as Prometheus does: `\\` and `\n`, and `\"` when `quote`; any other
/// backslash stays, with the character after it.
fn unescape(raw: &str, quote: bool) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quote => out.push('"'),
                _ => {
                    out.push('\\');
                    continue;
                }
            }
            chars.next();
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A float as Go's `strconv.ParseFloat` reads it for Prometheus: decimal (no hex, no `_`),
/// `Inf`/`Infinity` with an optional sign and `NaN` without one (any case), and an error
/// rather than infinity for a number out of range.
pub fn parse_float(s: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(s).ok()?;
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1.0, &s[1..]),
        Some(b'-') => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    if rest.eq_ignore_ascii_case("inf") || rest.eq_ignore_ascii_case("infinity") {
        return Some(sign * f64::INFINITY);
    }
    if s.eq_ignore_ascii_case("nan") {
        return Some(f64::NAN);
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses one line (without its `\n`).
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, LineError<'_>> {
    let mut c = Cursor { line, at: 0 };
    c.skip_blanks();
    match c.peek() {
        None => Ok(Line::Blank),
        Some(b'#') => parse_comment(c),
        Some(_) => parse_sample(c).map(Line::Sample),
    }
}

fn err<'a>(family: Option<&'a str>, reason: Reason, what: &'static str) -> LineError<'a> {
    LineError {
        family,
        reason,
        what,
    }
}

fn parse_comment(mut c: Cursor<'_>) -> Result<Line<'_>, LineError<'_>> {
    c.at += 1;
    if !c.peek().is_some_and(blank) {
        return Ok(Line::Comment);
    }
    c.skip_blanks();
    let rest = &c.line[c.at..];
    let help = rest.starts_with(b"HELP");
    if !(help || rest.starts_with(b"TYPE")) || !rest.get(4).is_some_and(|b| blank(*b)) {
        return Ok(Line::Comment);
    }
    c.at += 4;
    c.skip_blanks();
    let Some(name) = c.name(true) else {
        return Err(err(
            None,
            Reason::Syntax,
            "expected a metric name after HELP or TYPE",
        ));
    };
    // Prometheus takes the text after exactly one blank.
    let text = match c.peek() {
        None => &c.line[c.at..],
        Some(b) if blank(b) => &c.line[c.at + 1..],
        Some(_) => {
            return Err(err(
                Some(name),
                Reason::Syntax,
                "expected a blank after the metric name",
            ));
        }
    };
    if help {
        if text.contains(&0) {
            return Err(err(Some(name), Reason::Syntax, "a NUL byte in HELP"));
        }
        let text = std::str::from_utf8(text)
            .map_err(|_| err(Some(name), Reason::Syntax, "HELP text is not UTF-8"))?;
        return Ok(Line::Help {
            name,
            text: unescape(text, false),
        });
    }
    match Kind::from_word(text) {
        Some(kind) => Ok(Line::Type { name, kind }),
        None => Err(err(Some(name), Reason::Metadata, "unknown metric type")),
    }
}

fn parse_sample(mut c: Cursor<'_>) -> Result<Sample<'_>, LineError<'_>> {
    let Some(name) = c.name(true) else {
        return Err(err(None, Reason::Syntax, "expected a metric name"));
    };
    let fail = |what| Err(err(Some(name), Reason::Syntax, what));
    // Prometheus's lexer takes a NUL byte for the end of the body: never serve one.
    if c.line.contains(&0) {
        return fail("a NUL byte");
    }
    let after_name = c.peek();
    c.skip_blanks();
    let mut labels = Vec::new();
    if c.peek() == Some(b'{') {
        c.at += 1;
        loop {
            c.skip_blanks();
            if c.peek() == Some(b'}') {
                c.at += 1;
                break;
            }
            let Some(label) = c.name(false) else {
                return fail("expected a label name or '}'");
            };
            if label == "__name__" {
                return fail("label name __name__ is reserved");
            }
            c.skip_blanks();
            if c.peek() != Some(b'=') {
                return fail("expected '=' after a label name");
            }
            c.at += 1;
            c.skip_blanks();
            if c.peek() != Some(b'"') {
                return fail("expected a quoted label value");
            }
            c.at += 1;
            let start = c.at;
            loop {
                match c.peek() {
                    None => return fail("unterminated label value"),
                    Some(b'"') => break,
                    Some(b'\\') => c.at += 2,
                    Some(_) => c.at += 1,
                }
            }
            let Ok(raw) = std::str::from_utf8(&c.line[start..c.at]) else {
                return fail("label value is not UTF-8");
            };
            c.at += 1;
            labels.push((label, unescape(raw, true)));
            c.skip_blanks();
            match c.peek() {
                Some(b',') => c.at += 1,
                Some(b'}') => {
                    c.at += 1;
                    break;
                }
                _ => return fail("expected ',' or '}' after a label value"),
            }
        }
    } else if !after_name.is_some_and(blank) {
        return fail("expected a blank or '{' after the metric name");
    }
    c.skip_blanks();
    let value = c.word();
    if value.is_empty() {
        return fail("expected a value");
    }
    if value.contains(&b'{') {
        return fail("'{' in the value");
    }
    let Some(value) = parse_float(value) else {
        return fail("value is not a float");
    };
    c.skip_blanks();
    let mut timestamp = None;
    if !c.done() {
        let ts = c.word();
        if !ts.iter().all(u8::is_ascii_digit) {
            return fail("timestamp is not an integer");
        }
        // Digits only, so UTF-8; an overflow is an error, as in expfmt.
        timestamp = Some(
            std::str::from_utf8(ts)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| err(Some(name), Reason::Syntax, "timestamp out of range"))?,
        );
        c.skip_blanks();
        if !c.done() {
            return fail("text after the timestamp");
        }
    }
    Ok(Sample {
        name,
        labels,
        value,
        timestamp,
    })
}

/// Whether sample `sample` is part of family `family` of type `kind`.
pub fn belongs(sample: &str, family: &str, kind: Kind) -> bool {
    sample == family
        || sample
            .strip_prefix(family)
            .is_some_and(|s| kind.suffixes().contains(&s))
}

/// Whether an upstream family named `name` collides with one of the exporter's (`own`): the same
/// name, or one that differs from it by one of [`SUFFIXES`] either way.
pub fn shadowed(name: &str, own: &dyn Fn(&str) -> bool) -> bool {
    own(name)
        || SUFFIXES
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(own) || own(&format!("{name}{s}")))
}

/// A family dropped, for the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Empty for a line whose metric name could not be read.
    pub family: String,
    pub reason: Reason,
    /// Where and what, e.g. `line 3: expected '=' after a label name`.
    pub detail: String,
}

/// A family served.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub name: String,
    pub kind: Kind,
    /// Its text in [`Parsed::text`].
    pub range: Range<usize>,
}

/// What one body gives.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The families kept, written in the text format.
    pub text: Vec<u8>,
    pub served: Vec<Served>,
    /// Rejected families (and unreadable lines) by reason, [`Reason::ALL`]'s order.
    pub counts: [usize; Reason::ALL.len()],
    /// The first rejections, for the log.
    pub rejected: Vec<Rejected>,
}

impl Parsed {
    pub fn count(&self, reason: Reason) -> usize {
        self.counts[reason as usize]
    }

    /// The served text of family `name`, if it is served.
    pub fn family(&self, name: &str) -> Option<&[u8]> {
        self.served
            .iter()
            .find(|f| f.name == name)
            .map(|f| &self.text[f.range.clone()])
    }

    fn reject(&mut self, family: &str, reason: Reason, detail: String) {
        self.counts[reason as usize] += 1;
        if self.rejected.len() < MAX_REPORTED {
            self.rejected.push(Rejected {
                family: family.to_string(),
                reason,
                detail,
            });
        }
    }
}

/// One family name's record.
struct Record<'b> {
    name: &'b str,
    kind: Kind,
    /// Its text in the output, once it closed with samples and no fault.
    range: Range<usize>,
    fault: Option<(Reason, String)>,
}

/// The family being read.
struct Current<'b> {
    /// Index into the records; `None` past [`MAX_FAMILIES`].
    record: Option<usize>,
    name: &'b str,
    kind: Kind,
    typed: bool,
    helped: bool,
    samples: usize,
    start: usize,
    fault: Option<(Reason, String)>,
}

struct Parser<'b, 'o> {
    own: &'o dyn Fn(&str) -> bool,
    out: Parsed,
    records: Vec<Record<'b>>,
    index: HashMap<&'b str, usize>,
    current: Option<Current<'b>>,
    /// Hashes of the current family's series.
    series: Vec<u64>,
    hasher: RandomState,
}

/// Parses `body`, keeping every well-formed family not shadowed by one of the exporter's own
/// (`own` says whether the exporter serves a family of that name).
pub fn parse(body: &[u8], own: &dyn Fn(&str) -> bool) -> Parsed {
    let mut p = Parser {
        own,
        out: Parsed {
            text: Vec::with_capacity(body.len() + body.len() / 8),
            ..Parsed::default()
        },
        records: Vec::new(),
        index: HashMap::new(),
        current: None,
        series: Vec::new(),
        hasher: RandomState::new(),
    };
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    if !body.is_empty() {
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            p.line(n + 1, line);
        }
    }
    p.close();
    p.finish()
}

/// `line N: what`, with a short escaped excerpt of the line.
fn detail(n: usize, what: &str, line: &[u8]) -> String {
    let excerpt: String = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    format!("line {n}: {what}: {excerpt:?}")
}

impl<'b> Parser<'b, '_> {
    fn line(&mut self, n: usize, line: &'b [u8]) {
        match parse_line(line) {
            Ok(Line::Blank | Line::Comment) => {}
            Ok(Line::Help { name, text }) => {
                let c = self.enter(name);
                if c.fault.is_some() {
                    return;
                }
                if c.helped {
                    c.fault = Some((Reason::Metadata, detail(n, "a second HELP", line)));
                    return;
                }
                c.helped = true;
                let mut help = Vec::with_capacity(name.len() + text.len() + 10);
                help.extend_from_slice(b"# HELP ");
                help.extend_from_slice(name.as_bytes());
                help.push(b' ');
                escape_into(&mut help, &text, false);
                help.push(b'\n');
                // HELP after samples is allowed; it is served first.
                let at = c.start;
                self.out.text.splice(at..at, help);
            }
            Ok(Line::Type { name, kind }) => {
                let c = self.enter(name);
                if c.typed || c.samples > 0 {
                    let what = if c.typed {
                        "a second TYPE"
                    } else {
                        "TYPE after samples"
                    };
                    if c.fault.is_none() {
                        c.fault = Some((Reason::Metadata, detail(n, what, line)));
                    }
                    return;
                }
                // The first TYPE before samples says which samples belong here, even in a
                // family already found bad, so that they are dropped with it.
                c.typed = true;
                c.kind = kind;
                if c.fault.is_some() {
                    return;
                }
                let out = &mut self.out.text;
                out.extend_from_slice(b"# TYPE ");
                out.extend_from_slice(name.as_bytes());
                out.push(b' ');
                out.extend_from_slice(kind.as_bytes());
                out.push(b'\n');
            }
            Ok(Line::Sample(s)) => self.sample(n, line, s),
            Err(e) => match e.family {
                Some(name) => {
                    let c = self.enter_for_sample(name);
                    if c.fault.is_none() {
                        c.fault = Some((e.reason, detail(n, e.what, line)));
                    }
                }
                // No family to charge it to: the line alone is dropped and counted.
                None => self.out.reject("", Reason::Syntax, detail(n, e.what, line)),
            },
        }
    }

    /// The family a sample (or a bad line) named `name` belongs to: the current one, or a new one.
    fn enter_for_sample(&mut self, name: &'b str) -> &mut Current<'b> {
        let continues = self
            .current
            .as_ref()
            .is_some_and(|c| belongs(name, c.name, c.kind));
        if continues {
            self.current.as_mut().expect("checked above")
        } else {
            self.enter(name)
        }
    }

    fn sample(&mut self, n: usize, line: &[u8], s: Sample<'b>) {
        let mut sorted: Vec<(&str, &str)> =
            s.labels.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        sorted.sort_unstable();
        let twice = sorted.windows(2).any(|w| w[0].0 == w[1].0);
        let hash = self.hasher.hash_one((s.name, &sorted));
        let c = self.enter_for_sample(s.name);
        c.samples += 1;
        if c.fault.is_some() {
            return;
        }
        if twice {
            c.fault = Some((Reason::Syntax, detail(n, "a label name twice", line)));
            return;
        }
        if let Some(what) = type_fault(c.name, c.kind, &s) {
            c.fault = Some((Reason::Type, detail(n, what, line)));
            return;
        }
        self.series.push(hash);
        write_sample(&mut self.out.text, &s);
    }

    /// Makes `name` the current family, closing the one before; a name seen before is a split.
    fn enter(&mut self, name: &'b str) -> &mut Current<'b> {
        if self.current.as_ref().is_none_or(|c| c.name != name) {
            self.close();
            let start = self.out.text.len();
            let mut fault = None;
            let record = match self.index.get(name) {
                Some(&i) => {
                    let r = &mut self.records[i];
                    if r.fault.is_none() {
                        r.fault = Some((Reason::Split, format!("{name} appears in two places")));
                    }
                    fault = Some((Reason::Split, String::new()));
                    Some(i)
                }
                None if self.records.len() >= MAX_FAMILIES => {
                    self.out.reject(
                        name,
                        Reason::Limit,
                        format!("more than {MAX_FAMILIES} families"),
                    );
                    fault = Some((Reason::Limit, String::new()));
                    None
                }
                None => {
                    if shadowed(name, self.own) {
                        fault = Some((
                            Reason::Shadowed,
                            "the exporter serves a family of this name or one that differs by a suffix"
                                .to_string(),
                        ));
                    }
                    self.index.insert(name, self.records.len());
                    self.records.push(Record {
                        name,
                        kind: Kind::Untyped,
                        range: 0..0,
                        fault: fault.clone(),
                    });
                    Some(self.records.len() - 1)
                }
            };
            self.current = Some(Current {
                record,
                name,
                kind: Kind::Untyped,
                typed: false,
                helped: false,
                samples: 0,
                start,
                fault,
            });
        }
        self.current.as_mut().expect("set above")
    }

    /// Ends the current family: cut from the output if it is bad or empty, else recorded.
    fn close(&mut self) {
        let Some(mut c) = self.current.take() else {
            return;
        };
        if c.fault.is_none() {
            self.series.sort_unstable();
            if self.series.windows(2).any(|w| w[0] == w[1]) {
                c.fault = Some((
                    Reason::DuplicateSeries,
                    format!("{} has a series twice", c.name),
                ));
            }
        }
        self.series.clear();
        let Some(i) = c.record else {
            self.out.text.truncate(c.start);
            return;
        };
        let r = &mut self.records[i];
        match c.fault {
            Some(fault) => {
                self.out.text.truncate(c.start);
                // The first fault of a name is the one reported (a split's other part says so).
                if r.fault.is_none() {
                    r.fault = Some(fault);
                }
            }
            None if c.samples == 0 => self.out.text.truncate(c.start),
            None => {
                r.kind = c.kind;
                r.range = c.start..self.out.text.len();
            }
        }
    }

    /// Marks clashes, cuts what was found bad after it was written, and counts.
    fn finish(mut self) -> Parsed {
        let mut claims: HashMap<String, usize> = HashMap::new();
        for i in 0..self.records.len() {
            let r = &self.records[i];
            if r.fault.is_some() || r.range.is_empty() {
                continue;
            }
            let mut names = vec![r.name.to_string()];
            names.extend(r.kind.suffixes().iter().map(|s| format!("{}{s}", r.name)));
            for name in names {
                if let Some(&j) = claims.get(&name) {
                    for k in [i, j] {
                        let other = self.records[i + j - k].name;
                        let r = &mut self.records[k];
                        if r.fault.is_none() {
                            r.fault = Some((
                                Reason::Clash,
                                format!("{name} is a series name of both {} and {other}", r.name),
                            ));
                        }
                    }
                } else {
                    claims.insert(name, i);
                }
            }
        }
        // Ranges are in the order of the records: compact in one pass.
        let mut write = 0;
        for r in &mut self.records {
            if let Some((reason, detail)) = r.fault.take() {
                self.out.reject(r.name, reason, detail);
                continue;
            }
            if r.range.is_empty() {
                continue;
            }
            let len = r.range.len();
            self.out.text.copy_within(r.range.clone(), write);
            self.out.served.push(Served {
                name: r.name.to_string(),
                kind: r.kind,
                range: write..write + len,
            });
            write += len;
        }
        self.out.text.truncate(write);
        self.out.text.shrink_to_fit();
        self.out
    }
}

impl Kind {
    fn as_bytes(self) -> &'static [u8] {
        self.as_str().as_bytes()
    }
}

/// Why sample `s` does not fit family `family` of type `kind`, if it does not.
fn type_fault(family: &str, kind: Kind, s: &Sample<'_>) -> Option<&'static str> {
    let suffix = &s.name[family.len()..];
    let float = |label| s.label(label).map(|v| parse_float(v.as_bytes()));
    match (kind, suffix) {
        (Kind::Histogram, "") => Some("a histogram sample needs _bucket, _sum or _count"),
        (Kind::Histogram, "_bucket") => match float("le") {
            Some(Some(le)) if !le.is_nan() => None,
            Some(_) => Some("le is not a float"),
            None => Some("a bucket without le"),
        },
        (Kind::Summary, "") => match float("quantile") {
            Some(Some(_)) => None,
            Some(None) => Some("quantile is not a float"),
            None => Some("a summary sample without quantile"),
        },
        _ => None,
    }
}

/// Appends `text` escaped: `\` and newline, and `"` in a label value (`quote`).
fn escape_into(out: &mut Vec<u8>, text: &str, quote: bool) {
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            _ => out.push(b),
        }
    }
}

/// The served families of `parsed` in OpenMetrics 1.0.0 text, without `# EOF` (the exposition
/// adds it once at its end). Each series keeps its name, labels and value: a counter named
/// `x_total` becomes family `x`, whose samples keep `x_total`; a counter without that suffix and
/// an untyped family are `unknown` (OpenMetrics would rename the counter's samples); HELP
/// escapes `"`; a timestamp goes from milliseconds to seconds. No unit is guessed for an
/// upstream's family.
pub fn to_openmetrics(parsed: &Parsed) -> Vec<u8> {
    let mut out = Vec::with_capacity(parsed.text.len() + parsed.served.len() * 8);
    for family in &parsed.served {
        let (name, kind) = match family.kind {
            Kind::Counter => match family.name.strip_suffix("_total") {
                Some(stem) => (stem, "counter"),
                None => (family.name.as_str(), "unknown"),
            },
            Kind::Untyped => (family.name.as_str(), "unknown"),
            other => (family.name.as_str(), other.as_str()),
        };
        let text = &parsed.text[family.range.clone()];
        // The served text is this parser's own writing: HELP first, then TYPE, then samples.
        let mut typed = false;
        let type_line = |out: &mut Vec<u8>| {
            out.extend_from_slice(b"# TYPE ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend_from_slice(kind.as_bytes());
            out.push(b'\n');
        };
        for line in text.split(|b| *b == b'\n') {
            let Ok(line) = parse_line(line) else { continue };
            match line {
                Line::Help { text, .. } => {
                    out.extend_from_slice(b"# HELP ");
                    out.extend_from_slice(name.as_bytes());
                    out.push(b' ');
                    escape_into(&mut out, &text, true);
                    out.push(b'\n');
                    type_line(&mut out);
                    typed = true;
                }
                Line::Sample(s) => {
                    if !typed {
                        type_line(&mut out);
                        typed = true;
                    }
                    let seconds = s.timestamp.map(|ms| ms as f64 / 1000.0);
                    let s = Sample {
                        timestamp: None,
                        ..s
                    };
                    write_sample(&mut out, &s);
                    if let Some(seconds) = seconds {
                        out.pop();
                        out.push(b' ');
                        write_float(&mut out, seconds);
                        out.push(b'\n');
                    }
                }
                Line::Type { .. } | Line::Blank | Line::Comment => {}
            }
        }
    }
    out
}

/// Appends a value as Go reads it back to the same float.
pub fn write_float(out: &mut Vec<u8>, v: f64) {
    use std::io::Write;
    let _ = if v.is_nan() {
        out.write_all(b"NaN")
    } else if v.is_infinite() {
        out.write_all(if v > 0.0 { b"+Inf" } else { b"-Inf" })
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        write!(out, "{v}")
    } else {
        // Debug is the shortest text that reads back to the same float, in exponent form when
        // the plain one would be long.
        write!(out, "{v:?}")
    };
}

fn write_sample(out: &mut Vec<u8>, s: &Sample<'_>) {
    out.extend_from_slice(s.name.as_bytes());
    if !s.labels.is_empty() {
        out.push(b'{');
        for (i, (name, value)) in s.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"=\"");
            escape_into(out, value, true);
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    write_float(out, s.value);
    if let Some(ts) = s.timestamp {
        out.push(b' ');
        out.extend_from_slice(ts.to_string().as_bytes());
    }
    out.push(b'\n');
}
