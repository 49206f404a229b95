//! The gateway's Prometheus metrics: one [`Metrics`] over one registry, served at `/metrics`.
//!
//! Labels are bounded: route names come from the config, HTTP and JSON-RPC methods from
//! fixed lists (anything else is `other`), statuses are classes (`2xx`). No principal, token
//! or session id is ever a label. The process's own CPU, memory and file descriptors are
//! exported as the standard `process_*` metrics.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// The standard `process_*` metrics, kept apart from the prefix of ours.
    process: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    open_streams: IntGaugeVec,
    upstream_errors: IntCounterVec,
    sign_ins: IntCounterVec,
    refreshes: IntCounterVec,
    body_bytes: IntCounterVec,
    token_expiry: IntGaugeVec,
    limited: IntCounterVec,
    refreshers: IntGauge,
    reloads: IntCounterVec,
    bridge_sessions: IntGauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let registry = Registry::new_custom(Some("mcp_gateway".into()), None)
            .expect("the metric prefix is a valid name");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Proxied requests by route, HTTP method, JSON-RPC method and status class",
            ),
            &["route", "method", "rpc_method", "status"],
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
        let body_bytes = IntCounterVec::new(
            Opts::new(
                "body_bytes_total",
                "Body bytes of proxied requests (in, from clients) and responses (out)",
            ),
            &["route", "direction"],
        )
        .expect("static metric definition");
        let token_expiry = IntGaugeVec::new(
            Opts::new(
                "token_expiry_seconds",
                "Seconds until the route's access token expires (negative once expired)",
            ),
            &["route"],
        )
        .expect("static metric definition");
        let limited = IntCounterVec::new(
            Opts::new(
                "limited_requests_total",
                "Requests refused by a limit, by route (or - for the gateway's own pages) and limit",
            ),
            &["route", "limit"],
        )
        .expect("static metric definition");
        let refreshers = IntGauge::new(
            "token_refreshers",
            "Token refresher tasks running: one per OAuth route in force",
        )
        .expect("static metric definition");
        let reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads by outcome (ok, invalid)",
            ),
            &["outcome"],
        )
        .expect("static metric definition");
        let bridge_sessions = IntGauge::new(
            "bridge_sessions",
            "Client sessions bridged from one MCP transport to the other",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(open_streams.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(sign_ins.clone()),
            Box::new(refreshes.clone()),
            Box::new(body_bytes.clone()),
            Box::new(token_expiry.clone()),
            Box::new(limited.clone()),
            Box::new(refreshers.clone()),
            Box::new(reloads.clone()),
            Box::new(bridge_sessions.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Self {
            registry,
            process: Registry::new(),
            requests,
            duration,
            open_streams,
            upstream_errors,
            sign_ins,
            refreshes,
            body_bytes,
            token_expiry,
            limited,
            refreshers,
            reloads,
            bridge_sessions,
        }
        .with_process_metrics()
    }

    /// The process's CPU, memory and file descriptors (`process_*`, unprefixed, as
    /// Prometheus conventions have them).
    fn with_process_metrics(self) -> Self {
        #[cfg(target_os = "linux")]
        {
            let collector = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(error) = self.process.register(Box::new(collector)) {
                tracing::debug!(%error, "process metrics unavailable");
            }
        }
        self
    }

    /// Counts a request refused by `limit` (`body_size`, `rate`, `streams`).
    pub(crate) fn limited(&self, route: &str, limit: &str) {
        self.limited.with_label_values(&[route, limit]).inc();
    }

    /// Sets the seconds left on a route's access token; `None` removes the series.
    pub(crate) fn token_expiry(&self, route: &str, seconds: Option<i64>) {
        match seconds {
            Some(seconds) => self.token_expiry.with_label_values(&[route]).set(seconds),
            None => {
                let _ = self.token_expiry.remove_label_values(&[route]);
            }
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

    /// Records one finished request to a route: `rpc_method` is the JSON-RPC method its
    /// body named (`none` without one), `bytes` its body bytes in and out.
    pub(crate) fn request_done(
        &self,
        route: &str,
        method: &http::Method,
        rpc_method: &str,
        status: u16,
        seconds: f64,
        bytes: (usize, usize),
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
            .with_label_values(&[route, method, rpc_method, class])
            .inc();
        self.duration.with_label_values(&[route]).observe(seconds);
        let (read, sent) = bytes;
        if read > 0 {
            self.body_bytes
                .with_label_values(&[route, "in"])
                .inc_by(read as u64);
        }
        if sent > 0 {
            self.body_bytes
                .with_label_values(&[route, "out"])
                .inc_by(sent as u64);
        }
    }

    pub(crate) fn upstream_error(&self, route: &str, kind: &str) {
        self.upstream_errors.with_label_values(&[route, kind]).inc();
    }

    /// Counts a running refresher task until the returned guard is dropped.
    pub(crate) fn refresher_running(&self) -> CountGuard {
        self.refreshers.inc();
        CountGuard(self.refreshers.clone())
    }

    /// Sets the number of bridge sessions open (at scrape time).
    pub(crate) fn bridge_sessions(&self, open: usize) {
        self.bridge_sessions
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts a reload: `ok` or `invalid`.
    pub(crate) fn reload(&self, outcome: &str) {
        self.reloads.with_label_values(&[outcome]).inc();
    }

    /// Counts an open stream until the returned guard is dropped.
    pub(crate) fn stream_opened(&self, route: &str) -> CountGuard {
        let gauge = self.open_streams.with_label_values(&[route]);
        gauge.inc();
        CountGuard(gauge)
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail on I/O, and every family is well formed.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Keeps something counted in a gauge (an open stream, a running task) while it lives.
#[derive(Debug)]
pub(crate) struct CountGuard(prometheus::IntGauge);

impl Drop for CountGuard {
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
