//! How `stj q` shows jobs: an aligned table for people, JSON for scripts.

use chrono::{Local, TimeZone};
use stj_proto::user::{Job, JobState};

fn state(job: &Job) -> &'static str {
    JobState::try_from(job.state)
        .unwrap_or(JobState::Unspecified)
        .label()
}

pub(crate) fn time(t: i64) -> String {
    if t == 0 {
        return "-".into();
    }
    Local
        .timestamp_opt(t, 0)
        .single()
        .map(|d| d.format("%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn exit(job: &Job) -> String {
    match (job.exit_code, job.exit_signal) {
        (Some(c), _) => c.to_string(),
        (_, Some(s)) => format!("sig{s}"),
        _ => "-".into(),
    }
}

pub fn table(jobs: &[Job]) -> String {
    let rows: Vec<[String; 9]> = jobs
        .iter()
        .map(|j| {
            let cmd = j
                .spec
                .as_ref()
                .map(|s| s.args.join(" "))
                .unwrap_or_default();
            [
                j.id.to_string(),
                j.owner_name.clone(),
                state(j).to_string(),
                match (j.node.is_empty(), j.node_away) {
                    (true, _) => "-".into(),
                    (false, false) => j.node.clone(),
                    // The schedd has no link to it right now.
                    (false, true) => format!("{} (away)", j.node),
                },
                time(j.start_time),
                exit(j),
                j.spec
                    .as_ref()
                    .map(|s| crate::limits::column(s.millicpus, s.memory_bytes))
                    .unwrap_or_else(|| "-".into()),
                cmd.chars().take(40).collect(),
                j.reason.clone(),
            ]
        })
        .collect();
    let header = [
        "ID", "OWNER", "STATE", "NODE", "STARTED", "EXIT", "LIMITS", "COMMAND", "REASON",
    ];
    aligned(&header, &rows)
}

/// Columns padded to their widest cell; the last column is left ragged.
pub(crate) fn aligned<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(&r.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

pub fn json(jobs: &[Job]) -> serde_json::Value {
    serde_json::Value::Array(
        jobs.iter()
            .map(|j| {
                let spec = j.spec.clone().unwrap_or_default();
                serde_json::json!({
                    "id": j.id,
                    "owner": j.owner_name,
                    "owner_uid": j.owner_uid,
                    "state": state(j),
                    "node": j.node,
                    "node_away": j.node_away,
                    "submit_time": j.submit_time,
                    "start_time": j.start_time,
                    "end_time": j.end_time,
                    "exit_code": j.exit_code,
                    "exit_signal": j.exit_signal,
                    "reason": j.reason,
                    "args": spec.args,
                    // Empty for other users' jobs: the schedd shows them
                    // only what `squeue` would.
                    "env": spec.env.iter().map(|e| (e.name.clone(), serde_json::Value::from(e.value.clone()))).collect::<serde_json::Map<_, _>>(),
                    "cwd": spec.cwd,
                    "image": spec.image,
                    "output": spec.output,
                    "error": spec.error,
                    "ssh_enabled": spec.ssh_enabled,
                    // 0: no limit.
                    "millicpus": spec.millicpus,
                    "memory_bytes": spec.memory_bytes,
                })
            })
            .collect(),
    )
}
