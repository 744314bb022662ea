//! ssh_config integration: plain `ssh stj-job-42` (and scp, sftp, rsync,
//! git, VS Code Remote-SSH) reaches job 42 with no wrapper.
//!
//! `ssh-to-job ssh-config --install` writes the `Host stj-job-*` block to
//! `~/.ssh/stj_config` and puts `Include stj_config` at the very top of
//! `~/.ssh/config`: ssh takes the first value it finds for each option, so
//! the block must come before any `Host *` of the user's, and it pins every
//! option such a stanza could set to break the session (User, Port, keys,
//! ControlMaster, host-key checking). Without `--install` the block is
//! printed.
//!
//! The block's ProxyCommand (`ssh-to-job proxy %n`, `proxy.rs`)
//! gets a capability for the user's persistent stj key (made once,
//! `~/.config/stj/id_ed25519`, 0600 — it never leaves this host), makes the
//! data connection, records the session's host key for this ssh process,
//! and hands the socket to ssh (ProxyUseFdpass), or relays bytes for
//! clients that cannot take an fd (a pipe on stdout, or `--stdio`). The KnownHostsCommand
//! (`ssh-to-job known-hosts %n %H`) then answers ssh's host key check with
//! exactly that key. A machine that reaches jobs through this one (a laptop
//! through the login node) checks them by the user's host CA instead
//! (`host_ca.rs`, `ssh-config --laptop`).

mod host_keys;
mod proxy;

use crate::host_ca::HostCa;

pub use host_keys::run as host_keys;
pub use proxy::{known_hosts, proxy, Handoff};

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use ssh_key::public::KeyData;

/// The home directory of our account, as ssh finds `~` (the passwd entry,
/// not $HOME): the block and the proxy must agree on one key whatever
/// $HOME says. $HOME only when the account has no usable home.
fn account_home() -> Result<PathBuf> {
    let uid = nix::unistd::getuid();
    let passwd = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.dir)
        .filter(|d| d.is_dir());
    match passwd {
        Some(h) => Ok(h),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("our account has no home directory and HOME is not set"),
    }
}

/// Where the stj key, the host CA and its known_hosts line live.
fn config_dir() -> Result<PathBuf> {
    Ok(account_home()?.join(".config/stj"))
}

fn key_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("id_ed25519"))
}

/// The user's host CA (made on first use).
pub(crate) fn host_ca() -> Result<HostCa> {
    let dir = config_dir()?;
    private_dir(&dir)?;
    HostCa::load_or_create(&dir)
}

/// `dir` (and its parents) made if missing; `dir` itself 0700.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// The persistent stj key, made on first use. Two first uses at once (an
/// editor opening several connections) agree on one key.
fn persistent_key() -> Result<(PathBuf, [u8; 32])> {
    let path = key_path()?;
    private_dir(path.parent().context("key dir")?)?;
    let key = crate::key_file::ed25519_once(&path, "ssh-to-job")?;
    let public = match key.public_key().key_data() {
        KeyData::Ed25519(k) => k.0,
        _ => bail!(
            "{} is not an ed25519 key; remove it and run `ssh-to-job ssh-config` again",
            path.display()
        ),
    };
    Ok((path, public))
}

/// What both blocks pin besides their own lines: key login only, no
/// shared connection (it would skip the capability and its audit record),
/// and no agent or X11 forwarding unless asked for on the command line
/// (`ssh -A`, `-X`): a `Host *` that forwards the agent everywhere must not
/// hand it to every job.
const PINNED: &str = "    PubkeyAuthentication yes
    PreferredAuthentications publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    ControlMaster no
    ControlPath none
    ControlPersist no
    CanonicalizeHostname no
    ForwardAgent no
    ForwardX11 no
";

/// The blocks' Host line. A name with a quote in it never matches: `%n`
/// goes into the commands single-quoted, and nothing else can break out.
/// (The pattern is double-quoted for ssh's own parser.)
const HOST: &str = "Host stj-job-* \"!*'*\"";

/// This program (what the blocks run) and the user name ssh logs in as.
fn me_and_user() -> Result<(PathBuf, String)> {
    let me = std::env::current_exe().context("cannot find the ssh-to-job binary")?;
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .context("our uid has no user name (passwd); ssh needs one to log in as")?;
    Ok((me, user))
}

