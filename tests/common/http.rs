//! A plain-HTTP client for loopback endpoints (the exporter, the webhook's metrics, the stand-in
//! manager, Prometheus): one request per connection, bodies as sent (gzip is not decoded).

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Each exchange, connection included, must finish within this.
const TIMEOUT: Duration = Duration::from_secs(5);

pub struct Reply {
    pub status: u16,
    /// Names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }
}

/// `method path` against `addr` (`host:port`) with `headers`; an error if the exchange fails
/// or takes longer than 5 s.
pub async fn try_request(
    addr: impl Display,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    let addr = addr.to_string();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(connection);
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &addr);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("building the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok::<_, String>(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| format!("{method} http://{addr}{path}: {e}"))
}

/// As [`try_request`], panicking on failure.
pub async fn request(
    addr: impl Display,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    try_request(addr, method, path, headers)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `GET path`, panicking on failure.
pub async fn get(addr: impl Display, path: &str) -> Reply {
    request(addr, "GET", path, &[]).await
}
