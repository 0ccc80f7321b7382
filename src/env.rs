//! The variable tables every command reads its configuration from.
//!
//! A [`Var`] holds everything about one variable: its name, its default (a string that goes
//! through the same parser as a set value, so it is written once), its help, its parser and how
//! `check-config` prints the effective value. A command's `VARIABLES` list of [`Doc`]s is made
//! from its `Var`s, so `--help` and the README check cannot drift from what is applied.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use crate::telemetry::redact_text;

/// A variable that cannot be used, in one line that names it: `{VAR}={value:?} is invalid:
/// {expected}`. The one error type of every command's configuration (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is invalid: {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: String,
    },
    #[error("{var} is not set: expected {expected}")]
    Missing { var: &'static str, expected: String },
}

impl ConfigError {
    /// Credentials in URLs of the value (or of the explanation, which may quote it) are masked:
    /// the line goes to logs.
    pub fn invalid(var: &'static str, value: &str, expected: impl Into<String>) -> Self {
        ConfigError::Invalid {
            var,
            value: redact_text(value).into_owned(),
            expected: redact_text(&expected.into()).into_owned(),
        }
    }

    /// The variable at fault.
    pub fn var(&self) -> &'static str {
        match self {
            ConfigError::Invalid { var, .. } | ConfigError::Missing { var, .. } => var,
        }
    }
}

/// What a variable set to an empty (or blank) value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Empty {
    /// The same as unset, as Kubernetes manifests often render `value: ""`; set values are
    /// trimmed.
    Default,
    /// A value of its own (such as "no limit"), given to the parser as written.
    Value,
}

/// One variable: everything `--help`, validation and `check-config` know about it.
pub struct Var<T> {
    pub name: &'static str,
    /// Applied when the variable is unset; parsed like a set value. Empty: none, or required
    /// when the parser rejects the empty string.
    pub default: &'static str,
    pub help: &'static str,
    pub empty: Empty,
    /// The value, or what was expected instead (the end of the error line).
    pub parse: fn(&str) -> Result<T, String>,
    /// The effective value as `check-config` prints it; parsing it again gives the same value,
    /// except that credentials in URLs are masked.
    pub show: fn(&T) -> String,
}

/// `(name, default, help)` of a variable, as `--help` and the documentation's tables show it.
pub type Doc = (&'static str, &'static str, &'static str);

impl<T> Var<T> {
    pub const fn doc(&self) -> Doc {
        (self.name, self.default, self.help)
    }
}

/// The variables one command reads, from any set of `(name, value)` pairs (tests pass a map);
/// remembers the effective value of each variable read, in the order read.
pub struct Reader {
    vars: BTreeMap<String, String>,
    effective: Vec<(&'static str, String)>,
}

impl Reader {
    pub fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Reader {
            vars: vars.into_iter().collect(),
            effective: Vec::new(),
        }
    }

    /// The value of `var`, or its default when unset.
    pub fn read<T>(&mut self, var: &Var<T>) -> Result<T, ConfigError> {
        let set = self.vars.get(var.name).map(|v| match var.empty {
            Empty::Default => v.trim(),
            Empty::Value => v.as_str(),
        });
        let (value, defaulted) = match set {
            Some(v) if !(v.is_empty() && var.empty == Empty::Default) => (v, false),
            _ => (var.default, true),
        };
        match (var.parse)(value) {
            Ok(parsed) => {
                self.effective.push((var.name, (var.show)(&parsed)));
                Ok(parsed)
            }
            // An empty default that the parser rejects makes the variable required.
            Err(expected) if defaulted && value.is_empty() => Err(ConfigError::Missing {
                var: var.name,
                expected,
            }),
            Err(expected) => Err(ConfigError::invalid(var.name, value, expected)),
        }
    }

    /// Whether `name` is set to a value of its own (not unset, nor blank where that means the
    /// default): a check between two variables blames the one the user set.
    pub fn is_set<T>(&self, var: &Var<T>) -> bool {
        self.vars.get(var.name).is_some_and(|v| match var.empty {
            Empty::Default => !v.trim().is_empty(),
            Empty::Value => true,
        })
    }

    /// Every variable read so far with its effective value.
    pub fn effective(self) -> Effective {
        Effective(self.effective)
    }
}

/// The effective configuration, one `VAR=value` a line, as `check-config` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective(pub Vec<(&'static str, String)>);

impl fmt::Display for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// The text variables of an environment such as `std::env::vars_os()` (which, unlike
/// `std::env::vars()`, does not panic on a value that is not UTF-8). A variable of `ours` that
/// is not UTF-8 is an error naming it; anything else that is not text is no business of ours.
pub fn text_vars(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    ours: &[&[Doc]],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut text = Vec::new();
    for (name, value) in vars {
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => text.push((name, value)),
            Err(value) => {
                if let Some((var, _, _)) = ours.iter().flat_map(|t| t.iter()).find(|d| d.0 == name)
                {
                    return Err(ConfigError::invalid(
                        var,
                        &value.to_string_lossy(),
                        "UTF-8 text",
                    ));
                }
            }
        }
    }
    Ok(text)
}

