//! ksit-exporter: a Prometheus sidecar for KubeStellar Integration Toolkit components.
//!
//! `config` reads the environment; `metrics` names every family; `health`, `process` and
//! `upstream` are the local collectors, run by `collector`; `server` serves what they left.
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
