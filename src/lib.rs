//! ksit-exporter: a Prometheus sidecar for KubeStellar Integration Toolkit components.
//!
//! `cmd` holds the commands (`serve`, `inject`, `webhook`, `certs`), each over the shared parts:
//! `env` (the variable tables), `telemetry` (logging, runtime, signals) and `server` (HTTP).
//! `config` is the exporter's variables; `metrics` names every family; `health`, `process` and
//! `upstream` are the local collectors, run by `collector`; `kube` watches the API; `inject`
//! decides and builds the sidecar; `webhook` answers admission requests with it.
#![forbid(unsafe_code)]

pub mod cmd;
pub mod collector;
pub mod config;
pub mod env;
pub mod fetch;
pub mod health;
pub mod inject;
pub mod kube;
pub mod metrics;
pub mod process;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod webhook;
