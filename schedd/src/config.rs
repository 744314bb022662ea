//! The schedd's configuration: a TOML file (`--config`, default
//! `/etc/stj/stj.toml`, section `[schedd]`) with every knob, and flags that
//! override it. packaging/stj.toml lists every knob with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

pub use stj_cli::config_file::Jobs;
pub use stj_cli::paths::CONFIG as DEFAULT_CONFIG;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheddConfig {
    /// TCP address starters dial (TLS).
    pub listen: SocketAddr,
    /// UNIX socket for the user API (`stj`, `ssh-to-job`).
    pub socket: PathBuf,
    /// SQLite queue, CA, server certificate and join secret live here.
    pub state_dir: PathBuf,
    /// How often each side of the starter link sends a heartbeat; a link
    /// silent for three periods is dropped.
    pub heartbeat_secs: u32,
    /// Pool-wide switch for ssh-to-job sessions.
    pub enable_ssh_to_job: bool,
    /// How long a disconnected starter's running jobs stay "running" before
    /// they go back to idle (the starter may be behind a network cut and
    /// still running them).
    pub job_lease_secs: u64,
    /// Lifetime of an ssh-to-job capability; the client must finish its
    /// handshake with the starter within it.
    pub capability_ttl_secs: u64,
    /// Where clients on this host make the UNIX sockets that reverse
    /// connections are handed to (create with `stj-schedd init-daemon-sock`).
    pub daemon_sock_dir: PathBuf,
    /// How long a relay half waits for its partner.
    pub relay_pairing_secs: u64,
    /// The schedd's port as clients on this host dial it (relay); default:
    /// the listen address, with 127.0.0.1 for an unspecified IP.
    pub broker_addr: Option<String>,
    /// Sessions one user may have open at once (root: no cap).
    pub max_sessions_per_user: usize,
    /// Capabilities one user may hold unused at once (granted, handshake not
    /// done, not expired): bounds the handshakes one user keeps pending on
    /// the nodes (root: no cap).
    pub max_pending_per_user: usize,
    /// Audit records older than this are dropped (0: keep them all).
    pub audit_retention_days: u64,
    /// Jobs one user may have idle or running at once.
    pub max_jobs_per_user: usize,
    /// Ended jobs are dropped this long after they ended (0: keep them all).
    pub job_retention_days: u64,
    /// Whose jobs sessions go into: the schedd's own queue, or Slurm's.
    pub jobs: Jobs,
    /// Where Slurm's client commands (squeue, scontrol) are.
    pub slurm_bin_dir: PathBuf,
    /// How long an answer from Slurm about a job is reused.
    pub slurm_cache_secs: u64,
    /// The stj-starter binary on the nodes, which `stj submit --interactive`
    /// runs as the placeholder of an interactive Slurm job.
    pub slurm_placeholder: PathBuf,
    /// Starter registrations admitted a second (TLS handshake and
    /// reconciliation each); more wait their turn, or call back later.
    pub max_registrations_per_sec: u32,
    /// Where Prometheus scrapes /metrics; unset: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for ScheddConfig {
    fn default() -> Self {
        ScheddConfig {
            listen: "0.0.0.0:9618".parse().expect("literal address"),
            socket: PathBuf::from(stj_cli::paths::SCHEDD_SOCKET),
            state_dir: PathBuf::from(stj_cli::paths::SCHEDD_STATE_DIR),
            heartbeat_secs: 10,
            enable_ssh_to_job: true,
            job_lease_secs: 1200,
            capability_ttl_secs: 60,
            daemon_sock_dir: PathBuf::from(stj_cli::paths::DAEMON_SOCK_DIR),
            relay_pairing_secs: 10,
            broker_addr: None,
            max_sessions_per_user: 64,
            max_pending_per_user: 32,
            audit_retention_days: 365,
            max_jobs_per_user: 10_000,
            job_retention_days: 30,
            jobs: Jobs::Queue,
            slurm_bin_dir: PathBuf::from("/usr/bin"),
            slurm_cache_secs: 2,
            slurm_placeholder: PathBuf::from("/usr/sbin/stj-starter"),
            max_registrations_per_sec: 2000,
            metrics_listen: None,
        }
    }
}

