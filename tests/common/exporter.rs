//! The real exporter binary, started on a free loopback port and read back over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::http::{self, Reply};
use super::poll::eventually;
use super::scrape::Scrape;

/// How long a wait on the exporter's /metrics lasts unless a test says otherwise; the control
/// plane and the tests share two cores.
pub const WAIT: Duration = Duration::from_secs(20);

/// The exporter, killed on drop.
pub struct Exporter {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ksit-exporter` with only `env` (and a loopback listen address, JSON logs) set, and
/// waits up to 10 s for the address it logs.
pub async fn start(env: &[(&str, &str)]) -> Exporter {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ksit-exporter"));
    cmd.env_clear()
        .env("KSIT_LISTEN_ADDR", "127.0.0.1:0")
        .env("KSIT_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the exporter binary starts");
    let line = logged_line(&mut child, "exporter", "serving /metrics").await;
    let addr = line["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no socket address in {line}"));
    Exporter { child, addr }
}

/// Drains `child`'s stderr (JSON log lines) on a thread, so it never blocks on a full pipe, and
/// returns the first line whose message contains `message`; panics with the lines before it if
/// the process exits first or 10 s pass. `KSIT_TEST_VERBOSE=1` echoes the log.
pub async fn logged_line(child: &mut Child, who: &str, message: &str) -> serde_json::Value {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (prefix, wanted) = (who.to_string(), message.to_string());
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut early = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if std::env::var_os("KSIT_TEST_VERBOSE").is_some() {
                eprintln!("{prefix}: {line}");
            }
            match tx.take() {
                Some(tx) if line.contains(&wanted) => {
                    let _ =
                        tx.send(serde_json::from_str(&line).map_err(|e| format!("{e}: {line}")));
                }
                Some(still_waiting) => {
                    tx = Some(still_waiting);
                    early.push(line);
                }
                None => {}
            }
        }
        if let Some(tx) = tx {
            let _ = tx.send(Err(format!("exited first; its log:\n{}", early.join("\n"))));
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(line))) => line,
        Ok(Ok(Err(why))) => panic!(
            "{who} did not log {message:?}: {why} ({:?})",
            child.try_wait()
        ),
        Ok(Err(_)) => panic!("{who}: the log reader stopped"),
        Err(_) => panic!("{who} did not log {message:?} within 10s"),
    }
}

impl Exporter {
    pub async fn get(&self, path: &str) -> Reply {
        http::get(self.addr, path).await
    }

    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        http::request(self.addr, method, path, headers).await
    }

    /// One scrape of /metrics, parsed.
    pub async fn scrape(&self) -> Scrape {
        let reply = self.get("/metrics").await;
        assert_eq!(reply.status, 200, "/metrics: {}", reply.text());
        Scrape::parse(&reply.text())
    }

    /// Scrapes until `ready` holds (up to [`WAIT`]); the failure shows the last scrape.
    pub async fn scrape_until(&self, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        self.scrape_within(WAIT, what, ready).await
    }

    /// As [`Exporter::scrape_until`] with a timeout of its own.
    pub async fn scrape_within(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&Scrape) -> bool,
    ) -> Scrape {
        eventually(timeout, what, || async {
            let s = self.scrape().await;
            if ready(&s) { Ok(s) } else { Err(s) }
        })
        .await
    }
}

/// `promtool check metrics` lints an exposition (naming, units, HELP, duplicates); it must say
/// nothing.
pub fn assert_promtool_clean(promtool: &std::path::Path, body: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool exits");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool says:\n{report}\n---\n{body}"
    );
}
