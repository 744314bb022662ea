//! `ssh-to-job host-key [--add] JOB...`: each job's SSH host key, learnt
//! through a handshake (so from the genuine starter, never on first use),
//! as known_hosts lines — and with `--add` written into ~/.ssh/known_hosts.
//! For clients that check host keys only against known_hosts (paramiko,
//! Ansible's paramiko connection, Fabric): sessions that ask for it
//! (`ssh-to-job proxy --job-key`) get the job's own host key, the same for
//! the job's life on its node, so one line serves them all.

use std::path::Path;

use anyhow::{Context, Result};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::PublicKey;

use super::{account_home, followed, persistent_key, ssh_dir_made};
use crate::attach;
use stj_proto::job_ref::JobRef;

/// `stj-job-N ssh-ed25519 AAAA...` for `job`.
pub async fn line(socket: &Path, job: JobRef) -> Result<String> {
    let (_, public) = persistent_key()?;
    let target = attach::Target::job(job);
    let grant = attach::request(socket, &target, public).await?;
    let dial = attach::Dial {
        socket,
        target: &target,
        daemon_sock: None,
        host_ca: None,
        asks: attach::Asks {
            job_host_key: true,
            ..attach::Asks::default()
        },
    };
    // Only the handshake is wanted, for the job's own key: the connection
    // closes right after it (sshd on the node sees the end at once; the
    // audit records a session of no bytes).
    let (_, session, _) = attach::connect(attach::Mode::Auto, &dial, &grant).await?;
    let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(session.host_pubkey)), "");
    Ok(format!("stj-job-{job} {}", key.to_openssh()?.trim_end()))
}

/// Prints the lines; with `add`, also puts them in ~/.ssh/known_hosts in
/// place of any older line for the same job.
pub async fn run(socket: &Path, jobs: &[JobRef], add: bool) -> Result<()> {
    let mut lines = Vec::new();
    for &job in jobs {
        let l = line(socket, job)
            .await
            .with_context(|| format!("cannot learn job {job}'s host key"))?;
        println!("{l}");
        lines.push(l);
    }
    if add {
        add_lines(jobs, &lines)?;
    }
    Ok(())
}

/// Puts `lines` into ~/.ssh/known_hosts in place of older lines that name
/// exactly these jobs; every other line is kept byte for byte (hashed
/// lines, markers, lines naming several hosts, non-UTF-8 text).
fn add_lines(jobs: &[JobRef], lines: &[String]) -> Result<()> {
    let dir = account_home()?.join(".ssh");
    ssh_dir_made(&dir)?;
    let file = add_lines_to(&dir.join("known_hosts"), jobs, lines)?;
    eprintln!(
        "ssh-to-job: {} host key(s) in {} (older lines for these jobs replaced)",
        lines.len(),
        file.display()
    );
    Ok(())
}

/// [`add_lines`] into the known_hosts file `file` (followed if a
/// symlink); returns the file written.
fn add_lines_to(file: &Path, jobs: &[JobRef], lines: &[String]) -> Result<std::path::PathBuf> {
    let file = followed(file)?;
    // Only a missing file is an empty one: anything else unreadable must
    // not be replaced by our lines alone.
    let old = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read {}; nothing changed", file.display()))
        }
    };
    let names: Vec<Vec<u8>> = jobs
        .iter()
        .map(|j| format!("stj-job-{j}").into_bytes())
        .collect();
    let mut out: Vec<u8> = Vec::with_capacity(old.len() + 128);
    for l in old.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let host = l.split(|&b| b == b' ' || b == b'\t').next().unwrap_or(&[]);
        if !names.iter().any(|n| n.as_slice() == host) {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
    }
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    let mode = std::fs::metadata(&file)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o600);
    stj_cli::private_file::replace(&file, &out, mode)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_lines_are_kept_byte_for_byte_and_errors_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real_known_hosts");
        let old: &[u8] = b"|1|x=|y= ssh-ed25519 AAAA\nstj-job-7 ssh-ed25519 OLD\nstj-job-7,alias ssh-ed25519 KEEP\n\xff\xfe not utf-8\n";
        std::fs::write(&real, old).unwrap();
        let link = dir.path().join("known_hosts");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let written = add_lines_to(
            &link,
            &[JobRef::plain(7)],
            &["stj-job-7 ssh-ed25519 NEW".into()],
        )
        .unwrap();
        assert_eq!(written, std::fs::canonicalize(&real).unwrap());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let now = std::fs::read(&real).unwrap();
        assert_eq!(
            now,
            b"|1|x=|y= ssh-ed25519 AAAA\nstj-job-7,alias ssh-ed25519 KEEP\n\xff\xfe not utf-8\nstj-job-7 ssh-ed25519 NEW\n"
        );
        // Unreadable (here: a directory): an error, and nothing written.
        let not_a_file = dir.path().join("dir");
        std::fs::create_dir(&not_a_file).unwrap();
        assert!(add_lines_to(&not_a_file, &[JobRef::plain(7)], &["x".into()]).is_err());
        assert!(std::fs::read_dir(&not_a_file).unwrap().next().is_none());
    }
}
