//! The OpenSSH command line for a session: ssh, scp, sftp (and ssh for
//! rsync/git in rsh mode), all with the same pinned key, host key and
//! ProxyCommand.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Ssh,
    Scp,
    Sftp,
}

impl Program {
    pub fn parse(s: &str) -> Option<Program> {
        let name = Path::new(s).file_name()?.to_str()?;
        match name {
            "ssh" => Some(Program::Ssh),
            "scp" => Some(Program::Scp),
            "sftp" => Some(Program::Sftp),
            _ => None,
        }
    }
}

pub struct SshCommand<'a> {
    pub program: Program,
    /// The binary to run (`ssh`, or a path given with --ssh).
    pub binary: String,
    /// The name ssh knows the job by (`stj-job-…`, see [`alias`]).
    pub host: String,
    pub user: &'a str,
    pub key: &'a Path,
    pub known_hosts: &'a Path,
    pub proxy: &'a Path,
    pub socket: &'a Path,
    pub copy: bool,
    pub use_ssh_config: bool,
    pub debug: bool,
    /// -t / -T for ssh.
    pub tty: Option<bool>,
    /// Extra `-o` options (rsh mode passes the caller's through).
    pub extra_options: Vec<String>,
    /// ssh's own flags (-L, -R, -D, -X, -Y, -A, -N), placed before the host.
    pub flags: Vec<String>,
    pub args: Vec<String>,
}

/// The host name a session's ssh uses for job `job` (its known_hosts line
/// names it too): the job as the user named it.
pub fn alias(job: impl std::fmt::Display) -> String {
    format!("stj-job-{job}")
}

/// Single-quotes for the shell ssh runs the ProxyCommand with.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', "'\\''"))
}

impl SshCommand<'_> {
    pub fn argv(&self) -> Vec<String> {
        let host = self.host.clone();
        let mut v = vec![self.binary.clone()];
        if !self.use_ssh_config {
            // A user's ~/.ssh/config (IdentityFile, User, Port, ControlMaster...)
            // must not change where or as whom this session logs in.
            v.extend(["-F".into(), "none".into()]);
        }
        let proxy = if self.copy {
            format!("{} --copy {}", sh_quote(self.proxy), sh_quote(self.socket))
        } else {
            format!("{} {}", sh_quote(self.proxy), sh_quote(self.socket))
        };
        let opts = [
            format!("IdentityFile={}", self.key.display()),
            // Only this key is offered. The agent stays reachable (no
            // IdentityAgent=none): -A forwards it, and it offers nothing here.
            "IdentitiesOnly=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            format!("HostKeyAlias={host}"),
            "HostKeyAlgorithms=ssh-ed25519".into(),
            "CheckHostIP=no".into(),
            "UpdateHostKeys=no".into(),
            format!("ProxyCommand={proxy}"),
            format!("ProxyUseFdpass={}", if self.copy { "no" } else { "yes" }),
            // Even with --ssh-config a ControlMaster must not capture this
            // session; as -o options these work for ssh, scp, sftp and rsync.
            "ControlMaster=no".into(),
            "ControlPath=none".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "PreferredAuthentications=publickey".into(),
            format!("User={}", self.user),
            format!("LogLevel={}", if self.debug { "DEBUG" } else { "ERROR" }),
        ];
        for o in opts.iter().chain(&self.extra_options) {
            v.push("-o".into());
            v.push(o.clone());
        }
        match self.program {
            Program::Ssh => {
                match self.tty {
                    // -t is an explicit request: honour it even when our
                    // stdin is not a terminal (ssh's own -t would not).
                    Some(true) => v.push("-tt".into()),
                    Some(false) => v.push("-T".into()),
                    None => {}
                }
                v.extend(self.flags.iter().cloned());
                v.push(host);
                v.extend(self.args.iter().cloned());
            }
            Program::Scp => {
                // `remote:PATH` names the job's side.
                v.extend(self.args.iter().map(|a| match a.strip_prefix("remote:") {
                    Some(rest) => format!("{host}:{rest}"),
                    None => a.clone(),
                }));
            }
            Program::Sftp => {
                v.extend(self.args.iter().cloned());
                v.push(host);
            }
        }
        v
    }
}

/// `stj-proxy` beside our own binary, else from PATH.
pub fn proxy_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("stj-proxy")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("stj-proxy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(program: Program, args: &[&str]) -> Vec<String> {
        SshCommand {
            program,
            binary: "x".into(),
            host: alias(42),
            user: "alice",
            key: Path::new("/r/k"),
            known_hosts: Path::new("/r/kh"),
            proxy: Path::new("/bin/stj proxy"),
            socket: Path::new("/r/p"),
            copy: false,
            use_ssh_config: false,
            debug: false,
            tty: Some(true),
            extra_options: vec![],
            flags: vec![],
            args: args.iter().map(|s| s.to_string()).collect(),
        }
        .argv()
    }

    #[test]
    fn ssh_ignores_user_config_and_pins_everything() {
        let v = cmd(Program::Ssh, &["echo", "hi"]);
        assert_eq!(&v[1..3], ["-F", "none"]);
        assert!(v.contains(&"ProxyCommand='/bin/stj proxy' '/r/p'".to_string()));
        assert!(v.contains(&"StrictHostKeyChecking=yes".to_string()));
        assert!(v.contains(&"ControlPath=none".to_string()));
        assert_eq!(&v[v.len() - 4..], ["-tt", "stj-job-42", "echo", "hi"]);
    }

    #[test]
    fn scp_rewrites_remote_and_sftp_puts_host_last() {
        let v = cmd(Program::Scp, &["a", "remote:/b"]);
        assert_eq!(&v[v.len() - 2..], ["a", "stj-job-42:/b"]);
        let v = cmd(Program::Sftp, &["-b", "batch"]);
        assert_eq!(&v[v.len() - 3..], ["-b", "batch", "stj-job-42"]);
    }
}
