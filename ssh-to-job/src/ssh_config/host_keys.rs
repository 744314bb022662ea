//! `ssh-to-job host-key [--add] JOB...`: each job's SSH host key, learnt
//! through a handshake (so from the genuine starter, never on first use),
//! as known_hosts lines — and with `--add` written into ~/.ssh/known_hosts.
//! For clients that check host keys only against known_hosts (paramiko,
//! Ansible's paramiko connection, Fabric): a job keeps one host key for
//! its life, so one line serves every session into it.

use std::path::Path;

use anyhow::{Context, Result};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::PublicKey;

use super::{account_home, persistent_key, write_replacing};
use crate::attach;

/// `stj-job-N ssh-ed25519 AAAA...` for `job`.
pub async fn line(socket: &Path, job: u64) -> Result<String> {
    let (_, public) = persistent_key()?;
    let grant = attach::request(socket, job, public).await?;
    let dial = attach::Dial {
        socket,
        job_id: job,
        daemon_sock: None,
        host_ca: None,
    };
    // Only the handshake is wanted: the connection closes right after it
    // (sshd on the node sees the end at once; the audit records a session
    // of no bytes).
    let (_, session, _) = attach::connect(attach::Mode::Auto, &dial, &grant).await?;
    let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(session.host_pubkey)), "");
    Ok(format!("stj-job-{job} {}", key.to_openssh()?.trim_end()))
}

/// Prints the lines; with `add`, also puts them in ~/.ssh/known_hosts in
/// place of any older line for the same job.
pub async fn run(socket: &Path, jobs: &[u64], add: bool) -> Result<()> {
    let mut lines = Vec::new();
    for &job in jobs {
        let l = line(socket, job)
            .await
            .with_context(|| format!("cannot learn job {job}'s host key"))?;
        println!("{l}");
        lines.push(l);
    }
    if add {
        let dir = account_home()?.join(".ssh");
        if !dir.exists() {
            std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = dir.join("known_hosts");
        let old = std::fs::read_to_string(&file).unwrap_or_default();
        let names: Vec<String> = jobs.iter().map(|j| format!("stj-job-{j}")).collect();
        let mut out: Vec<&str> = old
            .lines()
            .filter(|l| {
                let hosts = l.split_whitespace().next().unwrap_or("");
                !hosts.split(',').any(|h| names.iter().any(|n| n == h))
            })
            .collect();
        out.extend(lines.iter().map(String::as_str));
        let mode = std::fs::metadata(&file)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap_or(0o600);
        write_replacing(&file, format!("{}\n", out.join("\n")).as_bytes(), mode)?;
        eprintln!(
            "ssh-to-job: {} host key(s) in {} (older lines for these jobs replaced)",
            lines.len(),
            file.display()
        );
    }
    Ok(())
}
