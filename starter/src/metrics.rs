//! What a starter tells Prometheus (`metrics_listen` in `[starter]`):
//! handshakes by the path their connection took and how they ended, how
//! long a handshake takes and how long until sshd runs in the job, sessions
//! open, and jobs running here.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Handshake {
    /// direct, reverse or relay.
    pub path: &'static str,
    /// accepted, the refusal's code (expired, replayed, job_not_here...),
    /// failed (the connection broke or spoke nonsense) or timed_out.
    pub outcome: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub handshakes: Family<Handshake, Counter>,
    pub handshake_seconds: Histogram,
    pub attach_seconds: Histogram,
    sessions_open: Gauge,
    jobs_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("stj_starter")),
            handshakes: Family::default(),
            // 1 ms .. ~30 s.
            handshake_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            attach_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            sessions_open: Gauge::default(),
            jobs_running: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "handshakes",
                "session handshakes, by the path the connection took and how they ended",
                m.handshakes.clone(),
            );
            r.register(
                "handshake_seconds",
                "from a connection's Hello to the starter's Ready",
                m.handshake_seconds.clone(),
            );
            r.register(
                "attach_seconds",
                "from a connection's Hello until sshd runs in the job",
                m.attach_seconds.clone(),
            );
            r.register(
                "sessions_open",
                "sessions whose sshd runs now",
                m.sessions_open.clone(),
            );
            r.register(
                "jobs_running",
                "jobs this starter runs now",
                m.jobs_running.clone(),
            );
        }
        m
    }
}

impl Metrics {
    pub fn handshake(&self, path: &'static str, outcome: String) {
        self.handshakes
            .get_or_create(&Handshake { path, outcome })
            .inc();
    }

    /// The scrape's text, with the gauges read now.
    pub fn render(&self, sessions_open: i64, jobs_running: i64) -> String {
        self.sessions_open.set(sessions_open);
        self.jobs_running.set(jobs_running);
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            return String::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_by_path_and_outcome() {
        let m = Metrics::default();
        m.handshake("relay", "accepted".into());
        m.handshake("direct", "replayed".into());
        m.handshake_seconds.observe(0.003);
        let t = m.render(1, 2);
        for want in [
            "stj_starter_handshakes_total{path=\"relay\",outcome=\"accepted\"} 1",
            "stj_starter_handshakes_total{path=\"direct\",outcome=\"replayed\"} 1",
            "stj_starter_sessions_open 1",
            "stj_starter_jobs_running 2",
            "stj_starter_handshake_seconds_count 1",
        ] {
            assert!(t.contains(want), "{want} in:\n{t}");
        }
    }
}