/// `value` as an ssh_config argument: single-quoted (for the shell that
/// runs ProxyCommand, and for ssh's own parser), `%` doubled (ssh expands
/// `%` tokens). A newline or `${` cannot be written so that ssh reads it
/// back unchanged: refused.
fn config_arg(value: &str) -> Result<String> {
    if value.contains('\n') || value.contains('\r') || value.contains("${") {
        bail!("{value:?} cannot go into an ssh_config file (a newline or ${{...}}); use a path without them");
    }
    Ok(shell_quote(value).replace('%', "%%"))
}

fn path_arg(p: &Path) -> Result<String> {
    config_arg(&p.to_string_lossy())
}

/// The `Host stj-job-*` block, for the user running us, reaching the
/// schedd at `socket`. The proxy hands ssh the socket (ProxyUseFdpass);
/// the KnownHostsCommand answers with the exact key the handshake proved.
pub fn block(socket: &Path) -> Result<String> {
    let (key, _) = persistent_key()?;
    let (me, user) = me_and_user()?;
    let me = path_arg(&me)?;
    Ok(format!(
        "# ssh-to-job: `ssh stj-job-N` reaches job N. Written by `ssh-to-job ssh-config`;
# it must come before any `Host *` (ssh keeps the first value it finds):
# `ssh-to-job ssh-config --install` includes it at the top of ~/.ssh/config.
{HOST}
    ProxyCommand {me} proxy --socket {socket} '%n'
    ProxyUseFdpass yes
    KnownHostsCommand {me} known-hosts '%n' '%H'
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlgorithms ssh-ed25519
    CheckHostIP no
    UpdateHostKeys no
    User {user}
    Port 22
    IdentityFile {key}
    IdentitiesOnly yes
    IdentityAgent SSH_AUTH_SOCK
{PINNED}",
        socket = path_arg(socket)?,
        key = path_arg(&key)?,
    ))
}

/// The known_hosts line that trusts the user's host CA for every job.
pub fn ca_line() -> Result<String> {
    Ok(format!("{}\n", host_ca()?.known_hosts_line()?))
}

/// An ed25519 public key in OpenSSH's one-line form.
pub fn parse_ed25519(text: &str) -> Result<[u8; 32]> {
    let key = ssh_key::PublicKey::from_openssh(text.trim())
        .with_context(|| format!("{text:?} is not an OpenSSH public key (ssh-ed25519 AAAA...)"))?;
    match key.key_data() {
        KeyData::Ed25519(k) => Ok(k.0),
        _ => bail!("only ed25519 keys can log in to jobs; make one with ssh-keygen -t ed25519"),
    }
}

/// The block for a machine that reaches only this host's sshd, as `login`:
/// its ssh runs the proxy here in stdio mode for `client_key` (its own key,
/// whose private half, `identity_file` there, never leaves it), and checks
/// every session's host key as a certificate of the user's host CA, whose
/// line it keeps in `~/.ssh/stj_known_hosts`.
pub fn laptop_block(
    socket: &Path,
    login: &str,
    client_key: &str,
    identity_file: &str,
) -> Result<String> {
    if login.is_empty()
        || !login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@:".contains(c))
    {
        bail!("--laptop {login:?}: give the login node as a host name or ssh alias (letters, digits, . - _ @ :)");
    }
    let key = parse_ed25519(client_key)?;
    let public =
        ssh_key::PublicKey::new(KeyData::Ed25519(ssh_key::public::Ed25519PublicKey(key)), "");
    let (me, user) = me_and_user()?;
    // What the login host's shell runs; %n single-quoted in it.
    let remote = format!(
        "{} proxy --stdio --socket {} --client-key {} '%n'",
        shell_quote(&me.to_string_lossy()),
        shell_quote(&socket.to_string_lossy()),
        shell_quote(&public.to_openssh()?),
    );
    // Quoted once more for the shell here, which runs the ProxyCommand;
    // then `%` doubled for ssh, except in our own %n.
    let remote = config_arg(&remote)?.replace("%%n", "%n");
    Ok(format!(
        "# ssh-to-job through {login}: `ssh stj-job-N` reaches job N from this machine.
# Once: `ssh {login} ssh-to-job ssh-config --ca > ~/.ssh/stj_known_hosts`
# (the host CA that certifies each session's host key), and put this block
# before any `Host *` in ~/.ssh/config (ssh keeps the first value it finds).
{HOST}
    ProxyCommand ssh -T -o BatchMode=yes {login} {remote}
    UserKnownHostsFile ~/.ssh/stj_known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com
    CheckHostIP no
    UpdateHostKeys no
    User {user}
    Port 22
    IdentityFile {identity}
    IdentitiesOnly yes
{PINNED}",
        identity = config_arg(identity_file)?,
    ))
}

