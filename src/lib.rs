//! ksit-exporter: a Prometheus sidecar for KubeStellar Integration Toolkit components.
//!
//! `config` reads the environment. `metrics` is the one registry and its exposition cache; each
//! collector declares the families it fills: the local ones (`health`, `process`, `upstream`) run
//! in `collector`'s loop, the Kubernetes ones (`kube::*`) through `kube::watch`. `exporter` wires
//! them into one registry; `server` serves it. `inject` is the pure injector; `webhook` answers
//! admission reviews with it. docs/architecture.md has the whole map.
#![forbid(unsafe_code)]

pub mod collector;
pub mod config;
pub mod exporter;
pub mod fetch;
pub mod health;
pub mod inject;
pub mod kube;
pub mod metrics;
pub mod process;
pub mod runtime;
pub mod server;
pub mod upstream;
pub mod webhook;
