//! Prometheus metrics: an explicit registry in the app state (no global recorder), rendered at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of device requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
    pub outcome: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub agents_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub device_requests: Family<OpLabels, Counter<u64, AtomicU64>>,
    pub sync_seconds: Histogram,
    pub punches_received: Counter<u64, AtomicU64>,
    pub punches_stored: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("essl");
        let agents_connected = Gauge::default();
        registry.register("agents_connected", "Agents connected to this instance", agents_connected.clone());
        let device_requests = Family::<OpLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "device_requests",
            "Device requests routed to agents, by op and outcome",
            device_requests.clone(),
        );
        let sync_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register("sync_duration_seconds", "Duration of attendance syncs", sync_seconds.clone());
        let punches_received = Counter::default();
        registry.register("punches_received", "Attendance records received from agents", punches_received.clone());
        let punches_stored = Counter::default();
        registry.register("punches_stored", "Attendance records new to the database", punches_stored.clone());
        Metrics { registry, agents_connected, device_requests, sync_seconds, punches_received, punches_stored }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}
