//! One ssh-to-job run, start to end: wait for the job if asked, get a
//! capability, make the data connection, run the OpenSSH program over it,
//! and clean up on every exit path (signals included).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use stj_proto::session_id::SessionId;
use stj_proto::user::{RemoveRequest, ReportExitRequest};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::attach::{self, Mode};
use crate::client_error::is_transient;
use crate::runtime_dir::RuntimeDir;
use crate::schedd_client::connect;
use crate::ssh_command::{alias, proxy_path, Program, SshCommand};
use crate::{fd_pass, user_key, waiting};
use stj_proto::job_ref::JobRef;

pub struct Options {
    /// The job as the user named it (Slurm's 42_7 and 42+1 too) and the
    /// node of its allocation to land on (None: its batch host).
    pub target: attach::Target,
    /// A step of a Slurm job other than its batch step.
    pub step: Option<stj_proto::handshake::Step>,
    pub mode: Mode,
    pub program: Program,
    /// The binary to run for `program`.
    pub ssh_binary: String,
    pub tty: Option<bool>,
    pub copy: bool,
    pub use_ssh_config: bool,
    pub debug: bool,
    pub socket: PathBuf,
    /// The daemon_sock dir the user named; None: the schedd's.
    pub daemon_sock: Option<PathBuf>,
    /// `-o` options for the OpenSSH program.
    pub ssh_options: Vec<String>,
    /// ssh's own flags (-L, -R, -D, -X, -Y, -A, -N), before the host.
    pub ssh_flags: Vec<String>,
    pub args: Vec<String>,
    /// Wait while the job is idle or starting, showing progress.
    pub auto_retry: bool,
    /// Retries of failures that waiting can cure (node away, job starting).
    pub retries: u32,
    /// Remove the job when interrupted (Ctrl-C, SIGTERM, SIGHUP).
    pub remove_on_interrupt: bool,
    /// How long to wait for room under the user's session caps.
    pub room_wait: Duration,
    /// Land in the job's own namespaces, not its innermost container.
    pub outer: bool,
}

impl Options {
    /// A plain ssh session into `job` in auto mode, with defaults for
    /// everything else; callers adjust what they need.
    pub fn ssh(job: JobRef, socket: PathBuf) -> Options {
        Options {
            target: attach::Target::job(job),
            step: None,
            mode: Mode::Auto,
            program: Program::Ssh,
            ssh_binary: "ssh".into(),
            tty: None,
            copy: false,
            use_ssh_config: false,
            debug: false,
            socket,
            daemon_sock: attach::daemon_sock_dir(None),
            ssh_options: vec![],
            ssh_flags: vec![],
            args: vec![],
            auto_retry: false,
            retries: 0,
            remove_on_interrupt: false,
            room_wait: attach::ROOM_WAIT,
            outer: false,
        }
    }
}

struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

async fn remove_job(o: &Options) {
    let job = o.target.job;
    match connect(&o.socket).await {
        Ok(mut c) => match c
            .remove(RemoveRequest {
                job_id: job.id,
                ..Default::default()
            })
            .await
        {
            Ok(_) => eprintln!("ssh-to-job: job {job} removed"),
            Err(s) => eprintln!("ssh-to-job: could not remove job {job}: {}", s.message()),
        },
        Err(e) => eprintln!("ssh-to-job: could not remove job {job}: {e:#}"),
    }
}

/// Tells the schedd's audit record how the session ended. Best effort, and
/// brief: the user is not kept waiting for an audit detail.
async fn report_exit(socket: &std::path::Path, session_id: SessionId, exit_status: i32) {
    let report = async {
        let mut c = connect(socket).await?;
        c.report_exit(ReportExitRequest {
            session_id: session_id.to_vec(),
            exit_status,
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    };
    match tokio::time::timeout(Duration::from_secs(2), report).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %format!("{e:#}"), "could not report the exit status")
        }
        Err(_) => tracing::debug!("reporting the exit status timed out"),
    }
}

/// An ssh started before its session was ready, with the socket its
/// ProxyCommand will ask for the session on.
struct EarlySsh {
    child: tokio::process::Child,
    /// Who it logs in as.
    user: String,
    listener: tokio::net::UnixListener,
}