/// Single quotes for the shell ssh runs commands with, and for ssh_config
/// paths (which take them too).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The file the block lives in, in the account's ~/.ssh.
const BLOCK_FILE: &str = "stj_config";

/// The line that includes the block: by absolute path, because ssh reads
/// ~/.ssh/config from the account's home but resolves a relative Include
/// against $HOME, which cron jobs and editors may set elsewhere.
fn include_line(block: &Path) -> Result<String> {
    let p = block.to_string_lossy();
    // ssh globs (* ? [) and unescapes (\\) Include arguments.
    if p.contains(['"', '\n', '\r', '*', '?', '[', '\\']) {
        bail!("{p:?} cannot be named in an Include line; use a home directory without quotes, newlines, \\ or * ? [");
    }
    Ok(format!("Include \"{p}\""))
}

/// `ssh-to-job ssh-config --install`: the block in `~/.ssh/stj_config`,
/// included from the first line of `~/.ssh/config` (made if missing; the
/// old one kept as `config.stj-backup` when it changes). Running it again
/// changes nothing but the block.
pub fn install(socket: &Path) -> Result<()> {
    let text = block(socket)?;
    install_in(&account_home()?.join(".ssh"), &text)
}

/// A file a user may keep elsewhere (a dotfile manager's symlink): edited
/// at its target, not replaced by a copy that stops following it.
pub(crate) fn followed(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path).with_context(|| {
            format!(
                "{} is a symlink to nowhere; fix or remove it",
                path.display()
            )
        }),
        _ => Ok(path.to_path_buf()),
    }
}

/// The user's ssh directory `dir`, made (0700, as ssh wants it) if there is
/// none; an existing one is left as the user has it.
fn ssh_dir_made(dir: &Path) -> Result<()> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// [`install`] into the ssh directory `dir`.
fn install_in(dir: &Path, text: &str) -> Result<()> {
    ssh_dir_made(dir)?;
    stj_cli::private_file::replace(&dir.join(BLOCK_FILE), text.as_bytes(), 0o600)?;
    let include = include_line(&dir.join(BLOCK_FILE))?;
    let config = followed(&dir.join("config"))?;
    let old = match std::fs::read_to_string(&config) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.display())),
    };
    let new = with_include_first(old.as_deref().unwrap_or(""), &include);
    if old.as_deref() == Some(new.as_str()) {
        println!(
            "{} already includes {BLOCK_FILE} first; the block in {} is up to date",
            config.display(),
            dir.join(BLOCK_FILE).display()
        );
        return Ok(());
    }
    let mode = match &old {
        Some(_) => {
            let backup = dir.join("config.stj-backup");
            std::fs::copy(&config, &backup)
                .with_context(|| format!("cannot back {} up", config.display()))?;
            println!("saved the old {} as {}", config.display(), backup.display());
            std::fs::metadata(&config)?.permissions().mode() & 0o777
        }
        None => 0o600,
    };
    stj_cli::private_file::replace(&config, new.as_bytes(), mode)?;
    println!(
        "{} now starts with `{include}`: `ssh stj-job-N` reaches job N",
        config.display()
    );
    Ok(())
}

/// Whether `line` includes our block, in any form an earlier install (or
/// the user) may have written: relative, with `~`, or by an absolute path
/// from before the home directory moved.
fn includes_our_block(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(kw), Some(arg), None) = (words.next(), words.next(), words.next()) else {
        return false;
    };
    let arg = arg.trim_matches('"');
    kw.eq_ignore_ascii_case("include")
        && (arg == BLOCK_FILE || arg.ends_with(&format!("/.ssh/{BLOCK_FILE}")))
}

