//! ksit-exporter: a Prometheus sidecar for KubeStellar Integration Toolkit components.
//!
//! `cmd` holds the commands (`serve`, `inject`, `webhook`, `certs`), each over the shared parts:
//! `env` (the variable tables), `telemetry` (logging, runtime, signals) and `server` (HTTP).
//! `config` is the exporter's variables. `metrics` is the one registry and its exposition cache;
//! each collector declares the families it fills: the local ones (`health`, `process`,
//! `upstream`) run in `collector`'s loop, the Kubernetes ones (`kube::*`) through `kube::watch`.
//! `exporter` wires them into one registry. `inject` decides and builds the sidecar; `webhook`
//! answers admission requests with it. docs/architecture.md has the whole map.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cmd;
pub mod collector;
pub mod config;
pub mod env;
pub mod exporter;
pub mod fetch;
pub mod health;
pub mod inject;
pub mod kube;
pub mod metrics;
pub mod process;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod webhook;
