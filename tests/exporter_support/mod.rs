//! Starts the real exporter binary and reads it back over plain HTTP; shared by test crates.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

pub fn start(env: &[(&str, &str)]) -> Exporter {
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
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Keep draining stderr so the exporter never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut early = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("serving /metrics") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
                let addr = v["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("socket addr");
                let _ = tx.send(Ok(addr));
                sent = true;
            } else if !sent {
                early.push(line.clone());
            }
            if std::env::var_os("KSIT_TEST_VERBOSE").is_some() {
                eprintln!("exporter: {line}");
            }
        }
        if !sent {
            let _ = tx.send(Err(early.join("\n")));
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(addr)) => addr,
        Ok(Err(stderr)) => panic!(
            "the exporter exited before serving: {:?}\n{stderr}",
            child.wait()
        ),
        Err(e) => panic!("the exporter did not log its address within 10s: {e}"),
    };
    Exporter { child, addr }
}

pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf8 body")
    }
}

pub fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8(raw[..split].to_vec()).expect("ascii head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[])
}

/// Scrapes until `pred` holds on the body, or panics with the last body after 10 s.
pub fn wait_for(addr: SocketAddr, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = get(addr, "/metrics").text();
        if pred(&body) {
            return body;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; last /metrics:\n{body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn has_line(body: &str, line: &str) -> bool {
    body.lines().any(|l| l == line)
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
