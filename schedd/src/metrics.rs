//! What the schedd tells Prometheus (`metrics_listen`): sessions granted
//! and denied by reason, sessions started by path and the bytes they
//! moved (as the nodes report them), bytes through the relay, how long a
//! grant takes, starters by link state, the queue by state, the audit
//! writer's backlog, and connections held against their caps. Counters move
//! where things happen; the rest is read when scraped.

use std::sync::atomic::AtomicI64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Path {
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Direction {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct State {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub granted: Counter,
    pub denied: Family<Reason, Counter>,
    pub started: Family<Path, Counter>,
    pub session_bytes: Family<Direction, Counter>,
    pub relay_bytes: Family<Direction, Counter>,
    pub grant_seconds: Histogram,
    starters: Family<State, Gauge>,
    jobs: Family<State, Gauge>,
    audit_backlog: Gauge<i64, AtomicI64>,
    connections: Family<Kind, Gauge>,
    caps: Family<Kind, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("stj")),
            granted: Counter::default(),
            denied: Family::default(),
            started: Family::default(),
            session_bytes: Family::default(),
            relay_bytes: Family::default(),
            // 0.1 ms .. ~3 s.
            grant_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            starters: Family::default(),
            jobs: Family::default(),
            audit_backlog: Gauge::default(),
            connections: Family::default(),
            caps: Family::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(|p| p.into_inner());
            r.register(
                "sessions_granted",
                "ssh-to-job sessions granted (capabilities issued)",
                m.granted.clone(),
            );
            r.register(
                "sessions_denied",
                "ssh-to-job requests denied, by reason",
                m.denied.clone(),
            );
            r.register("sessions_started", "sessions whose sshd started, by the path their connection took (direct, reverse, relay), as nodes report", m.started.clone());
            r.register(
                "session_bytes",
                "bytes of ended sessions' data connections, by direction, as nodes report",
                m.session_bytes.clone(),
            );
            r.register(
                "relay_bytes",
                "bytes moved through the schedd's relay, by direction",
                m.relay_bytes.clone(),
            );
            r.register(
                "grant_seconds",
                "time to answer a session request (job lookup, audit commit)",
                m.grant_seconds.clone(),
            );
            r.register(
                "starters",
                "starters by the state of their link",
                m.starters.clone(),
            );
            r.register(
                "jobs",
                "jobs of the schedd's own queue, by state",
                m.jobs.clone(),
            );
            r.register(
                "audit_backlog",
                "audit records queued and not yet committed",
                m.audit_backlog.clone(),
            );
            r.register(
                "connections",
                "connections held now, by kind",
                m.connections.clone(),
            );
            r.register(
                "connection_caps",
                "the most connections of each kind the schedd holds",
                m.caps.clone(),
            );
        }
        m
    }
}

/// A Refusal's name as a label: REFUSAL_NOT_OWNER → not_owner.
pub fn reason_label(r: stj_proto::user::Refusal) -> String {
    r.as_str_name()
        .trim_start_matches("REFUSAL_")
        .to_ascii_lowercase()
}

/// What is read at scrape time.
pub struct Now {
    pub starters: [(&'static str, i64); 3],
    pub jobs: [(&'static str, i64); 2],
    pub audit_backlog: i64,
    /// (kind, held, cap)
    pub connections: Vec<(&'static str, i64, i64)>,
}

impl Metrics {
    /// The text Prometheus scrapes, with `now`'s values in the gauges.
    pub fn render(&self, now: Now) -> String {
        for (s, n) in now.starters {
            self.starters.get_or_create(&State { state: s }).set(n);
        }
        for (s, n) in now.jobs {
            self.jobs.get_or_create(&State { state: s }).set(n);
        }
        self.audit_backlog.set(now.audit_backlog);
        for (k, held, cap) in now.connections {
            self.connections.get_or_create(&Kind { kind: k }).set(held);
            self.caps.get_or_create(&Kind { kind: k }).set(cap);
        }
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            return String::new();
        }
        out
    }

    pub fn denied_for(&self, r: stj_proto::user::Refusal) {
        self.denied
            .get_or_create(&Reason {
                reason: reason_label(r),
            })
            .inc();
    }
}

impl Metrics {
    #[cfg(test)]
    fn rendered(&self) -> String {
        self.render(Now {
            starters: [("connected", 1), ("silent", 0), ("gone", 0)],
            jobs: [("idle", 2), ("running", 1)],
            audit_backlog: 0,
            connections: vec![("tcp", 3, 100)],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family_with_its_labels() {
        let m = Metrics::default();
        m.granted.inc();
        m.denied_for(stj_proto::user::Refusal::NotOwner);
        m.started
            .get_or_create(&Path {
                path: "relay".into(),
            })
            .inc();
        m.grant_seconds.observe(0.002);
        let t = m.rendered();
        for want in [
            "stj_sessions_granted_total 1",
            "stj_sessions_denied_total{reason=\"not_owner\"} 1",
            "stj_sessions_started_total{path=\"relay\"} 1",
            "stj_starters{state=\"connected\"} 1",
            "stj_jobs{state=\"running\"} 1",
            "stj_connection_caps{kind=\"tcp\"} 100",
            "stj_grant_seconds_count 1",
            "# EOF",
        ] {
            assert!(t.contains(want), "{want} in:\n{t}");
        }
    }
}