/// One warning per `KSIT_*` variable that no table in `known` has, most likely a typo. The
/// kubelet's service links are not: it gives every container `<SERVICE>_SERVICE_HOST`,
/// `<SERVICE>_PORT_8080_TCP` and the like for each Service of the namespace, and the sidecar's
/// own Service is `ksit-monitor` (`KSIT_MONITOR_*`).
pub fn unknown_variables(vars: &[(String, String)], known: &[&[Doc]]) -> Vec<String> {
    vars.iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("KSIT_") && !is_service_link(name))
        .filter(|name| !known.iter().flat_map(|t| t.iter()).any(|d| d.0 == *name))
        .map(|name| {
            format!(
                "unknown variable {name} is ignored; `ksit-exporter --help` lists the known ones"
            )
        })
        .collect()
}

/// Whether `name` is one of the variables the kubelet writes for a Service (Kubernetes'
/// `envvars.FromServices`): `X_SERVICE_HOST`, `X_SERVICE_PORT`, `X_SERVICE_PORT_NAME`,
/// `X_PORT`, `X_PORT_8080_TCP` and its `_PROTO`, `_PORT` and `_ADDR`.
fn is_service_link(name: &str) -> bool {
    if name.ends_with("_SERVICE_HOST") || name.ends_with("_SERVICE_PORT") {
        return true;
    }
    if name.contains("_SERVICE_PORT_") {
        return true;
    }
    let Some((_, rest)) = name.rsplit_once("_PORT") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    // `_8080_TCP`, then optionally `_PROTO`, `_PORT` or `_ADDR`.
    let mut parts = rest.trim_start_matches('_').split('_');
    let port = parts
        .next()
        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let proto = parts
        .next()
        .is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    let tail = parts
        .next()
        .is_none_or(|p| matches!(p, "PROTO" | "PORT" | "ADDR"));
    port && proto && tail && parts.next().is_none()
}

/// A variables table as `--help` prints it.
pub fn describe(variables: &[Doc]) -> String {
    let mut out = String::new();
    for (name, default, help) in variables {
        let default = if default.is_empty() {
            String::new()
        } else {
            format!(" (default {default})")
        };
        out.push_str(&format!("  {name}{default}\n      {help}\n"));
    }
    out
}

/// A parser for a variable with a few allowed words, `choices` as `(word, value)`.
pub fn choose<T: Copy>(value: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(word, _)| *word == value)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let words: Vec<String> = choices.iter().map(|(w, _)| format!("`{w}`")).collect();
            match words.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            }
        })
}

