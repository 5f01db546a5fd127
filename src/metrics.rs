//! Prometheus metrics, registered in an explicit registry (never the global one).
//!
//! Names are constants; labels come from closed sets: identities, access points and listeners are
//! the configured ones, operations the [`crate::s3::Operation`] names, status the HTTP status code.
//! Documented in docs/METRICS.md.

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const REQUESTS_TOTAL: &str = "apgate_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "apgate_request_duration_seconds";
pub const IDENTITY_REQUEST_DURATION_SECONDS: &str = "apgate_identity_request_duration_seconds";
pub const UPSTREAM_DURATION_SECONDS: &str = "apgate_upstream_response_duration_seconds";
pub const RECEIVED_BYTES_TOTAL: &str = "apgate_received_bytes_total";
pub const SENT_BYTES_TOTAL: &str = "apgate_sent_bytes_total";
pub const AUTH_FAILURES_TOTAL: &str = "apgate_auth_failures_total";
pub const UPSTREAM_ERRORS_TOTAL: &str = "apgate_upstream_errors_total";
pub const UPSTREAM_RETRIES_TOTAL: &str = "apgate_upstream_retries_total";
pub const INFLIGHT_REQUESTS: &str = "apgate_inflight_requests";
pub const BUILD_INFO: &str = "apgate_build_info";
pub const CONFIG_RELOADS_TOTAL: &str = "apgate_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "apgate_config_last_reload_success_timestamp_seconds";
pub const UPSTREAM_RESPONSES_TOTAL: &str = "apgate_upstream_responses_total";
pub const CREDENTIAL_REFRESHES_TOTAL: &str = "apgate_credential_refreshes_total";
pub const CREDENTIAL_REFRESH_DURATION_SECONDS: &str = "apgate_credential_refresh_duration_seconds";
pub const CLIENT_CONNECTIONS: &str = "apgate_client_connections";
pub const CLIENT_CONNECTIONS_CLOSED_TOTAL: &str = "apgate_client_connections_closed_total";
pub const CLIENT_CONNECTIONS_PARKED: &str = "apgate_client_connections_parked";
pub const DISCARDED_BODIES_TOTAL: &str = "apgate_discarded_bodies_total";
pub const ACCESS_LOG_LINES_DROPPED_TOTAL: &str = "apgate_access_log_lines_dropped_total";

/// The label used when a request never got an identity or an access point.
pub const NONE: &str = "-";

/// All of apgate's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub identity_request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub received_bytes: IntCounterVec,
    pub sent_bytes: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub upstream_errors: IntCounterVec,
    pub upstream_retries: IntCounterVec,
    pub inflight: IntGauge,
    pub credential_refreshes: IntCounterVec,
    pub credential_refresh_duration: HistogramVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: prometheus::Gauge,
    pub upstream_responses: IntCounterVec,
    pub client_connections: IntGaugeVec,
    pub client_connections_closed: IntCounterVec,
    pub client_connections_parked: IntGaugeVec,
    pub discarded_bodies: IntCounterVec,
}