impl EarlySsh {
    /// Ends an ssh that turned out to be for the wrong account (a slot
    /// user's job, where the schedd knew only the owner's name): SIGTERM
    /// first, so that ssh takes its ProxyCommand with it, quietly.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Runs the session; returns the exit status to exit with.
pub async fn run(o: &Options) -> Result<u8> {
    let mut signals = Signals::new()?;
    // Everything secret lives in here and is removed on every exit path:
    // it is dropped when this function returns, after a signal too.
    let rt = RuntimeDir::create()?;
    let key = user_key::generate(rt.path())?;

    // ssh starts as soon as the schedd granted the session, so that its
    // start-up (exec, options, the ProxyCommand's shell and stj-proxy)
    // overlaps the handshake with the node: it reads the known_hosts file
    // only once it holds the socket, which it gets after the handshake
    // wrote that file.
    let host = alias(o.target.job);
    let known_hosts = rt.path().join("known_hosts");
    let proxy = proxy_path();
    let mut spawned = 0;
    // Each ssh gets a socket of its own: a stale one's ProxyCommand must
    // never be the one handed the session.
    let mut spawn_ssh = |user: &str| -> Result<EarlySsh> {
        spawned += 1;
        let sock_path = rt.path().join(format!("p{spawned}"));
        let listener = fd_pass::bind(&sock_path)?;
        let cmd = SshCommand {
            program: o.program,
            binary: o.ssh_binary.clone(),
            host: host.clone(),
            user,
            key: &key.path,
            known_hosts: &known_hosts,
            proxy: &proxy,
            socket: &sock_path,
            copy: o.copy,
            use_ssh_config: o.use_ssh_config,
            debug: o.debug,
            tty: o.tty,
            extra_options: o.ssh_options.clone(),
            flags: o.ssh_flags.clone(),
            args: o.args.clone(),
        };
        let argv = cmd.argv();
        tracing::debug!(?argv, "running");
        let child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            // The ProxyCommand's shell: a plain sh starts faster than a
            // login shell like bash, and ssh uses SHELL for nothing else.
            .env("SHELL", "/bin/sh")
            // Until it has its socket, an ssh whose session did not come
            // about must not outlive this run.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot run {} (is openssh-client installed?)", argv[0]))?;
        Ok(EarlySsh {
            child,
            user: user.to_string(),
            listener,
        })
    };
    let mut ssh: Option<EarlySsh> = None;

    let mut attempt = 0;
    let (stream, session, path, job_id) = loop {
        let step = async {
            if o.auto_retry {
                waiting::until_running(&o.socket, o.target.job).await?;
            }
            let grant =
                attach::request_waiting(&o.socket, &o.target, key.public, o.room_wait).await?;
            tracing::debug!(job = %o.target.job, job_id = grant.job_id, session_id = %grant.session_id, node = %grant.node, direct = ?grant.direct_addr, "capability granted");
            if ssh.as_ref().map(|s| s.user.as_str()) != Some(grant.user.as_str()) {
                if let Some(old) = ssh.take() {
                    old.stop().await;
                }
                ssh = Some(spawn_ssh(&grant.user)?);
            }
            let started = std::time::Instant::now();
            let (stream, session, path) = attach::connect(
                o.mode,
                &attach::Dial {
                    socket: &o.socket,
                    target: &o.target,
                    daemon_sock: o.daemon_sock.as_deref(),
                    // This run checks the host key itself (its own
                    // known_hosts with the key), no CA needed.
                    host_ca: None,
                    asks: attach::Asks {
                        job_host_key: false,
                        outer: o.outer,
                        step: o.step,
                    },
                },
                &grant,
            )
            .await?;
            tracing::debug!(
                job_id = grant.job_id,
                path = path.as_str(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "connected; handshake complete"
            );
            Ok::<_, anyhow::Error>((stream, session, path, grant.job_id))
        };
        let outcome = tokio::select! {
            r = step => r,
            sig = signals.recv() => {
                eprintln!("ssh-to-job: interrupted while waiting for job {}", o.target.job);
                if o.remove_on_interrupt {
                    remove_job(o).await;
                }
                return Ok(128 + sig as u8);
            }
        };
        match outcome {
            Ok(v) => break v,
            Err(e) if (o.auto_retry || attempt < o.retries) && is_transient(&e) => {
                attempt += 1;
                tracing::debug!(attempt, error = %format!("{e:#}"), "retrying");
                let pause = Duration::from_millis(500 * u64::from(attempt.min(6)));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    sig = signals.recv() => {
                        if o.remove_on_interrupt {
                            remove_job(o).await;
                        }
                        return Ok(128 + sig as u8);
                    }
                }
            }
            Err(e) => return Err(e),
        }
    };

    // The account the node's Ready names is the one to log in as (a slot
    // user's, where the schedd knew only the owner's).
    let EarlySsh {
        mut child,
        listener,
        ..
    } = match ssh {
        Some(s) if s.user == session.user => s,
        other => {
            if let Some(old) = other {
                old.stop().await;
            }
            spawn_ssh(&session.user)?
        }
    };
    user_key::write_known_hosts(&known_hosts, &host, session.host_pubkey)?;
    let serve = fd_pass::serve(listener, stream);
    tokio::pin!(serve);
    let mut served = false;
    let status = loop {
        let sig = tokio::select! {
            st = child.wait() => break st?,
            r = &mut serve, if !served => {
                served = true;
                r?;
                continue;
            }
            sig = signals.recv() => sig,
        };
        // Pass the signal to ssh, let it end, then clean up and report it.
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::try_from(sig).ok(),
            );
        }
        let _ = child.wait().await;
        report_exit(&o.socket, session.session_id, 128 + sig).await;
        if o.remove_on_interrupt {
            remove_job(o).await;
        }
        drop(rt);
        return Ok(128 + sig as u8);
    };
    drop(rt);
    report_exit(&o.socket, session.session_id, status.code().unwrap_or(255)).await;
    // ssh's 255 is a connection failure: say why, when the schedd knows,
    // rather than leave a bare "connection closed". Through the relay a
    // schedd that is gone is the reason itself.
    if status.code() == Some(255) {
        if tokio::net::UnixStream::connect(&o.socket).await.is_err() {
            if path == attach::Via::Relay {
                eprintln!("ssh-to-job: the relay (the schedd) went away and took this session with it; run ssh-to-job again once the schedd is back");
            }
        } else if let Some(why) = crate::why_ended::explain(&o.socket, job_id).await {
            eprintln!("ssh-to-job: the session ended: {why}");
        }
    }
    Ok(
        match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(c), _) => c as u8,
            (None, Some(s)) => 128 + s as u8,
            _ => 255,
        },
    )
}
