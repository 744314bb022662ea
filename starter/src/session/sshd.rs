//! Per-session sshd: a one-time host key (or the job's own, when the client
//! asked for it), an authorized_keys holding only the
//! capability's client key, a config that allows nothing else, and `sshd -i`
//! exec'd as the job's user inside the job on the accepted socket. No sshd
//! ever listens on a port.

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};

use super::handshake::Accepted;
use super::home::Home;
use super::traffic::{self, Traffic};
use super::Sessions;
use crate::container::enter::EnterSpec;

fn write_owned(path: &Path, data: &[u8], uid: u32, gid: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    Ok(())
}

/// An sshd_config value in double quotes, as sshd's tokenizer reads them.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn config_text(
    dir: &Path,
    user: &str,
    env: &[(String, String)],
    extra: &[String],
    debug: bool,
    host_cert: bool,
) -> String {
    // `env` ends with HOME (see `run`): sshd sets HOME to the account's
    // passwd home (the shim answers with the job's working directory, so
    // sessions start there), and SetEnv, applied after, wins.
    let mut c = String::new();
    let mut line = |s: String| {
        c.push_str(&s);
        c.push('\n');
    };
    line(format!(
        "AuthorizedKeysFile {}",
        quoted(&dir.join("authorized_keys").to_string_lossy())
    ));
    if host_cert {
        // The client's certificate of the one-time host key (host_cert.rs).
        line(format!(
            "HostCertificate {}",
            quoted(&dir.join("host_key-cert.pub").to_string_lossy())
        ));
    }
    line("PubkeyAuthentication yes".into());
    line("PasswordAuthentication no".into());
    line("KbdInteractiveAuthentication no".into());
    line("HostbasedAuthentication no".into());
    line("UsePAM no".into());
    // Session files live under the starter's work dir, not in a home dir.
    line("StrictModes no".into());
    line("PidFile none".into());
    line("PermitRootLogin no".into());
    line(format!("AllowUsers {user}"));
    line("PermitUserEnvironment no".into());
    // sshd looks for .ssh/rc in the start directory, the job's working
    // directory, which others may be able to write: never run it.
    line("PermitUserRC no".into());
    line("PrintMotd no".into());
    line("PrintLastLog no".into());
    line("AcceptEnv LANG LC_* TERM COLORTERM".into());
    line(format!("LogLevel {}", if debug { "DEBUG" } else { "INFO" }));
    // In sshd's own process: no program, library or passwd lookup of its
    // own to find in the job's view, and no variable for the shim to leak
    // into the session's environment.
    line("Subsystem sftp internal-sftp".into());
    // sshd keeps only the first SetEnv line, so every variable goes on one.
    let mut setenv = Vec::new();
    for (k, v) in env {
        // sshd_config has no way to write a newline; such a value cannot
        // reach the session intact, so it is left out (and logged).
        if v.contains('\n')
            || v.contains('\r')
            || k.is_empty()
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            tracing::warn!(var = %k, "job environment variable cannot be passed to sessions; skipped");
            continue;
        }
        setenv.push(quoted(&format!("{k}={v}")));
    }
    if !setenv.is_empty() {
        line(format!("SetEnv {}", setenv.join(" ")));
    }
    for e in extra {
        line(e.clone());
    }
    c
}

/// Where sshd finds its session files and the kit: the helper (enter.rs)
/// gives sshd read-only detached copies of the session's directory as fd 3
/// (which the shim keeps open for sshd's life: sshd reads authorized_keys
/// long after start-up) and of the kit as fd 4 (for the loader). So both
/// are reached whatever the job's root is — also in a container that
/// pivoted into a root of its own (runc), which sees neither the node's
/// paths nor /.stj — and nothing is added to the container's filesystem.
const SESSION_FILES: &str = "/proc/self/fd/3";
const KIT: &str = "/proc/self/fd/4";

