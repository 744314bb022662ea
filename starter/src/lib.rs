//! stj-starter: one per compute node. Dials out to the schedd (it listens
//! nowhere), runs jobs in containers it makes itself, and reports them.

pub mod cgroup;
pub mod config;
pub mod container;
pub mod identity;
mod in_root;
mod job_locator;
mod jobs;
pub mod kit;
mod link;
mod metrics;
mod report;
mod session;
pub mod slots;
pub mod slurm;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use stj_proto::token::JoinToken;

pub use config::StarterConfig;

pub fn node_name(config: &StarterConfig) -> String {
    config.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "node".into())
    })
}

/// libstj_preload.so: configured, else beside our own binary (a cargo
/// build or a package install), else /usr/lib/stj.
fn preload_path(config: &StarterConfig) -> PathBuf {
    if let Some(p) = &config.preload_path {
        return p.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("libstj_preload.so")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/usr/lib/stj/libstj_preload.so"))
}

/// Builds the sshd kit. Jobs run without it, but sessions cannot: a failure
/// is said at start-up, where the admin looks, and to every client.
fn build_kit(config: &StarterConfig) -> Result<kit::Kit, String> {
    let preload = preload_path(config);
    match kit::build(&config.work_dir, &config.sshd_path, &preload) {
        Ok(k) => {
            tracing::info!(kit = %k.dir.display(), "sshd kit ready");
            Ok(k)
        }
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!(reason = %why, "ssh-to-job sessions are unavailable on this node");
            Err(why)
        }
    }
}

/// The admin's forwarding knobs as sshd_config lines, then the extra lines.
fn sshd_policy(config: &StarterConfig) -> Vec<String> {
    let yn = |b: bool| if b { "yes" } else { "no" };
    let mut v = vec![
        format!("AllowTcpForwarding {}", yn(config.allow_tcp_forwarding)),
        format!("X11Forwarding {}", yn(config.allow_x11_forwarding)),
        format!("AllowAgentForwarding {}", yn(config.allow_agent_forwarding)),
        // ssh -L/-R with UNIX sockets is port forwarding too.
        format!(
            "AllowStreamLocalForwarding {}",
            yn(config.allow_tcp_forwarding)
        ),
    ];
    v.extend(config.sshd_extra_config.iter().cloned());
    v
}

/// `slot_users = "5000-5099"` → (5000, 5099).
fn parse_slot_users(s: &str) -> Result<(u32, u32)> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("slot_users {s:?} must be a uid range like \"5000-5099\""))?;
    let (a, b): (u32, u32) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(
        a > 0 && a <= b,
        "slot_users {s:?}: need 0 < first <= last (root never runs jobs)"
    );
    Ok((a, b))
}

/// Every job and session writes into the work dir: a starter that cannot
/// would register and then fail every job sent to it. Checked by writing.
fn check_work_dir(dir: &std::path::Path) -> Result<()> {
    let jobs = dir.join("jobs");
    let probe = jobs.join(format!(".probe-{}", std::process::id()));
    std::fs::create_dir_all(&jobs)
        .and_then(|_| std::fs::write(&probe, b""))
        .and_then(|_| std::fs::remove_file(&probe))
        .with_context(|| {
            format!(
                "the work dir {} is not writable, so no job could start on this node; fix it (a full or read-only filesystem?), or set work_dir in the [starter] config (or --work-dir)",
                dir.display()
            )
        })
}

/// The join token, needed only until the node has enrolled. A token file
/// others can read is refused: whoever reads it can enrol the names it
/// lists.
fn read_token(path: &std::path::Path, enrolled: bool) -> Result<Option<JoinToken>> {
    match stj_cli::private_file::read(path) {
        Ok(text) => {
            let t = JoinToken::parse(&String::from_utf8_lossy(&text))
                .with_context(|| format!("bad join token in {}", path.display()))?;
            Ok(Some(t))
        }
        Err(e) if e.is_not_found() && enrolled =>
        {
            Ok(None)
        }
        Err(e @ stj_cli::private_file::PrivateFileError::Read { .. }) => Err(e).with_context(|| {
            format!(
                "this node has not enrolled yet and needs a join token: write the output of `stj-schedd token NODE-NAME` (run on the schedd host) to {} with mode 0600, or set token_file / --token-file",
                path.display()
            )
        }),
        Err(e) => Err(e).context("refusing the join token"),
    }
}

