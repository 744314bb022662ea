use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ssh_to_job::jobs_view;
use ssh_to_job::schedd_client::{audit_all, connect, query_all, socket_path, status_error};
use ssh_to_job::session::{self, Options};
use stj_proto::user::{EnvVar, JobSpec, JobState, RemoveRequest, WaitRequest};

/// Submit, list, remove and wait for ssh-to-job batch jobs.
///
/// Examples:
///   stj submit --env N=10 -- ./simulate --steps 1000
///   stj q
///   stj wait 42 --state running --timeout 60 && ssh-to-job 42
#[derive(Parser)]
#[command(name = "stj", version, verbatim_doc_comment)]
struct Cli {
    /// The schedd's UNIX socket [env STJ_SCHEDD_SOCKET; default /run/stj/schedd.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Submit a job; prints its id alone on stdout.
    ///
    /// Examples:
    ///   stj submit -- sleep 600
    ///   stj submit --image /srv/images/busybox --cwd / -- sh -c 'echo hi'
    ///   stj submit --cpus 2 --memory 4G -- ./simulate
    ///   stj submit --interactive                # a shell in a fresh job; removed when you leave
    #[command(verbatim_doc_comment)]
    Submit {
        /// Submit a placeholder job, wait for it, open a session in it, and
        /// remove the job when the session ends (or on Ctrl-C while waiting).
        #[arg(long)]
        interactive: bool,
        /// With --interactive: end the job after this long without a session.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        idle_timeout: std::time::Duration,
        /// Root filesystem directory for the job (on the execute node).
        #[arg(long)]
        image: Option<PathBuf>,
        /// Working directory inside the job [default: current directory; / with --image].
        #[arg(long)]
        cwd: Option<String>,
        /// Environment variable for the job (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// File for the job's stdout, relative to --cwd [default: stj-ID.out; /dev/null with --image].
        #[arg(long)]
        output: Option<String>,
        /// File for the job's stderr, relative to --cwd [default: stj-ID.err; /dev/null with --image].
        #[arg(long)]
        error: Option<String>,
        /// Refuse ssh-to-job sessions into this job.
        #[arg(long)]
        no_ssh: bool,
        /// CPUs the job may use at once (its cgroup's CPU quota; 0.5, 2, ...).
        #[arg(long, value_name = "N", value_parser = ssh_to_job::limits::parse_cpus)]
        cpus: Option<u32>,
        /// Memory the job may use, its sessions included, swap included
        /// (64M, 2G; a bare number is MiB). Past it the kernel kills its
        /// processes and `stj q` says so.
        #[arg(long, value_name = "SIZE", value_parser = ssh_to_job::limits::parse_memory)]
        memory: Option<u64>,
        /// Make this submit idempotent: the same id returns the job it
        /// made before (stj says which id to use if a submit was cut off).
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// The command and its arguments.
        #[arg(
            last = true,
            required_unless_present = "interactive",
            value_name = "CMD"
        )]
        command: Vec<String>,
    },
    /// List jobs that are idle or running (--all: also ended ones).
    Q {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Include completed and removed jobs.
        #[arg(long)]
        all: bool,
        /// Only these jobs.
        ids: Vec<u64>,
    },
    /// The pool's nodes: each starter the schedd knows, its state
    /// (connected; silent since; gone since), slots, jobs, open sessions,
    /// version, the address it registered from, when it was last heard.
    ///
    /// Examples:
    ///   stj nodes
    ///   stj nodes node17 --json
    #[command(verbatim_doc_comment)]
    Nodes {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Only these nodes.
        names: Vec<String>,
    },
    /// Remove jobs (the owner's, or any as root); running ones are killed.
    Rm {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// ssh-to-job requests, granted and denied (root: all; others: their own
    /// and those into their jobs).
    ///
    /// Examples:
    ///   stj audit --job 42
    ///   stj audit --user alice --json
    #[command(verbatim_doc_comment)]
    Audit {
        #[arg(long)]
        job: Option<u64>,
        /// User name or uid.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Write this program's man page and shell completions into DIR.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// Wait until a job reaches a state; exits 1 on timeout, 2 if it never can.
    Wait {
        id: u64,
        /// idle, running, completed or removed.
        #[arg(long, default_value = "completed")]
        state: String,
        /// Give up after this many seconds [default: 3600].
        #[arg(long)]
        timeout: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.debug {
        stj_cli::logging::init(true);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stj: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stj: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// This process's umask (reading it means setting it; it is set back).
fn current_umask() -> u32 {
    // SAFETY: umask cannot fail; the second call restores the first's value.
    unsafe {
        let m = libc::umask(0o077);
        libc::umask(m);
        m as u32
    }
}

fn parse_env(items: &[String]) -> Result<Vec<EnvVar>> {
    items
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok(EnvVar {
                name: k.into(),
                value: v.into(),
            }),
            _ => bail!("--env {kv:?} is not NAME=VALUE"),
        })
        .collect()
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let socket = socket_path(cli.socket);
    match cli.cmd {
        Cmd::Audit { job, user, json } => {
            let uid = match user {
                None => None,
                Some(u) => Some(match u.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => {
                        nix_user_uid(&u).with_context(|| format!("no user {u:?} on this host"))?
                    }
                }),
            };
            let mut c = connect(&socket).await?;
            let records = audit_all(&mut c, job.unwrap_or(0), uid).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ssh_to_job::audit_view::json(&records))?
                );
            } else {
                print!("{}", ssh_to_job::audit_view::table(&records));
            }
        }
        Cmd::GenerateDocs { dir } => {
            stj_cli::generate(
                <Cli as clap::CommandFactory>::command(),
                stj_cli::ManSection::User,
                &dir,
            )?;
        }
        Cmd::Submit {
            interactive,
            idle_timeout,
            image,
            cwd,
            env,
            output,
            error,
            no_ssh,
            cpus,
            memory,
            request_id,
            command,
        } => {
            let image = match image {
                Some(p) => {
                    let abs = std::path::absolute(&p)
                        .with_context(|| format!("bad --image {}", p.display()))?;
                    if !abs.is_dir() {
                        bail!("--image {} is not a directory: give the path of an unpacked root filesystem", p.display());
                    }
                    abs.to_string_lossy().into_owned()
                }
                None => String::new(),
            };
            let cwd = match cwd {
                Some(c) => c,
                None if !image.is_empty() => "/".into(),
                None => std::env::current_dir()
                    .context("cannot tell the current directory; pass --cwd")?
                    .to_string_lossy()
                    .into_owned(),
            };
            if interactive {
                if let Some(placeholder) = slurm_placeholder(&socket).await? {
                    if !image.is_empty() {
                        bail!("--image is for the schedd's own queue; this pool's jobs are Slurm's (sbatch --container runs a job in an OCI bundle)");
                    }
                    let req = ssh_to_job::slurm_interactive::Request {
                        placeholder,
                        idle_timeout,
                        cwd,
                        env: parse_env(&env)?
                            .into_iter()
                            .map(|e| (e.name, e.value))
                            .collect(),
                        millicpus: cpus.unwrap_or(0),
                        memory_bytes: memory.unwrap_or(0),
                    };
                    return ssh_to_job::slurm_interactive::run(req, socket).await;
                }
            }
            let spec = JobSpec {
                args: command,
                env: parse_env(&env)?,
                cwd,
                image,
                output: output.unwrap_or_default(),
                error: error.unwrap_or_default(),
                ssh_enabled: !no_ssh,
                interactive,
                idle_timeout_secs: idle_timeout.as_secs().clamp(1, u32::MAX.into()) as u32,
                umask: Some(current_umask()),
                millicpus: cpus.unwrap_or(0),
                memory_bytes: memory.unwrap_or(0),
            };
            let request_id = match request_id {
                Some(r) => r,
                None => ssh_to_job::submit::new_request_id()?,
            };
            let id = ssh_to_job::submit::submit(&socket, spec, &request_id).await?;
            if !interactive {
                println!("{id}");
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!("stj: interactive job {id} submitted; Ctrl-C while it waits removes it");
            return interactive_session(id, socket).await;
        }
        Cmd::Nodes { json, names } => {
            let mut c = connect(&socket).await?;
            let nodes = ssh_to_job::schedd_client::nodes_all(&mut c, names).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&ssh_to_job::nodes_view::json(&nodes))?
                );
            } else {
                let now = stj_proto::capability::unix_now() as i64;
                print!("{}", ssh_to_job::nodes_view::table(&nodes, now));
            }
        }
        Cmd::Q { json, all, ids } => {
            let mut c = connect(&socket).await?;
            // Live jobs unless --all: the schedd filters, history is paged.
            let jobs = query_all(&mut c, ids, all).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs_view::json(&jobs))?);
            } else {
                print!("{}", jobs_view::table(&jobs));
            }
        }
        Cmd::Rm { ids } => {
            let mut c = connect(&socket).await?;
            let mut failed = false;
            // Many ids go in few calls, each one transaction on the schedd.
            for batch in ids.chunks(10_000) {
                let reply = c
                    .remove(RemoveRequest {
                        job_id: 0,
                        job_ids: batch.to_vec(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for o in reply.outcomes {
                    if o.error.is_empty() {
                        println!("job {} removed", o.job_id);
                    } else {
                        eprintln!("stj: error: {}", o.error);
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Wait { id, state, timeout } => {
            let want = JobState::from_label(&state).with_context(|| {
                format!("unknown state {state:?}: use idle, running, completed or removed")
            })?;
            let mut c = connect(&socket).await?;
            let reply = match c
                .wait(WaitRequest {
                    job_id: id,
                    state: want as i32,
                    timeout_secs: timeout.unwrap_or(0),
                })
                .await
            {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                    eprintln!("stj: {}", s.message());
                    return Ok(ExitCode::from(2));
                }
                Err(s) => return Err(status_error(s)),
            };
            if !reply.reached {
                let now = reply
                    .job
                    .map(|j| {
                        JobState::try_from(j.state)
                            .unwrap_or(JobState::Unspecified)
                            .label()
                    })
                    .unwrap_or("unknown");
                eprintln!("stj: timed out: job {id} is {now}, not {}", want.label());
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `stj submit --interactive`: attach with auto-retry as soon as the job
/// runs; the job goes away when the session ends, however it ends.
async fn interactive_session(id: u64, socket: PathBuf) -> Result<ExitCode> {
    let o = Options {
        auto_retry: true,
        remove_on_interrupt: true,
        ..Options::ssh(stj_proto::job_ref::JobRef::plain(id), socket.clone())
    };
    let result = session::run(&o).await;
    // The placeholder ends by itself once the session is gone; removing it
    // too makes sure nothing lingers (a no-op for an ended job).
    if let Ok(mut c) = connect(&socket).await {
        let _ = c
            .remove(RemoveRequest {
                job_id: id,
                ..Default::default()
            })
            .await;
    }
    match result {
        Ok(code) => Ok(ExitCode::from(code)),
        Err(e) => {
            eprintln!("stj: error: {e:#}");
            eprintln!("stj: job {id} removed");
            Ok(ExitCode::from(255))
        }
    }
}

/// When the pool's jobs are Slurm's, the placeholder its interactive jobs
/// run (the schedd's `slurm_placeholder`); None for the schedd's own queue.
async fn slurm_placeholder(socket: &std::path::Path) -> Result<Option<String>> {
    use stj_proto::user::info_reply::Jobs;
    let mut c = connect(socket).await?;
    let info = c
        .info(stj_proto::user::InfoRequest {})
        .await
        .map_err(ssh_to_job::schedd_client::status_error)?
        .into_inner();
    Ok((info.jobs == Jobs::Slurm as i32).then_some(info.slurm_placeholder))
}

fn nix_user_uid(name: &str) -> Option<u32> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}