impl Metrics {
    /// A listener's connection series, at 0 until something happens (called when it is served).
    pub fn start_listener(&self, listener: &str) {
        self.client_connections.with_label_values(&[listener]);
        self.client_connections_parked.with_label_values(&[listener]);
        for reason in crate::connection::CloseReason::ALL {
            self.client_connections_closed
                .with_label_values(&[listener, reason.as_str()]);
        }
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let latency = exponential_buckets(0.001, 2.0, 16)?;
        let requests = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests answered, by caller identity, access point, S3 operation and HTTP status.",
            ),
            &["identity", "access_point", "operation", "status"],
        )?;
        // By identity alone (identities are the configuration's names, plus "-"): a separate family,
        // so the identity does not multiply the access point x operation series.
        let identity_request_duration = HistogramVec::new(
            HistogramOpts::new(
                IDENTITY_REQUEST_DURATION_SECONDS,
                "Time from request head to the end of the response body, by caller identity.",
            )
            .buckets(latency.clone()),
            &["identity"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION_SECONDS,
                "Time from request head to the end of the response body.",
            )
            .buckets(latency.clone()),
            &["access_point", "operation"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                UPSTREAM_DURATION_SECONDS,
                "Time from sending the upstream request to its response head.",
            )
            .buckets(latency),
            &["access_point", "operation"],
        )?;
        let received_bytes = IntCounterVec::new(
            Opts::new(
                RECEIVED_BYTES_TOTAL,
                "Request body bytes received from clients and streamed upstream.",
            ),
            &["identity", "access_point"],
        )?;
        let sent_bytes = IntCounterVec::new(
            Opts::new(
                SENT_BYTES_TOTAL,
                "Response body bytes streamed from the upstream to clients.",
            ),
            &["identity", "access_point"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                AUTH_FAILURES_TOTAL,
                "Requests refused before routing, by listener and S3 error code.",
            ),
            &["listener", "code"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                UPSTREAM_ERRORS_TOTAL,
                "Upstream exchanges that failed without an HTTP response, by kind.",
            ),
            &["access_point", "kind"],
        )?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                UPSTREAM_RETRIES_TOTAL,
                "Upstream attempts tried again, by access point and reason (connect_error, status_500, status_503, timeout).",
            ),
            &["access_point", "reason"],
        )?;
        let credential_refreshes = IntCounterVec::new(
            Opts::new(
                CREDENTIAL_REFRESHES_TOTAL,
                "Credential fetches (start-up, background refresh, or on demand), by principal and result.",
            ),
            &["principal", "result"],
        )?;
        let credential_refresh_duration = HistogramVec::new(
            HistogramOpts::new(
                CREDENTIAL_REFRESH_DURATION_SECONDS,
                "How long a credential fetch took (STS, the metadata or container endpoint).",
            )
            .buckets(exponential_buckets(0.001, 2.0, 16)?),
            &["principal"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                CONFIG_RELOADS_TOTAL,
                "Configuration reloads (SIGHUP or file change), by result.",
            ),
            &["result"],
        )?;
        let config_last_reload_success = prometheus::Gauge::new(
            CONFIG_LAST_RELOAD_SUCCESS,
            "Unix time the running configuration was loaded (at start or by the last successful reload).",
        )?;
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                UPSTREAM_RESPONSES_TOTAL,
                "Upstream responses by access point, HTTP status and S3 error code (- for successes).",
            ),
            &["access_point", "status", "code"],
        )?;
        let inflight = IntGauge::new(INFLIGHT_REQUESTS, "Requests being handled now.")?;
        let client_connections = IntGaugeVec::new(
            Opts::new(CLIENT_CONNECTIONS, "Client connections open now, by listener."),
            &["listener"],
        )?;
        let client_connections_parked = IntGaugeVec::new(
            Opts::new(
                CLIENT_CONNECTIONS_PARKED,
                "Open client connections idle between requests and parked (no HTTP state held), by listener.",
            ),
            &["listener"],
        )?;
        let client_connections_closed = IntCounterVec::new(
            Opts::new(
                CLIENT_CONNECTIONS_CLOSED_TOTAL,
                "Client connections apgate closed on its own, by listener and reason (listener_limit, source_limit, head_too_large, not_reading).",
            ),
            &["listener", "reason"],
        )?;
        let discarded_bodies = IntCounterVec::new(
            Opts::new(
                DISCARDED_BODIES_TOTAL,
                "Refused request bodies, by what apgate did with them (read: read and thrown away; closed: the connection closed instead).",
            ),
            &["outcome"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(BUILD_INFO, "Always 1; the version label says which apgate runs."),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        // Every series an alert or a rate() reads exists from the start, at 0, so the first event
        // is an increase (docs/METRICS.md).
        for outcome in ["read", "closed"] {
            discarded_bodies.with_label_values(&[outcome]);
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }

        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(crate::access_log::dropped_lines().clone()))?;
        registry.register(Box::new(identity_request_duration.clone()))?;
        // process_resident_memory_bytes, process_cpu_seconds_total, process_open_fds, ...
        #[cfg(target_os = "linux")]
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(received_bytes.clone()))?;
        registry.register(Box::new(sent_bytes.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(upstream_retries.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(credential_refreshes.clone()))?;
        registry.register(Box::new(credential_refresh_duration.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(config_last_reload_success.clone()))?;
        registry.register(Box::new(upstream_responses.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(client_connections_closed.clone()))?;
        registry.register(Box::new(client_connections_parked.clone()))?;
        registry.register(Box::new(discarded_bodies.clone()))?;
        Ok(Self {
            registry,
            requests,
            request_duration,
            identity_request_duration,
            upstream_duration,
            received_bytes,
            sent_bytes,
            auth_failures,
            upstream_errors,
            upstream_retries,
            inflight,
            credential_refreshes,
            credential_refresh_duration,
            config_reloads,
            config_last_reload_success,
            upstream_responses,
            client_connections,
            client_connections_closed,
            client_connections_parked,
            discarded_bodies,
        })
    }

    /// Registers a further collector (one computed at scrape time).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_families_with_labels() {
        let m = Metrics::new().unwrap();
        m.requests
            .with_label_values(&["bob", "bob-ap", "PutObject", "200"])
            .inc();
        let text = m.render();
        assert!(text.contains("apgate_requests_total{access_point=\"bob-ap\",identity=\"bob\",operation=\"PutObject\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("apgate_build_info{version="));
        // The process collector (saturation panels), and series alerts need from the start.
        #[cfg(target_os = "linux")]
        for family in [
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        assert!(
            text.contains("apgate_config_reloads_total{result=\"failure\"} 0"),
            "{text}"
        );
    }
}