pub async fn run(s: &Sessions, a: Accepted) -> Result<Traffic> {
    let spec = &a.target.spec;
    let kit = s.kit.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let sid = a.capability.session_id.to_string();
    // The session's private home, if it gets one, is named by the path the
    // job sees (/.stj/sessions/... in an image).
    let view = kit.view(spec.image.is_some(), &spec.sessions);
    let dir = spec.sessions.join(&sid);
    let dir_in_job = view.sessions.join(&sid);
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let enter_path = spec.sessions.with_file_name(format!("session-{sid}.json"));
    let _cleanup = Cleanup(vec![dir.clone(), enter_path.clone()]);
    // A private home is made while the session dir is still root's alone:
    // once it is the job user's, a path under it could be swapped for a
    // symlink between our calls (and root's chown would follow it).
    if a.landing.home == Home::Private {
        let private = dir.join("home");
        fs::create_dir(&private).with_context(|| format!("cannot create {}", private.display()))?;
        std::os::unix::fs::chown(&private, Some(spec.uid), Some(spec.gid))?;
        fs::set_permissions(&private, fs::Permissions::from_mode(0o700))?;
    }
    std::os::unix::fs::chown(&dir, Some(spec.uid), Some(spec.gid))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;

    let host = PrivateKey::new(
        KeypairData::Ed25519(Ed25519Keypair::from_seed(&a.host_seed)),
        format!("stj-job-{}", spec.job_id),
    )?;
    let host_text = host.to_openssh(LineEnding::LF)?;
    let client = PublicKey::new(
        KeyData::Ed25519(Ed25519PublicKey(a.capability.client_pubkey)),
        "ssh-to-job",
    );
    write_owned(
        &dir.join("host_key"),
        host_text.as_bytes(),
        spec.uid,
        spec.gid,
    )?;
    if let Some(cert) = &a.host_cert {
        write_owned(
            &dir.join("host_key-cert.pub"),
            format!("{cert}\n").as_bytes(),
            spec.uid,
            spec.gid,
        )?;
    }
    write_owned(
        &dir.join("authorized_keys"),
        format!("{}\n", client.to_openssh()?).as_bytes(),
        spec.uid,
        spec.gid,
    )?;

    let landing = &a.landing;
    let home = match &landing.home {
        Home::Own(h) => h.clone(),
        // A fresh one per session (made above), gone with its files.
        Home::Private => dir_in_job.join("home").to_string_lossy().into_owned(),
    };
    if landing.inner {
        tracing::info!(session_id = %sid, job_id = spec.job_id, pid = landing.at.pid, "session lands in the job's innermost container");
    }
    // sshd starts the session in the account's home, which the shim says is
    // where the program it lands beside works.
    let passwd = passwd_line(spec, &landing.cwd);
    // What that program started with (its PATH included, not sshd's
    // default).
    let mut env = landing.env.clone();
    env.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "STJ_JOB_ID" | "STJ_SESSION_ID" | stj_preload::ENV | "HOME"
        )
    });
    env.push(("STJ_JOB_ID".into(), spec.job_id.to_string()));
    env.push(("STJ_SESSION_ID".into(), sid.clone()));
    // (The shim's variable is sshd's alone: sftp is sshd's internal-sftp,
    // and nothing in the session needs it or sees it.)
    env.push(("HOME".into(), home));
    let files = Path::new(SESSION_FILES);
    let config = config_text(
        files,
        &spec.user_name,
        &env,
        &s.sshd.extra,
        s.sshd.debug,
        a.host_cert.is_some(),
    );
    write_owned(
        &dir.join("sshd_config"),
        config.as_bytes(),
        spec.uid,
        spec.gid,
    )?;

    let mut argv = kit.command(Path::new(KIT), "sshd", true);
    argv.extend(["-i".into(), "-e".into(), "-f".into()]);
    argv.push(files.join("sshd_config").to_string_lossy().into_owned());
    argv.push("-h".into());
    argv.push(files.join("host_key").to_string_lossy().into_owned());
    let enter = EnterSpec {
        uid: spec.uid,
        gid: spec.gid,
        user: spec.user_name.clone(),
        session_dir: dir.clone(),
        kit_dir: kit.dir.clone(),
        job_id: spec.job_id,
        argv,
        passwd,
        umask: spec.umask,
        confined: spec.confined,
        no_new_privs: landing.inner,
        cgroups: landing.cgroups.clone(),
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&enter_path)?;
    // One write, not one per JSON token.
    f.write_all(&serde_json::to_vec(&enter)?)?;
    drop(f);

    let socket: OwnedFd = a.stream.into_std()?.into();
    let socket_out = socket.try_clone()?;
    // Our own copy, to read the connection's byte counters once sshd is done.
    let probe = socket.try_clone()?;
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg("session-enter")
        .arg(&enter_path)
        .stdin(Stdio::from(socket))
        .stdout(Stdio::from(socket_out))
        .stderr(Stdio::piped());
    crate::container::pass_as_fd3(&mut cmd, landing.at.pidfd.as_raw_fd());
    let mut child = cmd.spawn().context("cannot start the session helper")?;
    s.metrics
        .attach_seconds
        .observe(a.started.elapsed().as_secs_f64());
    // The helper holds the socket now; our copies went with `cmd`.
    drop(cmd);
    let helper = child.id();
    let logs = async {
        if let Some(err) = child.stderr.take() {
            // sshd's lines are short; code the job runs in sshd (its
            // mount namespace is the job's) could write endless ones.
            let codec = tokio_util::codec::LinesCodec::new_with_max_length(4096);
            let mut lines = tokio_util::codec::FramedRead::new(err, codec);
            while let Some(l) = futures::StreamExt::next(&mut lines).await {
                match l {
                    Ok(l) => tracing::info!(session_id = %sid, job_id = spec.job_id, "sshd: {l}"),
                    Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                        tracing::warn!(session_id = %sid, job_id = spec.job_id, "sshd wrote a line over 4 KiB; left out")
                    }
                    Err(_) => break,
                }
            }
        }
    };
    tokio::select! {
        () = logs => {}
        () = job_ended(a.target.ends_with.clone()) => {
            tracing::info!(session_id = %sid, job_id = spec.job_id, "the job ended (Slurm's slurmstepd for it is gone): ending its session");
            if let Some(pid) = helper {
                tokio::task::spawn_blocking(move || kill_tree(pid as i32)).await.ok();
            }
        }
    }
    let status = child.wait().await?;
    let traffic = traffic::of(probe.as_fd());
    drop(probe);
    // sshd -i exits 255 after every normal disconnect.
    tracing::info!(session_id = %sid, job_id = spec.job_id, peer = %a.peer, %status, bytes_from_client = traffic.from_client, bytes_to_client = traffic.to_client, "session ended");
    Ok(traffic)
}

