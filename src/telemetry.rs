//! What the long-running commands (`serve` and `webhook`) share around their servers: logging
//! (and its `KSIT_LOG_FORMAT` variable), the one-thread runtime and the stop signal; and what
//! keeps every command's output safe to ship: URL credentials masked ([`redact`],
//! [`redact_text`]) and outside text cut to a short escaped [`excerpt`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use hyper::Uri;

use tracing_subscriber::EnvFilter;

use crate::env::{self, Empty, Var};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

pub const LOG_FORMAT: Var<LogFormat> = Var {
    name: "KSIT_LOG_FORMAT",
    default: "text",
    help: "`text` or `json`; `RUST_LOG` filters (default `info`)",
    empty: Empty::Default,
    parse: |v| env::choose(v, LOG_FORMATS),
    show: |v| env::word_of(v, LOG_FORMATS),
};

/// Logs to stderr in `format`; `RUST_LOG` filters. Colour only on a terminal: `kubectl logs`
/// and log shippers would otherwise show the escape codes.
pub fn init_logging(format: LogFormat) {
    // kube-runtime's watcher warns on every retry of a failing watch; the exporter's own
    // collectors log each outage once, so the default keeps only its errors.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime::watcher=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs `main` on a one-thread runtime. One thread: the work is a few small requests at a time,
/// and each extra worker thread costs its stack beside every pod.
pub fn block_on(main: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("ksit-exporter: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT, when the server should drain and stop. SIGHUP, which would
/// otherwise kill the process without a drain, is logged and ignored: the configuration is read
/// once, at start. The handlers are installed by this call, not when the future is first
/// polled, so a signal that comes right after start already finds them.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received; draining");
                    return;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received; draining");
                    return;
                }
                _ = hup.recv() => tracing::info!(
                    "SIGHUP received and ignored; the configuration is read only at start, restart to change it"
                ),
            }
        }
    }
}

/// `uri` as it may be printed: with its user-info (`user:password@`) masked.
pub fn redact(uri: &Uri) -> Redacted<'_> {
    Redacted(uri)
}

/// A [`Uri`] that displays with its user-info masked, as `http://***@host/path`; it still parses
/// as a URL.
pub struct Redacted<'a>(&'a Uri);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = self.0;
        let host = uri.authority().and_then(|a| a.as_str().rsplit_once('@'));
        match (uri.scheme_str(), host) {
            (Some(scheme), Some((_, host))) => {
                write!(f, "{scheme}://***@{host}{}", uri.path())?;
                match uri.query() {
                    Some(query) => write!(f, "?{query}"),
                    None => Ok(()),
                }
            }
            _ => write!(f, "{uri}"),
        }
    }
}

/// `text` with the user-info of every `scheme://user:password@host` in it masked, for text that
/// may hold URLs but need not parse as one (a variable's value, an error message). Such text
/// may hold a password with `/` or `,` in it, so everything from `://` to the last `@` before a
/// space, a quote or the next `://` is masked: an `@` in a path masks more than the
/// credentials, never less.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    if !text.contains('@') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (head, tail) = rest.split_at(start + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || "\"'`<>".contains(c))
            .unwrap_or(tail.len());
        let end = tail[..end].find("://").unwrap_or(end);
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => {
                out.push_str(&tail[..end]);
                rest = &tail[end..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// At most `max_chars` characters of outside text (a body, a request's field) for a log line or
/// a message: control characters, quotes and backslashes escaped, invalid UTF-8 replaced, and a
/// note of the full size when cut.
pub fn excerpt(bytes: &[u8], max_chars: usize) -> String {
    // A character is at most 4 bytes: the first 4 * max_chars bytes hold the excerpt.
    let head = &bytes[..bytes.len().min(max_chars.saturating_mul(4))];
    let text = String::from_utf8_lossy(head);
    let mut chars = text.char_indices();
    let cut = chars.nth(max_chars).map(|(i, _)| i);
    let shown = &text[..cut.unwrap_or(text.len())];
    let mut out: String = shown.escape_debug().collect();
    if cut.is_some() || head.len() < bytes.len() {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_masked_wherever_a_url_appears() {
        let cases = [
            (
                "http://user:pass@127.0.0.1:8081/healthz",
                "http://***@127.0.0.1:8081/healthz",
            ),
            ("http://token@h", "http://***@h"),
            // A password that does not parse as one is masked all the same.
            ("http://u:pa/ss,w@h/", "http://***@h/"),
            ("http://u:p@w@h/", "http://***@h/"),
            (
                "a=http://u:p@h/x,b=http://k/y x \"http://w:r@z\"",
                "a=http://***@h/x,b=http://k/y x \"http://***@z\"",
            ),
            (
                "a=http://u:p@h/x,b=http://v:q@k/y",
                "a=http://***@h/x,b=http://***@k/y",
            ),
            // More than the credentials, never less.
            ("http://h:1/p?q=a@b", "http://***@b"),
            ("no url, mail@example.com", "no url, mail@example.com"),
            ("http://", "http://"),
        ];
        for (text, masked) in cases {
            assert_eq!(redact_text(text), masked, "{text}");
        }
        // A parsed URL is masked exactly: its user-info only.
        for (url, shown) in [
            (
                "http://u:secret@127.0.0.1:8082/metrics?a=b@c",
                "http://***@127.0.0.1:8082/metrics?a=b@c",
            ),
            ("http://u@h", "http://***@h/"),
            ("http://h:1/p?q=a@b", "http://h:1/p?q=a@b"),
        ] {
            let uri: Uri = url.parse().expect("valid");
            assert_eq!(redact(&uri).to_string(), shown);
            assert!(shown.parse::<Uri>().is_ok(), "still a URL");
        }
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt(b"ok", 10), "ok");
        assert_eq!(excerpt(b"a\nb\x1b[31m\"", 20), "a\\nb\\u{1b}[31m\\\"");
        assert_eq!(excerpt(b"abcdef", 3), "abc... (6 bytes)");
        assert_eq!(
            excerpt("\u{e9}t\u{e9}".as_bytes(), 2),
            "\u{e9}t... (5 bytes)"
        );
        assert_eq!(
            excerpt(&[b'x'; 100], 10),
            format!("{}... (100 bytes)", "x".repeat(10))
        );
        assert_eq!(excerpt(&[0xff, b'a'], 10), "\u{fffd}a");
    }
}

/// Lets a warning that may repeat many times a second (failed TLS handshakes from a port scan,
/// say) through at most once per `every`, and says how many it held back meanwhile; the full
/// count belongs in a metric.
pub struct Throttle {
    every: std::time::Duration,
    /// When a warning last went through, and how many were held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: std::time::Duration) -> Self {
        Self {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last one)` when this warning may be logged now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => Some(std::mem::replace(&mut *state, (Some(now), 0)).1),
        }
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn once_per_period_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(0));
        for s in 1..=5 {
            assert_eq!(t.allow_at(start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.allow_at(start + Duration::from_secs(60)), Some(5));
        assert_eq!(t.allow_at(start + Duration::from_secs(61)), None);
    }
}
