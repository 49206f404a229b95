//! The gateway's Prometheus metrics: one [`Metrics`] over one registry, served at `/metrics`.
//!
//! Labels are bounded: route names come from the config, methods from a fixed list, statuses
//! are classes (`2xx`). No principal, token or session id is ever a label.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    open_streams: IntGaugeVec,
    upstream_errors: IntCounterVec,
    sign_ins: IntCounterVec,
    refreshes: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new_custom(Some("mcp_gateway".into()), None)
            .expect("the metric prefix is a valid name");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Proxied requests by route, HTTP method and status class",
            ),
            &["route", "method", "status"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request to the end of the response, by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("static metric definition");
        let open_streams = IntGaugeVec::new(
            Opts::new(
                "open_sse_streams",
                "Event streams currently relayed, by route",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Requests that failed reaching the upstream, by route and kind",
            ),
            &["route", "kind"],
        )
        .expect("static metric definition");
        let sign_ins = IntCounterVec::new(
            Opts::new(
                "sign_ins_total",
                "Sign-ins by route and outcome (started, completed, failed)",
            ),
            &["route", "outcome"],
        )
        .expect("static metric definition");
        let refreshes = IntCounterVec::new(
            Opts::new(
                "token_refreshes_total",
                "Token refreshes by route and outcome",
            ),
            &["route", "outcome"],
        )
        .expect("static metric definition");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(open_streams.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(sign_ins.clone()),
            Box::new(refreshes.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Self {
            registry,
            requests,
            duration,
            open_streams,
            upstream_errors,
            sign_ins,
            refreshes,
        }
    }

    /// Counts a sign-in step: `started`, `completed` or `failed`.
    pub(crate) fn sign_in(&self, route: &str, outcome: &str) {
        self.sign_ins.with_label_values(&[route, outcome]).inc();
    }

    /// Counts a token refresh: `ok`, `invalid_grant` or `error`.
    pub(crate) fn refresh(&self, route: &str, outcome: &str) {
        self.refreshes.with_label_values(&[route, outcome]).inc();
    }

    /// Records one finished request to a route.
    pub(crate) fn request_done(
        &self,
        route: &str,
        method: &http::Method,
        status: u16,
        seconds: f64,
    ) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        let class = match status {
            100..=599 => ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(status / 100 - 1)],
            _ => "none",
        };
        self.requests
            .with_label_values(&[route, method, class])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
    }

    pub(crate) fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[route, kind]).inc();
    }

    /// Counts an open stream until the returned guard is dropped.
    pub(crate) fn stream_opened(&self, route: &str) -> StreamGuard {
        let gauge = self.open_streams.with_label_values(&[route]);
        gauge.inc();
        StreamGuard(gauge)
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O, and every family is well formed.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Keeps a stream counted in `open_sse_streams` while it lives.
#[derive(Debug)]
pub(crate) struct StreamGuard(prometheus::IntGauge);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_gauge_follows_guards() {
        let metrics = Metrics::new();
        let guard = metrics.stream_opened("jira");
        assert!(
            metrics
                .render()
                .contains("mcp_gateway_open_sse_streams{route=\"jira\"} 1")
        );
        drop(guard);
        assert!(
            metrics
                .render()
                .contains("mcp_gateway_open_sse_streams{route=\"jira\"} 0")
        );
    }
}