/// Where job cgroups go. A parent that is not a plain relative name stops
/// the starter (a typo must not put jobs somewhere unexpected); a node with
/// no usable cgroup hierarchy runs jobs without one (said in the log), and
/// refuses jobs that ask for limits.
fn job_cgroups(config: &StarterConfig, name: &str) -> Result<Option<cgroup::CgroupTree>> {
    let parent = config
        .cgroup_parent
        .clone()
        .unwrap_or_else(|| format!("stj_{}", cgroup_safe(name)));
    cgroup::check_parent(&parent)
        .context("bad cgroup_parent in the [starter] config (or --cgroup-parent)")?;
    match cgroup::CgroupTree::detect(&parent) {
        Err(e @ cgroup::CgroupError::InUse(_)) => Err(e.into()),
        Ok(tree) => {
            let swept = tree.sweep();
            tracing::info!(cgroups = %tree.describe(), left_over_jobs_removed = swept, "jobs get a cgroup each");
            Ok(Some(tree))
        }
        // A parent the admin named must work: running jobs uncontained
        // instead would be a typo changing behaviour silently.
        Err(e) if config.cgroup_parent.is_some() => Err(e).context(format!(
            "cannot use cgroup_parent {parent:?} from the [starter] config (or --cgroup-parent)"
        )),
        Err(e) => {
            tracing::warn!(error = %e, "jobs run without a cgroup of their own; jobs that ask for --cpus or --memory are refused");
            Ok(None)
        }
    }
}

/// A node name as one cgroup directory name.
fn cgroup_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The starter's listening sockets, bound before it runs: the direct
/// session port, when `session_listen` asks for one, and Prometheus's,
/// when `metrics_listen` does.
pub struct Listeners {
    pub sessions: Option<tokio::net::TcpListener>,
    pub metrics: Option<tokio::net::TcpListener>,
}

impl Listeners {
    pub async fn bind(config: &StarterConfig) -> Result<Listeners> {
        let sessions = match config.session_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for sessions on {addr} (session_listen / --session-listen)")
            })?),
            None => None,
        };
        let metrics = match config.metrics_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!(
                    "cannot listen for metrics on {addr} (metrics_listen in the [starter] config)"
                )
            })?),
            None => None,
        };
        Ok(Listeners { sessions, metrics })
    }
}