/// Checks what the file and the flags set together.
pub fn validate(c: &ScheddConfig) -> Result<()> {
    anyhow::ensure!(
        c.max_registrations_per_sec > 0,
        "max_registrations_per_sec = 0 in [schedd] would admit no starter: give a rate (default 2000)"
    );
    anyhow::ensure!(
        c.slurm_cache_secs <= 60,
        "slurm_cache_secs = {} in [schedd]: at most 60 (answers older than that would let sessions into jobs Slurm has moved on from)",
        c.slurm_cache_secs
    );
    if c.jobs == Jobs::Slurm {
        for cmd in ["squeue", "scontrol"] {
            let p = c.slurm_bin_dir.join(cmd);
            anyhow::ensure!(
                p.is_file(),
                "jobs = \"slurm\" in [schedd], but {} does not exist: install Slurm's client commands on this host, or set slurm_bin_dir",
                p.display()
            );
        }
    }
    Ok(())
}

/// Reads the `[schedd]` section of `path` (default [`DEFAULT_CONFIG`],
/// which may be missing; a file the caller named may not).
pub fn load(path: Option<&Path>) -> Result<ScheddConfig> {
    check(stj_cli::config_file::load_section(path, "schedd")?)
}

pub fn parse(text: &str) -> Result<ScheddConfig> {
    check(stj_cli::config_file::parse_section(text, "schedd")?)
}

fn check(c: ScheddConfig) -> Result<ScheddConfig> {
    anyhow::ensure!(
        c.heartbeat_secs >= 1,
        "schedd.heartbeat_secs must be at least 1"
    );
    Ok(c)
}

#[cfg(test)]
mod tests {

    #[test]
    fn slurm_knobs_are_checked_at_start() {
        let mut c = ScheddConfig {
            slurm_cache_secs: 61,
            ..ScheddConfig::default()
        };
        assert!(format!("{:#}", validate(&c).unwrap_err()).contains("slurm_cache_secs"));
        c.slurm_cache_secs = 2;
        c.jobs = Jobs::Slurm;
        c.slurm_bin_dir = "/nonexistent".into();
        let e = format!("{:#}", validate(&c).unwrap_err());
        assert!(
            e.contains("/nonexistent/squeue") && e.contains("slurm_bin_dir"),
            "{e}"
        );
        c.jobs = Jobs::Queue;
        validate(&c).unwrap();
    }
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = parse("[schedd]\nlisten = \"127.0.0.1:1234\"\n").unwrap();
        assert_eq!(c.listen.port(), 1234);
        assert_eq!(c.heartbeat_secs, 10);
        assert!(c.enable_ssh_to_job);
    }

    #[test]
    fn unknown_knob_is_an_error_naming_it() {
        let e = parse("[schedd]\nlisen = \"x\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("lisen"), "{e:#}");
    }

    #[test]
    fn a_misspelled_section_is_an_error_naming_it() {
        for typo in [
            "[shcedd]\nlisten = \"127.0.0.1:1\"\n",
            "[starterr]\n",
            "[client]\n",
        ] {
            let e = format!("{:#}", parse(typo).unwrap_err());
            let name = typo.trim_start_matches('[').split(']').next().unwrap();
            assert!(e.contains(name), "{typo}: {e}");
        }
        // The other daemon's section is fine here.
        parse("[schedd]\n[starter]\nslots = 2\n").unwrap();
    }

    #[test]
    fn wrong_type_is_an_error() {
        assert!(parse("[schedd]\nheartbeat_secs = \"ten\"\n").is_err());
    }
}
