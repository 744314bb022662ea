//! ssh_config integration: `ssh-to-job ssh-config` prints a `Host stj-job-*`
//! block so plain `ssh stj-job-42`, scp, rsync, git and VS Code Remote-SSH
//! reach job 42 with no wrapper.
//!
//! The block's ProxyCommand (`ssh-to-job proxy %n`) gets a capability for the
//! user's persistent stj key (made once, `~/.config/stj/id_ed25519`, 0600 —
//! it never leaves this host), makes the data connection, records the
//! session's one-time host key for this ssh process, and hands the socket to
//! ssh (ProxyUseFdpass). The KnownHostsCommand (`ssh-to-job known-hosts %n`)
//! then answers ssh's host key check with exactly that key.

use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};

use crate::attach;

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn key_path() -> Result<PathBuf> {
    Ok(home()?.join(".config/stj/id_ed25519"))
}

/// The persistent stj key, made on first use. Two first uses at once (an
/// editor opening several connections) agree on one key.
fn persistent_key() -> Result<(PathBuf, [u8; 32])> {
    let path = key_path()?;
    if !path.exists() {
        let dir = path.parent().context("key dir")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| anyhow::anyhow!("random generator failed"))?;
        let key = PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
            "ssh-to-job",
        )?;
        stj_cli::private_file::create_new(&path, key.to_openssh(LineEnding::LF)?.as_bytes())?;
    }
    let text = stj_cli::private_file::read(&path)?;
    let key = PrivateKey::from_openssh(String::from_utf8_lossy(&text).as_ref())
        .with_context(|| format!("{} is not an OpenSSH private key", path.display()))?;
    let public = match key.public_key().key_data() {
        KeyData::Ed25519(k) => k.0,
        _ => bail!(
            "{} is not an ed25519 key; remove it and run `ssh-to-job ssh-config` again",
            path.display()
        ),
    };
    Ok((path, public))
}

pub fn print() -> Result<()> {
    let (key, _) = persistent_key()?;
    let me = std::env::current_exe().context("cannot find the ssh-to-job binary")?;
    let me = me.display();
    println!(
        "# ssh-to-job: `ssh stj-job-N` reaches job N (from `ssh-to-job ssh-config`)
Host stj-job-*
    ProxyCommand {me} proxy %n
    ProxyUseFdpass yes
    KnownHostsCommand {me} known-hosts %n
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlgorithms ssh-ed25519
    CheckHostIP no
    UpdateHostKeys no
    IdentityFile {}
    IdentitiesOnly yes
    PreferredAuthentications publickey
    ControlMaster no
    ControlPath none",
        key.display()
    );
    Ok(())
}

fn job_of(host: &str) -> Result<u64> {
    host.strip_prefix("stj-job-")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{host:?} is not stj-job-N"))
}

/// Whether `dir` is a directory only `uid` can use.
fn private_dir_of(dir: &Path, uid: u32) -> bool {
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
}

/// Where one ssh process's session host key waits for its KnownHostsCommand:
/// in $XDG_RUNTIME_DIR when it is ours and private, else under the home
/// directory of our account — never a predictable name in a shared /tmp,
/// which another user could create first.
fn host_key_file(job: u64) -> Result<PathBuf> {
    let uid = nix::unistd::getuid().as_raw();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| private_dir_of(p, uid));
    let dir = match runtime {
        Some(r) => r.join("stj-hostkeys"),
        None => {
            let account = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map(|u| u.dir)
                .filter(|d| d.is_dir());
            match account {
                Some(h) => h,
                None => home()?,
            }
            .join(".cache/stj/hostkeys")
        }
    };
    if !private_dir_of(&dir, uid) {
        if std::fs::symlink_metadata(&dir).is_ok() {
            bail!(
                "{} is not a private directory of yours (it must be a directory you own, mode 0700); remove it",
                dir.display()
            );
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // `recursive` applies the mode to new parents too; the leaf is what
        // must be private, and must be ours.
        if !private_dir_of(&dir, uid) {
            bail!(
                "{} is not a private directory of yours; remove it",
                dir.display()
            );
        }
    }
    // Both helpers are children of the same ssh process.
    let ssh = nix::unistd::getppid().as_raw();
    Ok(dir.join(format!("{ssh}-{job}")))
}

/// Forgets host keys of ssh processes that are gone.
fn prune(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                std::fs::remove_file(e.path()).ok();
            }
        }
    }
}

pub async fn proxy(host: &str, socket: &Path) -> Result<()> {
    let job = job_of(host)?;
    let (_, public) = persistent_key()?;
    let grant = attach::request(socket, job, public).await?;
    let (stream, session, path) = attach::connect(
        attach::Mode::Auto,
        socket,
        &grant,
        job,
        &attach::daemon_sock_dir(None),
    )
    .await?;
    tracing::debug!(job_id = job, path = path.as_str(), "connected");
    let file = host_key_file(job)?;
    if let Some(dir) = file.parent() {
        prune(dir);
    }
    let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(session.host_pubkey)), "");
    std::fs::write(&file, key.to_openssh()?)?;
    // stdout is the socketpair ssh made for ProxyUseFdpass.
    stj_cli::fd_passing::send_on_stdout(stream.as_fd())
        .context("cannot pass the socket to ssh (the ssh_config block needs ProxyUseFdpass yes)")?;
    Ok(())
}

pub fn known_hosts(host: &str) -> Result<()> {
    let job = job_of(host)?;
    let file = host_key_file(job)?;
    if let Ok(key) = std::fs::read_to_string(&file) {
        println!("{host} {}", key.trim());
    }
    Ok(())
}