/// The word of `value` in `choices`, for [`Var::show`].
pub fn word_of<T: PartialEq>(value: &T, choices: &[(&'static str, T)]) -> String {
    choices
        .iter()
        .find(|(_, v)| v == value)
        .map(|(word, _)| word.to_string())
        .unwrap_or_default()
}

/// A value that may be absent, printed empty when it is.
pub fn show_optional<T: fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map(T::to_string).unwrap_or_default()
}

/// A text value; empty means none.
pub fn optional_text(value: &str) -> Result<Option<String>, String> {
    Ok((!value.is_empty()).then(|| value.to_string()))
}

/// A duration such as `10s`, `500ms` or `1m`, from `min` to `max`.
pub fn duration(value: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .ok()
        .filter(|d| (min..=max).contains(d))
        .ok_or_else(|| {
            format!(
                "a duration from {} to {} such as `10s`, `500ms` or `1m`",
                humantime::format_duration(min),
                humantime::format_duration(max)
            )
        })
}

pub fn show_duration(value: &Duration) -> String {
    humantime::format_duration(*value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    const WORD: Var<bool> = Var {
        name: "KSIT_T_WORD",
        default: "false",
        help: "",
        empty: Empty::Default,
        parse: |v| choose(v, &[("true", true), ("false", false)]),
        show: |v| v.to_string(),
    };
    const REQUIRED: Var<String> = Var {
        name: "KSIT_T_REQUIRED",
        default: "",
        help: "",
        empty: Empty::Default,
        parse: |v| {
            if v.is_empty() {
                Err("a path".to_string())
            } else {
                Ok(v.to_string())
            }
        },
        show: String::clone,
    };
    const LIMIT: Var<Option<String>> = Var {
        name: "KSIT_T_LIMIT",
        default: "64Mi",
        help: "",
        empty: Empty::Value,
        parse: optional_text,
        show: show_optional,
    };

    fn reader(pairs: &[(&str, &str)]) -> Reader {
        Reader::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn unset_and_blank_mean_the_default_unless_empty_is_a_value() {
        let mut r = reader(&[("KSIT_T_WORD", " "), ("KSIT_T_LIMIT", "")]);
        assert!(!r.read(&WORD).expect("blank is the default"));
        assert_eq!(r.read(&LIMIT).expect("empty is none"), None);
        let mut r = reader(&[("KSIT_T_WORD", " true ")]);
        assert!(r.read(&WORD).expect("trimmed"));
        assert_eq!(r.read(&LIMIT).expect("default").as_deref(), Some("64Mi"));
        assert_eq!(
            r.effective().to_string(),
            "KSIT_T_WORD=true\nKSIT_T_LIMIT=64Mi"
        );
    }

    #[test]
    fn errors_name_the_variable_in_one_line() {
        let err = reader(&[("KSIT_T_WORD", "yes")])
            .read(&WORD)
            .expect_err("not a word");
        assert_eq!(
            err.to_string(),
            r#"KSIT_T_WORD="yes" is invalid: `true` or `false`"#
        );
        for pairs in [&[][..], &[("KSIT_T_REQUIRED", " ")]] {
            let err = reader(pairs).read(&REQUIRED).expect_err("required");
            assert_eq!(
                err.to_string(),
                "KSIT_T_REQUIRED is not set: expected a path"
            );
            assert_eq!(err.var(), "KSIT_T_REQUIRED");
        }
    }

    #[test]
    fn errors_mask_credentials_in_urls() {
        let err = ConfigError::invalid(
            "KSIT_T_URL",
            "http://u:secret@h/x y",
            "one URL; `http://u:secret@h/x y` is not",
        );
        assert_eq!(
            err.to_string(),
            r#"KSIT_T_URL="http://***@h/x y" is invalid: one URL; `http://***@h/x y` is not"#
        );
    }

    #[test]
    fn durations_are_bounded() {
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(3600));
        assert_eq!(duration("1h", min, max), Ok(max));
        assert_eq!(duration("10ms", min, max), Ok(min));
        for bad in ["9ms", "61m", "18446744073709551615s", "soon", ""] {
            let e = duration(bad, min, max).expect_err(bad);
            assert_eq!(
                e,
                "a duration from 10ms to 1h such as `10s`, `500ms` or `1m`"
            );
        }
    }

    #[test]
    fn set_means_a_value_of_its_own() {
        let r = reader(&[("KSIT_T_WORD", " "), ("KSIT_T_LIMIT", "")]);
        assert!(!r.is_set(&WORD), "blank is the default");
        assert!(r.is_set(&LIMIT), "empty is a value");
        assert!(!r.is_set(&REQUIRED), "unset");
    }

    #[test]
    fn a_value_that_is_not_utf8_is_an_error_only_when_it_is_ours() {
        let bad = || OsString::from_vec(vec![b'a', 0xff]);
        let ours: &[&[Doc]] = &[&[WORD.doc()]];
        let vars = vec![
            (OsString::from("HOME"), OsString::from("/root")),
            (OsString::from("LESSOPEN"), bad()),
            (bad(), OsString::from("x")),
        ];
        assert_eq!(
            text_vars(vars.clone(), ours).expect("nothing of ours is broken"),
            [("HOME".to_string(), "/root".to_string())]
        );
        let mut vars = vars;
        vars.push((OsString::from("KSIT_T_WORD"), bad()));
        let err = text_vars(vars, ours).expect_err("ours is not text");
        assert_eq!(
            err.to_string(),
            "KSIT_T_WORD=\"a\u{FFFD}\" is invalid: UTF-8 text"
        );
    }

    #[test]
    fn unknown_ksit_variables_warn_across_tables() {
        let vars: Vec<(String, String)> =
            [("KSIT_T_WORD", "1"), ("KSIT_T_WROD", "1"), ("HOME", "/")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let warnings = unknown_variables(&vars, &[&[], &[WORD.doc()]]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("KSIT_T_WROD"));
    }

    /// What the kubelet gives a container for the Service ksit-monitor (seen in the kind
    /// suite: seven warnings at every start) is not a typo.
    #[test]
    fn the_kubelets_service_links_are_not_unknown_variables() {
        let links = [
            "KSIT_MONITOR_SERVICE_HOST",
            "KSIT_MONITOR_SERVICE_PORT",
            "KSIT_MONITOR_SERVICE_PORT_METRICS",
            "KSIT_MONITOR_PORT",
            "KSIT_MONITOR_PORT_8080_TCP",
            "KSIT_MONITOR_PORT_8080_TCP_PROTO",
            "KSIT_MONITOR_PORT_8080_TCP_PORT",
            "KSIT_MONITOR_PORT_8080_TCP_ADDR",
        ];
        let typos = [
            "KSIT_LISTEN_PORT",
            "KSIT_PORTS",
            "KSIT_PORT_X_TCP",
            "KSIT_X_PORT_80_TCP_HOST",
        ];
        let vars: Vec<(String, String)> = links
            .iter()
            .chain(&typos)
            .map(|k| (k.to_string(), "1".to_string()))
            .collect();
        let warnings = unknown_variables(&vars, &[&[]]);
        assert_eq!(warnings.len(), typos.len() - 1, "{warnings:?}");
        for typo in ["KSIT_PORTS", "KSIT_PORT_X_TCP", "KSIT_X_PORT_80_TCP_HOST"] {
            assert!(
                warnings.iter().any(|w| w.contains(typo)),
                "{typo}: {warnings:?}"
            );
        }
    }
}
