//! stj-schedd: the durable job queue, the starter registry and matchmaking.
//! `main.rs` parses flags, binds [`Listeners`] and calls [`run`] with
//! SIGTERM/SIGINT as the shutdown; `state.rs` holds what every part shares.

mod audit;
mod broker;
mod capability_issuer;
pub mod config;
pub mod daemon_sock;
mod denials;
pub mod enrolment;
mod housekeeping;
mod job_source;
mod link;
mod listener;
mod matchmaker;
mod metrics;
mod pace;
pub mod pki;
pub mod queue;
mod registry;
mod session_limits;
pub mod slurm;
mod state;
mod user_api;
mod user_socket;

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify};

pub use config::ScheddConfig;
pub use denials::PER_MINUTE as DENIALS_PER_MINUTE;
pub use state::Budget;
use state::Schedd;

/// File in the state dir holding the address the schedd listens on, so that
/// tools (and tests that bind port 0) can find it.
pub const ADDR_FILE: &str = "schedd.addr";

/// How long a registration may wait for its moment (pace.rs) before the
/// starter is turned away to call back later.
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The schedd's two sockets, bound before it runs (so that a caller, a
/// test for instance, can bind port 0 and learn the address first).
pub struct Listeners {
    /// Starters (TLS), relay halves and shared-port routing.
    pub tcp: TcpListener,
    /// The user API.
    pub user: UnixListener,
    /// Prometheus's, when `metrics_listen` names an address.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen` and `socket` from the config.
    pub async fn bind(config: &ScheddConfig) -> Result<Listeners> {
        let tcp = TcpListener::bind(config.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (is another schedd running? change `listen` in the [schedd] config or --listen)",
                config.listen
            )
        })?;
        let user = bind_user_socket(&config.socket)?;
        let metrics = match config.metrics_listen {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| {
                format!("cannot listen for metrics on {a} (metrics_listen in the [schedd] config)")
            })?),
            None => None,
        };
        Ok(Listeners { tcp, user, metrics })
    }
}