/// `config` with our Include as its first line, and nowhere else. A line
/// that is ours but not first (the user moved it, or another installer went
/// above it, or an older install wrote it relative) moves back up: below a
/// `Host *` it would lose.
fn with_include_first(config: &str, include: &str) -> String {
    const NOTE: &str = "# ssh-to-job: first, so that no Host * below overrides stj-job-* (ssh-to-job ssh-config --install)";
    let rest: Vec<&str> = config
        .lines()
        .filter(|l| l.trim() != NOTE && !includes_our_block(l))
        .collect();
    let mut out = format!("{NOTE}\n{include}\n");
    if !rest.is_empty() {
        if rest.first().is_some_and(|l| !l.trim().is_empty()) {
            out.push('\n');
        }
        out.push_str(&rest.join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_include_goes_first_once_and_stays_there() {
        let include = include_line(Path::new("/home/a/.ssh/stj_config")).unwrap();
        assert_eq!(include, "Include \"/home/a/.ssh/stj_config\"");
        let user = "Host *\n    User mallory\n    Port 2222\n";
        let once = with_include_first(user, &include);
        assert!(once.starts_with("# ssh-to-job"), "{once}");
        assert_eq!(once.lines().nth(1), Some(include.as_str()));
        assert!(once.ends_with(user), "{once}");
        assert_eq!(with_include_first(&once, &include), once, "idempotent");
        // Moved below the user's stanza: back up, and only once.
        let moved = format!("{user}{include}\n");
        let fixed = with_include_first(&moved, &include);
        assert_eq!(fixed.matches(&include).count(), 1);
        assert_eq!(fixed.lines().nth(1), Some(include.as_str()));
        assert!(include_line(Path::new("/x\"y")).is_err());
        assert!(include_line(Path::new("/home/*/x")).is_err());
        // Older forms of our line go; another Include stays.
        let old = "Include stj_config\nInclude ~/.ssh/stj_config\nInclude \"/old/home/.ssh/stj_config\"\nInclude work_hosts\n";
        let migrated = with_include_first(old, &include);
        assert_eq!(migrated.matches("stj_config").count(), 1, "{migrated}");
        assert!(migrated.contains("Include work_hosts"));
    }

    #[test]
    fn install_follows_a_symlinked_config_keeps_a_backup_and_is_idempotent() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        let dotfiles = home.path().join("dotfiles");
        std::fs::create_dir_all(&ssh).unwrap();
        std::fs::create_dir_all(&dotfiles).unwrap();
        let user = "Host *\n    User mallory\n";
        std::fs::write(dotfiles.join("ssh_config"), user).unwrap();
        std::os::unix::fs::symlink(dotfiles.join("ssh_config"), ssh.join("config")).unwrap();
        install_in(&ssh, "Host stj-job-*\n").unwrap();
        assert!(std::fs::symlink_metadata(ssh.join("config"))
            .unwrap()
            .file_type()
            .is_symlink());
        let edited = std::fs::read_to_string(dotfiles.join("ssh_config")).unwrap();
        assert!(
            edited.lines().nth(1).unwrap().starts_with("Include \""),
            "{edited}"
        );
        assert!(edited.ends_with(user));
        assert_eq!(
            std::fs::read_to_string(ssh.join("config.stj-backup")).unwrap(),
            user
        );
        install_in(&ssh, "Host stj-job-*\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dotfiles.join("ssh_config")).unwrap(),
            edited
        );
        assert_eq!(
            std::fs::read_to_string(ssh.join(BLOCK_FILE)).unwrap(),
            "Host stj-job-*\n"
        );
    }

    #[test]
    fn config_values_cannot_break_out() {
        assert_eq!(config_arg("/home/a%b/k").unwrap(), "'/home/a%%b/k'");
        assert!(config_arg("/x\nProxyCommand evil").is_err());
        assert!(config_arg("/x/${HOME}").is_err());
        assert!(
            HOST.contains("\"!*'*\""),
            "a name with a quote never matches"
        );
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x";
        for bad in ["", "login node", "login\nHost *", "a;b"] {
            assert!(
                laptop_block(Path::new("/s"), bad, key, "~/.ssh/id_ed25519").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
