//! The starter's configuration: section `[starter]` of the TOML file
//! (`--config`, default `/etc/stj/stj.toml`); flags override it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

pub use stj_cli::config_file::Jobs;
pub use stj_cli::paths::CONFIG as DEFAULT_CONFIG;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StarterConfig {
    /// `--debug`: sshd's own debug output in the starter's log. Not a knob
    /// of the file.
    #[serde(skip)]
    pub debug: bool,
    /// host:port of the schedd's port.
    pub schedd: String,
    /// File holding the join token from `stj-schedd token`.
    pub token_file: PathBuf,
    /// This node's name in the pool; defaults to the host name.
    pub name: Option<String>,
    /// Per-job scratch (container specs); private to root.
    pub work_dir: PathBuf,
    /// Jobs this node runs at once; defaults to the number of CPUs.
    pub slots: Option<u32>,
    /// Seconds between SIGTERM and SIGKILL when a job is removed.
    pub kill_grace_secs: u64,
    /// Where to accept direct session connections (e.g. "0.0.0.0:0");
    /// unset = listen nowhere (sessions then need reverse or relay).
    pub session_listen: Option<std::net::SocketAddr>,
    /// host:port clients should dial for direct sessions; default: the
    /// listen address, or this node's address towards the schedd when
    /// listening on all interfaces.
    pub session_advertise: Option<String>,
    /// The OpenSSH server run (as the job user) for each session.
    pub sshd_path: PathBuf,
    /// libstj_preload.so; default: next to stj-starter, else /usr/lib/stj.
    pub preload_path: Option<PathBuf>,
    /// Extra sshd_config lines appended to every session's config.
    pub sshd_extra_config: Vec<String>,
    /// Run jobs as node-local uids from this range ("5000-5099") instead of
    /// as their owners (HTCondor's slot users); the uids need no passwd entry.
    pub slot_users: Option<String>,
    /// Sessions may forward TCP ports (ssh -L/-R/-D).
    pub allow_tcp_forwarding: bool,
    /// Sessions may forward X11 (ssh -X/-Y; needs xauth in the job's view).
    pub allow_x11_forwarding: bool,
    /// Sessions may forward the user's ssh agent (ssh -A).
    pub allow_agent_forwarding: bool,
    /// Where job cgroups are made, relative to each cgroup hierarchy's
    /// root; default `stj_<node name>`. One starter per parent: it removes
    /// what it finds there at start-up.
    pub cgroup_parent: Option<String>,
    /// Whose jobs: the schedd's queue (run here in containers of our own),
    /// or Slurm's (found in Slurm's cgroups beside slurmd; none started).
    pub jobs: Jobs,
    /// Processes and threads one job (its sessions included) may have at
    /// once, by its cgroup's pids controller: a fork bomb stays in its job.
    /// 0: no cap. Default [`DEFAULT_JOB_PIDS_MAX`].
    pub job_pids_max: Option<u32>,
    /// Where Prometheus scrapes /metrics; unset: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Processes and threads one job may have at once unless the admin says.
pub const DEFAULT_JOB_PIDS_MAX: u32 = 32768;

impl Default for StarterConfig {
    fn default() -> Self {
        StarterConfig {
            debug: false,
            schedd: "127.0.0.1:9618".into(),
            token_file: PathBuf::from("/etc/stj/join-token"),
            name: None,
            work_dir: PathBuf::from(stj_cli::paths::STARTER_WORK_DIR),
            slots: None,
            kill_grace_secs: 5,
            session_listen: None,
            session_advertise: None,
            sshd_path: PathBuf::from("/usr/sbin/sshd"),
            preload_path: None,
            sshd_extra_config: Vec::new(),
            slot_users: None,
            allow_tcp_forwarding: true,
            allow_x11_forwarding: true,
            allow_agent_forwarding: true,
            cgroup_parent: None,
            jobs: Jobs::Queue,
            job_pids_max: None,
            metrics_listen: None,
        }
    }
}

/// Reads the `[starter]` section of `path` (default [`DEFAULT_CONFIG`],
/// which may be missing; a file the caller named may not).
pub fn load(path: Option<&Path>) -> Result<StarterConfig> {
    Ok(stj_cli::config_file::load_section(path, "starter")?)
}

/// Checks what the file and the flags set together.
pub fn validate(c: &StarterConfig) -> Result<()> {
    // Lexically, and through symlinks when it exists already.
    let real = std::fs::canonicalize(&c.work_dir).unwrap_or_else(|_| c.work_dir.clone());
    anyhow::ensure!(
        !c.work_dir.starts_with("/tmp") && !real.starts_with("/tmp"),
        "work_dir {} is under /tmp, but every job gets a private, empty /tmp: the sshd kit and session files there would be invisible inside jobs; set work_dir in the [starter] config (or --work-dir) to a directory outside /tmp, e.g. /var/lib/stj/starter",
        c.work_dir.display()
    );
    Ok(())
}

pub fn parse(text: &str) -> Result<StarterConfig> {
    Ok(stj_cli::config_file::parse_section(text, "starter")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_typos() {
        let c = parse("[starter]\nschedd = \"h:1\"\nslots = 3\n").unwrap();
        assert_eq!(c.schedd, "h:1");
        assert_eq!(c.slots, Some(3));
        let e = parse("[starter]\nslot = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("slot"));
        let e = parse("[starterr]\nslots = 3\n").unwrap_err();
        assert!(format!("{e:#}").contains("starterr"), "{e:#}");
        parse("[schedd]\nlisten = \"x\"\n[starter]\n").unwrap();
        // Knobs that are gone are refused by name, not ignored: sftp is
        // sshd's internal-sftp now, and --debug is not a file knob.
        for gone in ["sftp_server_path = \"/x\"", "debug = true"] {
            let e = parse(&format!("[starter]\n{gone}\n")).unwrap_err();
            let knob = gone.split(' ').next().unwrap();
            assert!(format!("{e:#}").contains(knob), "{e:#}");
        }
    }

    #[test]
    fn a_work_dir_under_tmp_is_refused_with_the_knob_to_change() {
        let mut c = parse("").unwrap();
        validate(&c).unwrap();
        c.work_dir = "/tmp/stj/node".into();
        let e = format!("{:#}", validate(&c).unwrap_err());
        assert!(
            e.contains("private, empty /tmp") && e.contains("--work-dir"),
            "{e}"
        );
    }
}