/// Runs the schedd on `listeners` until `shutdown` resolves, then drains:
/// stops accepting, closes every connection task (starters reconnect to
/// the next schedd), writes the summaries of this minute's denial floods,
/// and joins the audit writer so that its last batch commits.
pub async fn run(
    config: ScheddConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    config::validate(&config)?;
    let identity = pki::Identity::load_or_create(&config.state_dir)?;
    let tls = identity.tls_config()?;
    let db_path = config.state_dir.join(queue::DB_FILE);
    let queue = queue::Queue::open(&db_path)
        .with_context(|| format!("cannot open the job queue {}", db_path.display()))?;
    let audit = audit::AuditLog::open(&db_path, config.audit_retention_days)
        .with_context(|| format!("cannot open the audit log in {}", db_path.display()))?;
    let enrolment = enrolment::Enrolment::open(&db_path)
        .with_context(|| format!("cannot open the node table in {}", db_path.display()))?;

    let Listeners {
        tcp,
        user: uds,
        metrics: metrics_listener,
    } = listeners;
    let local = tcp.local_addr()?;
    std::fs::write(config.state_dir.join(ADDR_FILE), local.to_string())?;

    let limits = restore_limits(&queue, &config)?;
    let budget = Budget::for_fd_limit(stj_cli::daemon::fd_limit());
    tracing::info!(?budget, "connection caps (shares of the fd limit)");
    let (changes, _) = watch::channel(0);
    let schedd = Arc::new(Schedd {
        enrolment,
        queue,
        registry: registry::Registry::default(),
        changes,
        schedule: Notify::new(),
        pool_lock: tokio::sync::Mutex::new(()),
        started: Instant::now(),
        rendezvous: broker::rendezvous::Rendezvous::default(),
        audit,
        limits,
        broker_addr: config.broker_addr.clone().unwrap_or_else(|| {
            let ip = if local.ip().is_unspecified() {
                "127.0.0.1".parse().expect("literal")
            } else {
                local.ip()
            };
            std::net::SocketAddr::new(ip, local.port()).to_string()
        }),
        budget,
        relays: Arc::new(tokio::sync::Semaphore::new(budget.relays)),
        denials: denials::Denials::default(),
        stopping: tokio_util::sync::CancellationToken::new(),
        registrations: pace::Pace::new(config.max_registrations_per_sec, REGISTRATION_WAIT),
        metrics: metrics::Metrics::default(),
        tcp_slots: Arc::new(tokio::sync::Semaphore::new(budget.tcp)),
        slurm: (config.jobs == config::Jobs::Slurm).then(|| {
            slurm::SlurmSource::new(
                config.slurm_bin_dir.clone(),
                std::time::Duration::from_secs(config.slurm_cache_secs),
            )
        }),
        config,
    });
    tracing::info!(listen = %local, socket = %schedd.config.socket.display(), "schedd ready");
    // Said once at start, where an admin looks, rather than only to each
    // client that falls back to the relay.
    if !stj_cli::paths::is_daemon_sock_dir(&schedd.config.daemon_sock_dir) {
        tracing::warn!(
            daemon_sock_dir = %schedd.config.daemon_sock_dir.display(),
            "the daemon_sock dir is missing or not root's with mode 1733 (as this schedd sees it): \
             reverse connections are off and clients use the relay; run `stj-schedd init-daemon-sock`, \
             and under systemd a daemon_sock_dir outside /run/lock/stj needs a BindReadOnlyPaths= drop-in \
             (systemctl edit stj-schedd), then restart stj-schedd"
        );
    }

    let api = stj_proto::user::schedd_server::ScheddServer::new(user_api::UserApi {
        schedd: schedd.clone(),
    });
    // Stops accepting when the schedd drains, and lets calls under way end.
    let user_server = tonic::transport::Server::builder()
        .add_service(api)
        .serve_with_incoming_shutdown(
            user_socket::incoming(uds, budget.user_socket),
            schedd.stopping.clone().cancelled_owned(),
        );
    tokio::pin!(user_server);

    let metrics_server = async {
        match metrics_listener {
            Some(l) => {
                tracing::info!(listen = %l.local_addr()?, "serving Prometheus metrics at /metrics");
                let s = schedd.clone();
                stj_cli::metrics_http::serve(l, Arc::new(move || s.metrics_text())).await;
                Err::<(), anyhow::Error>(anyhow::anyhow!("the metrics endpoint stopped"))
            }
            None => std::future::pending().await,
        }
    };
    // None of these ends while the schedd is healthy: one that does is a
    // failure, said loudly and with a non-zero exit, never a quiet exit 0.
    let mut server_ended = false;
    let outcome = tokio::select! {
        r = metrics_server => r,
        _ = listener::run(schedd.clone(), tcp, tls) => Err(anyhow::anyhow!("the TCP listener on {local} stopped")),
        _ = matchmaker::run(schedd.clone()) => Err(anyhow::anyhow!("the matchmaker stopped")),
        _ = housekeeping::run(schedd.clone()) => Err(anyhow::anyhow!("housekeeping stopped")),
        r = &mut user_server => {
            server_ended = true;
            Err(match r {
                Ok(()) => anyhow::anyhow!("the user API server on {} stopped", schedd.config.socket.display()),
                Err(e) => anyhow::Error::new(e).context(format!("the user API server on {} failed", schedd.config.socket.display())),
            })
        }
        _ = shutdown => {
            tracing::info!("schedd shutting down");
            Ok(())
        }
    };
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "schedd stopping");
    }
    std::fs::remove_file(&schedd.config.socket).ok();
    schedd.stopping.cancel();
    // Calls under way (a grant being recorded, a report) finish first, for
    // a moment at most: a Wait may take its whole timeout otherwise.
    if !server_ended
        && tokio::time::timeout(DRAIN_CALLS, &mut user_server)
            .await
            .is_err()
    {
        tracing::warn!("user API calls still under way at shutdown; cut off");
    }
    drain(&schedd).await;
    outcome
}

/// How long calls under way may take once the schedd drains.
const DRAIN_CALLS: std::time::Duration = std::time::Duration::from_secs(2);

/// What the schedd owes before it exits: no connection task left holding a
/// socket (the token is cancelled), and every audit record it accepted
/// committed, this minute's denial summaries included.
async fn drain(schedd: &Arc<Schedd>) {
    for s in schedd.denials.flush(i64::MAX) {
        capability_issuer::write_summary(schedd, s);
    }
    let s = schedd.clone();
    if tokio::task::spawn_blocking(move || s.audit.close())
        .await
        .is_err()
    {
        tracing::error!("closing the audit log failed");
    }
    tracing::info!("schedd drained: connections closed, audit log committed");
}

/// The per-user session counts as the audit records left them: open
/// sessions, and capabilities that may still be used.
fn restore_limits(
    queue: &queue::Queue,
    config: &ScheddConfig,
) -> Result<session_limits::SessionLimits> {
    let ttl = config.capability_ttl_secs as i64;
    let limits = session_limits::SessionLimits::new(session_limits::Caps {
        max_sessions: config.max_sessions_per_user,
        max_pending: config.max_pending_per_user,
    });
    for s in queue
        .live_sessions(queue::now() - ttl)
        .context("cannot read the session records")?
    {
        let Some(id) = stj_proto::session_id::SessionId::parse_hex(&s.session_id) else {
            continue;
        };
        limits.restore(s.uid, id, &s.node, s.started, s.issued_at + ttl);
    }
    Ok(limits)
}

/// Binds the user socket. Anyone may connect (identity comes from
/// SO_PEERCRED), so the socket is world-writable; a stale socket from a
/// crashed schedd is replaced, but never a file that is not a socket.
fn bind_user_socket(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or set `socket` in the [schedd] config",
            path.display()
        ),
        Err(_) => {}
    }
    let l = UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}
