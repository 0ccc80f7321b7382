//! The webhook's own metric families, in a registry of their own and served on the plain-HTTP
//! metrics port by [`crate::server`].

use std::io::Write;

use bytes::Bytes;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

use crate::server::Exposition;

pub struct WebhookMetrics {
    registry: Registry,
    pub admissions: IntCounterVec,
    pub duration: Histogram,
    pub certificate_expiry: Gauge,
    pub certificate_reloads: IntCounter,
}

impl WebhookMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            Opts::new(
                "ksit_webhook_admissions_total",
                "Admission requests answered, by decision (injected, skipped, error) and reason.",
            ),
            &["decision", "reason"],
        )
        .expect("static metric");
        // Injection takes tens of microseconds; the upper buckets are for a starved process,
        // well before the API server's timeoutSeconds.
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "ksit_webhook_admission_duration_seconds",
                "Time from a request's headers to its answer, body read included.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("static metric");
        let certificate_expiry = Gauge::new(
            "ksit_webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate, Unix seconds; alert well before it passes.",
        )
        .expect("static metric");
        let certificate_reloads = IntCounter::new(
            "ksit_webhook_certificate_reloads_total",
            "Times a changed certificate and key were loaded without a restart.",
        )
        .expect("static metric");
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("ksit_webhook_build_info", "The running build; always 1."),
            &["version"],
        )
        .expect("static metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for c in [
            Box::new(admissions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(certificate_expiry.clone()),
            Box::new(certificate_reloads.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(c)
                .expect("each family is registered once");
        }
        Self {
            registry,
            admissions,
            duration,
            certificate_expiry,
            certificate_reloads,
        }
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Exposition for WebhookMetrics {
    // Encoded per scrape: a handful of families scraped every 30s or so need no cache.
    fn scrape(&self, gzip: bool) -> Bytes {
        let mut text = Vec::with_capacity(4096);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("the text encoder writes into a Vec and our families are well formed");
        if !gzip {
            return Bytes::from(text);
        }
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&text)
            .and_then(|_| enc.finish())
            .map(Bytes::from)
            .expect("gzip into a Vec cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_served_and_gzip_round_trips() {
        let m = WebhookMetrics::new();
        m.admissions
            .with_label_values(&["skipped", "not_opted_in"])
            .inc();
        m.certificate_expiry.set(1.9e9);
        let text = String::from_utf8(m.scrape(false).to_vec()).unwrap();
        assert!(text.contains(
            "ksit_webhook_admissions_total{decision=\"skipped\",reason=\"not_opted_in\"} 1"
        ));
        assert!(text.contains("ksit_webhook_certificate_expiry_timestamp_seconds 1900000000"));
        assert!(text.contains("ksit_webhook_admission_duration_seconds_bucket"));
        let mut plain = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&m.scrape(true)[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);
    }
}