/// The account sessions log in as, for the shim: the job's user, home = the
/// job's cwd, and the user's shell from the node's passwd (the shim swaps a
/// nologin/false/missing one for a usable shell).
fn passwd_line(spec: &crate::container::ContainerSpec, cwd: &str) -> String {
    let shell = nix::unistd::User::from_uid(spec.uid.into())
        .ok()
        .flatten()
        .filter(|u| u.name == spec.user_name)
        .map(|u| u.shell.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/bin/sh".into());
    format!(
        "{}:x:{}:{}:stj job {}:{}:{}",
        spec.user_name, spec.uid, spec.gid, spec.job_id, cwd, shell
    )
}

/// Resolves when a job whose life is its slurmstepd's (`ends_with`) has
/// ended; never for our own containers, whose sessions end with them.
async fn job_ended(ends_with: Option<PathBuf>) {
    let Some(track) = ends_with else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let t = track.clone();
        if !tokio::task::spawn_blocking(move || crate::slurm::stepd_alive(&t))
            .await
            .unwrap_or(true)
        {
            return;
        }
    }
}

/// The parent of `pid`, from /proc/PID/stat.
fn parent(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
}

/// SIGKILL to `root` and every process below it, until none is left (a
/// process forked meanwhile is found on the next round). Each is pinned by
/// a pidfd and checked to have the parent the walk saw before it is
/// signalled: a pid reused meanwhile is left alone.
fn kill_tree(root: i32) {
    for _ in 0..50 {
        let mut parent_of = std::collections::HashMap::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent(pid) {
                parent_of.insert(pid, ppid);
            }
        }
        let mut tree = vec![root];
        let mut grew = true;
        while grew {
            grew = false;
            for (&pid, ppid) in &parent_of {
                if tree.contains(ppid) && !tree.contains(&pid) {
                    tree.push(pid);
                    grew = true;
                }
            }
        }
        tree.retain(|p| parent_of.contains_key(p));
        if tree.is_empty() {
            return;
        }
        for p in tree {
            let Ok(fd) = crate::container::pidfd_open(p) else {
                continue;
            };
            if parent(p) == parent_of.get(&p).copied() {
                crate::container::signal_pidfd(&fd, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes the session's files on every exit path.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                fs::remove_dir_all(p).ok();
            } else {
                fs::remove_file(p).ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_env_and_skips_unrepresentable_values() {
        let env = vec![
            ("A".to_string(), "x \"y\" \\z".to_string()),
            ("BAD".to_string(), "two\nlines".to_string()),
            ("C".to_string(), "3".to_string()),
        ];
        let c = config_text(
            Path::new("/s"),
            "alice",
            &env,
            &["X11Forwarding no".into()],
            false,
            false,
        );
        assert!(c.contains(r#"SetEnv "A=x \"y\" \\z" "C=3""#), "{c}");
        assert!(!c.contains("BAD"));
        assert!(c.contains("AllowUsers alice\n"));
        assert!(c.ends_with("X11Forwarding no\n"));
    }
}
