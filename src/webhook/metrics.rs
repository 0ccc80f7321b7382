//! The webhook's own metric families, in a registry of their own and served on the plain-HTTP
//! metrics port by [`crate::server`].

use crate::labels;
use crate::metrics::{Counters, Family, Gauges, Histograms, Registry};

labels! {
    pub struct Admission { decision, reason }
}

labels! {
    struct Build { version }
}

pub const ADMISSIONS: Family = Family {
    name: "ksit_webhook_admissions_total",
    help: "Admission requests answered, by decision (injected, skipped, error) and reason.",
};
pub const ADMISSION_DURATION: Family = Family {
    name: "ksit_webhook_admission_duration_seconds",
    help: "Time from a request's headers to its answer, body read included.",
};
pub const CERTIFICATE_EXPIRY: Family = Family {
    name: "ksit_webhook_certificate_expiry_timestamp_seconds",
    help: "notAfter of the serving certificate, Unix seconds; alert well before it passes.",
};
pub const CERTIFICATE_RELOADS: Family = Family {
    name: "ksit_webhook_certificate_reloads_total",
    help: "Times a changed certificate and key were loaded without a restart.",
};
pub const TLS_HANDSHAKE_FAILURES: Family = Family {
    name: "ksit_webhook_tls_handshake_failures_total",
    help: "TLS handshakes that failed (a client that does not trust the CA, plain HTTP, a scan).",
};
pub const BUILD_INFO: Family = Family {
    name: "ksit_webhook_build_info",
    help: "The running build; always 1.",
};

/// Injection takes tens of microseconds; the upper buckets are for a starved process, well
/// before the API server's timeoutSeconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The figures the status page shows, read from the families.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub certificate_expiry: Option<f64>,
    pub admissions: std::collections::BTreeMap<String, u64>,
    pub certificate_reloads: u64,
    pub tls_handshake_failures: u64,
}

#[derive(Clone)]
pub struct WebhookMetrics {
    admissions: Counters<Admission>,
    duration: Histograms<()>,
    certificate_expiry: Gauges<()>,
    certificate_reloads: Counters<()>,
    tls_handshake_failures: Counters<()>,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> Self {
        registry.info(
            BUILD_INFO,
            &Build {
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
        );
        Self {
            admissions: registry.counters(ADMISSIONS),
            duration: registry.histograms(ADMISSION_DURATION, DURATION_BUCKETS.to_vec()),
            certificate_expiry: registry.gauges(CERTIFICATE_EXPIRY),
            certificate_reloads: registry.counters(CERTIFICATE_RELOADS),
            tls_handshake_failures: registry.counters(TLS_HANDSHAKE_FAILURES),
        }
    }

    /// One admission request answered, `seconds` after its headers arrived.
    pub fn answered(&self, decision: &str, reason: &str, seconds: f64) {
        let admission = Admission {
            decision: decision.to_string(),
            reason: reason.to_string(),
        };
        self.admissions.inc(&admission);
        self.duration.observe(&(), seconds);
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc(&());
    }

    /// What the status page shows: the certificate's notAfter (Unix seconds, once loaded),
    /// admissions per decision, certificate reloads and failed handshakes.
    pub fn summary(&self) -> Summary {
        Summary {
            certificate_expiry: self.certificate_expiry.get(&()).filter(|t| *t > 0.0),
            admissions: self.admissions.sum_by("decision"),
            certificate_reloads: self.certificate_reloads.get(&()),
            tls_handshake_failures: self.tls_handshake_failures.get(&()),
        }
    }

    /// The serving certificate in use: its notAfter, and whether it replaced another.
    pub fn certificate(&self, not_after: i64, reloaded: bool) {
        self.certificate_expiry.set(&(), not_after as f64);
        if reloaded {
            self.certificate_reloads.inc(&());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_served() {
        let r = Registry::new();
        let m = WebhookMetrics::register(&r);
        m.answered("skipped", "not_opted_in", 0.0003);
        m.certificate(1_900_000_000, true);
        let text = String::from_utf8(r.snapshot().text().to_vec()).expect("utf8");
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for line in [
            "ksit_webhook_admissions_total{decision=\"skipped\",reason=\"not_opted_in\"} 1",
            "ksit_webhook_certificate_expiry_timestamp_seconds 1900000000",
            "ksit_webhook_certificate_reloads_total 1",
            "ksit_webhook_admission_duration_seconds_bucket{le=\"0.00025\"} 0",
            "ksit_webhook_admission_duration_seconds_bucket{le=\"0.0005\"} 1",
            "ksit_webhook_admission_duration_seconds_count 1",
        ] {
            assert!(lines.contains(&line), "missing {line:?} in\n{text}");
        }
    }
}
