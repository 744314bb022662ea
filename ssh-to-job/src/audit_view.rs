//! How `stj audit` shows session records: an aligned table for people, JSON
//! for scripts.

use stj_proto::user::AuditRecord;

use crate::jobs_view::{aligned, time};

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn duration(r: &AuditRecord) -> String {
    match (r.started_at, r.ended_at) {
        (0, _) => "-".into(),
        (s, 0) => format!("open since {}", time(s)),
        (s, e) => {
            let d = (e - s).max(0);
            format!("{}:{:02}:{:02}", d / 3600, d / 60 % 60, d % 60)
        }
    }
}

pub fn table(records: &[AuditRecord]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows: Vec<[String; 11]> = records
        .iter()
        .map(|r| {
            let traffic = r.started_at != 0 && r.ended_at != 0 && r.end_note.is_empty();
            [
                r.session_id.clone(),
                r.job_id.to_string(),
                r.uid.to_string(),
                r.node.clone(),
                dash(&r.path),
                time(r.issued_at),
                duration(r),
                if traffic {
                    bytes(r.bytes_from_client)
                } else {
                    "-".into()
                },
                if traffic {
                    bytes(r.bytes_to_client)
                } else {
                    "-".into()
                },
                r.exit_status.map_or("-".into(), |s| s.to_string()),
                if r.end_note.is_empty() {
                    r.outcome.clone()
                } else {
                    format!("{}; {}", r.outcome, r.end_note)
                },
            ]
        })
        .collect();
    aligned(
        &[
            "SESSION", "JOB", "UID", "NODE", "PATH", "ISSUED", "DURATION", "UP", "DOWN", "EXIT",
            "OUTCOME",
        ],
        &rows,
    )
}

pub fn json(records: &[AuditRecord]) -> serde_json::Value {
    let opt = |t: i64| if t == 0 { None } else { Some(t) };
    serde_json::Value::Array(
        records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "session_id": r.session_id,
                    "job": r.job_id,
                    "uid": r.uid,
                    "node": r.node,
                    "issued_at": r.issued_at,
                    "outcome": r.outcome,
                    "path": if r.path.is_empty() { None } else { Some(&r.path) },
                    "started_at": opt(r.started_at),
                    "ended_at": opt(r.ended_at),
                    "bytes_from_client": r.bytes_from_client,
                    "bytes_to_client": r.bytes_to_client,
                    "exit_status": r.exit_status,
                    "end_note": r.end_note,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn durations_and_open_sessions() {
        let mut r = AuditRecord {
            started_at: 100,
            ended_at: 100 + 3723,
            ..Default::default()
        };
        assert_eq!(duration(&r), "1:02:03");
        r.ended_at = 0;
        assert!(duration(&r).starts_with("open since"));
        r.started_at = 0;
        assert_eq!(duration(&r), "-");
    }
}