/// Runs the starter until `shutdown` resolves (or its link fails for good).
/// Its jobs end with it: each container's monitor sees the starter's end of
/// its lifeline close and kills the container.
pub async fn run(
    config: StarterConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let debug = config.debug;
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "stj-starter must run as root: it creates namespaces and runs jobs as their owners"
        );
    }
    config::validate(&config)?;
    check_work_dir(&config.work_dir)?;
    let identity = identity::NodeIdentity::load_or_create(&config.work_dir)?;
    let token = read_token(&config.token_file, identity.schedd_ca.is_some())?;
    let ca_pin = match (identity.schedd_ca, &token) {
        (Some(enrolled), Some(t)) if t.ca_sha256 != enrolled => anyhow::bail!(
            "the join token in {} pins schedd CA {}, but this node enrolled with the schedd whose CA is {}; to move the node to another schedd, remove {} (its identity) and start again",
            config.token_file.display(),
            hex::encode(t.ca_sha256),
            hex::encode(enrolled),
            identity.dir.display()
        ),
        (Some(enrolled), _) => enrolled,
        (None, Some(t)) => t.ca_sha256,
        (None, None) => unreachable!("read_token requires a token before enrolment"),
    };
    let slurm = config.jobs == config::Jobs::Slurm;
    // Beside slurmd the starter runs no job of its own: no slot to offer.
    let slots = match slurm {
        true => 0,
        false => config.slots.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        }),
    };
    if slurm {
        // Knobs for the jobs this starter runs itself: with Slurm they
        // would do nothing, and an admin who set one expects them to.
        for (set, knob) in [
            (config.slot_users.is_some(), "slot_users"),
            (config.slots.is_some(), "slots"),
            (config.cgroup_parent.is_some(), "cgroup_parent"),
            (config.job_pids_max.is_some(), "job_pids_max"),
        ] {
            anyhow::ensure!(
                !set,
                "{knob} is for the jobs this starter runs itself; with jobs = \"slurm\" Slurm runs them (its own cgroup.conf limits them): remove {knob} from the [starter] config (or its flag)"
            );
        }
    }
    let name = node_name(&config);
    let slot_users = config
        .slot_users
        .as_deref()
        .map(parse_slot_users)
        .transpose()
        .context("bad slot_users in the [starter] config (or --slot-users)")?;
    tracing::info!(node = %name, slots, schedd = %config.schedd, "starter starting");
    let slot_users = match slot_users {
        Some((first, last)) => Some(Arc::new(slots::SlotUsers::open(
            &config.work_dir,
            first,
            last,
        )?)),
        None => None,
    };
    let kit = build_kit(&config);
    let cgroups = match slurm {
        true => None,
        false => job_cgroups(&config, &name)?,
    };
    let (jobs, events) = jobs::Jobs::new(jobs::JobsConfig {
        work_dir: config.work_dir.clone(),
        kill_grace: Duration::from_secs(config.kill_grace_secs),
        kit: kit.as_ref().ok().cloned(),
        slot_users,
        cgroups,
        runs_none: slurm,
        pids_max: config.job_pids_max.unwrap_or(config::DEFAULT_JOB_PIDS_MAX),
    });
    // Where sessions find jobs: ours, or Slurm's (DESIGN §12).
    let locator: Arc<dyn job_locator::JobLocator> = match slurm {
        true => {
            tracing::info!(node = %name, "serving sessions into Slurm's jobs on this node (its Slurm NodeName must be {name})");
            slurm::SlurmJobs::new(name.clone(), config.work_dir.clone())?
        }
        false => jobs.clone(),
    };
    let key = Arc::new(session::StarterKey::default());
    let sessions = session::Sessions::new(
        name.clone(),
        key.clone(),
        locator,
        jobs.reporter(),
        session::SshdConfig {
            extra: sshd_policy(&config),
            debug,
        },
        kit,
    );
    let listener = listeners.sessions;
    let metrics_server = {
        let (sessions, jobs) = (sessions.clone(), jobs.clone());
        async move {
            match listeners.metrics {
                Some(l) => {
                    tracing::info!(listen = ?l.local_addr().ok(), "serving Prometheus metrics at /metrics");
                    let render = move || {
                        sessions.metrics.render(
                            sessions.open_list().len() as i64,
                            jobs.running().len() as i64,
                        )
                    };
                    stj_cli::metrics_http::serve(l, Arc::new(render)).await
                }
                None => std::future::pending().await,
            }
        }
    };
    let session_listen = listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(a) = session_listen {
        tracing::info!(listen = %a, "accepting direct session connections");
    }
    let params = link::LinkParams {
        schedd: config.schedd.clone(),
        ca_pin,
        join_secret: token.map(|t| t.secret.to_vec()).unwrap_or_default(),
        identity: Arc::new(identity),
        name,
        slots,
        session_listen,
        session_advertise: config.session_advertise.clone(),
        key,
        sessions: sessions.clone(),
    };
    let direct = async {
        match listener {
            Some(l) => session::listen(sessions, l).await,
            None => std::future::pending().await,
        }
    };
    // Neither the link nor the session port ends while the starter is
    // healthy: one that does is a failure, never a quiet exit 0.
    tokio::select! {
        r = link::run(params, jobs, events) => r,
        _ = direct => Err(anyhow::anyhow!("the direct session port stopped accepting")),
        _ = metrics_server => Err(anyhow::anyhow!("the metrics endpoint stopped")),
        _ = shutdown => {
            tracing::info!("starter shutting down; its jobs end with it");
            Ok(())
        }
    }
}
