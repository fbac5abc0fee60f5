//! Prometheus metrics: an explicit registry in the app state (no global recorder), rendered at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};

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

/// Labels of per-agent series: the agent's id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
}

/// What `/metrics` shows of one connected agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentFigures {
    pub agent_id: uuid::Uuid,
    pub outbox: Option<essl_wire::OutboxFill>,
}

type AgentGauge = Family<AgentLabels, Gauge<i64, std::sync::atomic::AtomicI64>>;

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Held while the per-agent series are rebuilt and rendered, so two scrapes do not interleave.
    render_lock: Mutex<()>,
    pub agents_connected: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub agent_outbox_bytes: AgentGauge,
    pub agent_outbox_limit_bytes: AgentGauge,
    pub agent_outbox_pending_records: AgentGauge,
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
        let agent_outbox_bytes = AgentGauge::default();
        registry.register(
            "agent_outbox_bytes",
            "Bytes a connected agent's outbox uses (records not yet acknowledged by the server), from its latest heartbeat",
            agent_outbox_bytes.clone(),
        );
        let agent_outbox_limit_bytes = AgentGauge::default();
        registry.register(
            "agent_outbox_limit_bytes",
            "The bound of a connected agent's outbox: when it is reached, the agent refuses new terminal reads",
            agent_outbox_limit_bytes.clone(),
        );
        let agent_outbox_pending_records = AgentGauge::default();
        registry.register(
            "agent_outbox_pending_records",
            "Records queued in a connected agent's outbox, not yet acknowledged by the server",
            agent_outbox_pending_records.clone(),
        );
        Metrics {
            registry,
            render_lock: Mutex::new(()),
            agents_connected,
            agent_outbox_bytes,
            agent_outbox_limit_bytes,
            agent_outbox_pending_records,
            device_requests,
            sync_seconds,
            punches_received,
            punches_stored,
        }
    }
}

impl Metrics {
    /// The text exposition format, with the per-agent series of exactly the agents given (the connected ones: an
    /// agent that went away leaves no stale series behind).
    pub fn render_with_agents(&self, agents: &[AgentFigures]) -> String {
        let _rendering = self.render_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.agents_connected.set(i64::try_from(agents.len()).unwrap_or(i64::MAX));
        for family in [&self.agent_outbox_bytes, &self.agent_outbox_limit_bytes, &self.agent_outbox_pending_records] {
            family.clear();
        }
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for a in agents {
            let Some(fill) = a.outbox else { continue };
            let labels = AgentLabels { agent: a.agent_id.to_string() };
            self.agent_outbox_bytes.get_or_create(&labels).set(gauge(fill.bytes));
            self.agent_outbox_limit_bytes.get_or_create(&labels).set(gauge(fill.limit_bytes));
            self.agent_outbox_pending_records.get_or_create(&labels).set(gauge(fill.pending_records));
        }
        self.render()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_agent_outbox_series_follow_the_connected_agents() {
        let m = Metrics::default();
        let a = uuid::Uuid::new_v4();
        let fill = essl_wire::OutboxFill { bytes: 900, limit_bytes: 1000, pending_records: 12, pending_batches: 1 };
        let text = m.render_with_agents(&[AgentFigures { agent_id: a, outbox: Some(fill) }]);
        assert!(text.contains(&format!("essl_agent_outbox_bytes{{agent=\"{a}\"}} 900")), "{text}");
        assert!(text.contains(&format!("essl_agent_outbox_limit_bytes{{agent=\"{a}\"}} 1000")), "{text}");
        assert!(text.contains(&format!("essl_agent_outbox_pending_records{{agent=\"{a}\"}} 12")), "{text}");
        assert!(text.contains("essl_agents_connected 1"), "{text}");
        let text = m.render_with_agents(&[]);
        assert!(!text.contains(&a.to_string()), "a disconnected agent leaves no series: {text}");
    }
}
