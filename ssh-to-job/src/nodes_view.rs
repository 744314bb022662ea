//! How `stj nodes` shows the pool's starters: a table like `sinfo -N`, or
//! JSON for scripts.

use stj_proto::user::node::State;
use stj_proto::user::Node;

use crate::jobs_view::{aligned, time};

fn state(n: &Node, now: i64) -> String {
    let ago = |t: i64| {
        let s = (now - t).max(0);
        match s {
            s if s < 120 => format!("{s}s"),
            s if s < 7200 => format!("{}m", s / 60),
            s => format!("{}h", s / 3600),
        }
    };
    match State::try_from(n.state).unwrap_or(State::Unspecified) {
        State::Connected => "connected".into(),
        State::Silent => format!("silent {}", ago(n.since)),
        State::Gone => format!("gone {}", ago(n.since)),
        State::NotSeen => "not seen".into(),
        State::Unspecified => "unknown".into(),
    }
}

fn label(n: &Node) -> &'static str {
    match State::try_from(n.state).unwrap_or(State::Unspecified) {
        State::Connected => "connected",
        State::Silent => "silent",
        State::Gone => "gone",
        State::NotSeen => "not_seen",
        State::Unspecified => "unknown",
    }
}

pub fn table(nodes: &[Node], now: i64) -> String {
    let rows: Vec<[String; 8]> = nodes
        .iter()
        .map(|n| {
            [
                n.name.clone(),
                state(n, now),
                format!("{}/{}", n.slots_used, n.slots_total),
                n.jobs.len().to_string(),
                n.sessions_open.to_string(),
                if n.version.is_empty() {
                    "-".into()
                } else {
                    n.version.clone()
                },
                if n.address.is_empty() {
                    "-".into()
                } else {
                    n.address.clone()
                },
                time(n.last_heard),
            ]
        })
        .collect();
    let header = [
        "NODE",
        "STATE",
        "SLOTS",
        "JOBS",
        "SESSIONS",
        "VERSION",
        "ADDRESS",
        "LAST-HEARD",
    ];
    aligned(&header, &rows)
}

pub fn json(nodes: &[Node]) -> serde_json::Value {
    serde_json::Value::Array(
        nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name,
                    "state": label(n),
                    "since": n.since,
                    "slots_total": n.slots_total,
                    "slots_used": n.slots_used,
                    "jobs": n.jobs,
                    "sessions_open": n.sessions_open,
                    "version": n.version,
                    "address": n.address,
                    "last_heard": n.last_heard,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_say_since_when() {
        let mut n = Node {
            name: "n1".into(),
            state: State::Silent as i32,
            since: 1000,
            slots_total: 4,
            slots_used: 1,
            jobs: vec![7],
            ..Default::default()
        };
        assert_eq!(state(&n, 1030), "silent 30s");
        n.state = State::Gone as i32;
        assert_eq!(state(&n, 1000 + 3 * 3600), "gone 3h");
        let t = table(&[n.clone()], 2000);
        assert!(t.starts_with("NODE") && t.contains("1/4"), "{t}");
        assert_eq!(json(&[n])[0]["state"], "gone");
    }
}
