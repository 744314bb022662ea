use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The ssh-to-job execute-node daemon. It dials out to the schedd and
/// listens nowhere.
///
/// Examples:
///   stj-starter --schedd schedd.example.org:9618 --token-file /etc/stj/join-token
///   stj-starter --schedd 127.0.0.1:9618 --token-file ./stj-dev/token --name node1 --work-dir ./stj-dev/node1 --slots 4
#[derive(Parser)]
#[command(name = "stj-starter", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// TOML config file ([starter] section).
    #[arg(long, env = "STJ_CONFIG")]
    config: Option<PathBuf>,
    /// host:port of the schedd [config: schedd; default 127.0.0.1:9618].
    #[arg(long)]
    schedd: Option<String>,
    /// File with the join token [config: token_file; default /etc/stj/join-token].
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Node name [config: name; default the host name].
    #[arg(long)]
    name: Option<String>,
    /// Scratch directory [config: work_dir; default /var/lib/stj/starter].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Concurrent jobs [config: slots; default number of CPUs].
    #[arg(long)]
    slots: Option<u32>,
    /// Seconds between SIGTERM and SIGKILL on removal [config: kill_grace_secs; default 5].
    #[arg(long)]
    kill_grace_secs: Option<u64>,
    /// Accept direct session connections here, e.g. 0.0.0.0:0 [config: session_listen; default: nowhere].
    #[arg(long)]
    session_listen: Option<std::net::SocketAddr>,
    /// host:port clients dial for direct sessions [config: session_advertise].
    #[arg(long)]
    session_advertise: Option<String>,
    /// sshd to put in the sshd kit [config: sshd_path; default /usr/sbin/sshd].
    #[arg(long)]
    sshd_path: Option<PathBuf>,
    /// Run jobs as uids from this range, e.g. 5000-5099 [config: slot_users].
    #[arg(long)]
    slot_users: Option<String>,
    /// Where job cgroups go, under each cgroup hierarchy [config: cgroup_parent; default stj_NAME].
    #[arg(long)]
    cgroup_parent: Option<String>,
    /// Whose jobs: queue (run the schedd's jobs here) or slurm (beside
    /// slurmd: sessions into Slurm's jobs; --name must be Slurm's NodeName)
    /// [config: jobs; default queue].
    #[arg(long, value_parser = ["queue", "slurm"])]
    jobs: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics [config: metrics_listen; default: nowhere].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log at debug level (never logs secrets).
    #[arg(long)]
    debug: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Internal: the container's monitor and init (started by the starter itself).
    #[command(hide = true)]
    ContainerInit { spec: PathBuf },
    /// Internal: puts a session's sshd into a running job.
    #[command(hide = true)]
    SessionEnter { spec: PathBuf },
    /// Write this program's man page and shell completions into DIR.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// List slot-user leases (owner, jobs, and uids out of service because
    /// they could not be swept); --release UID returns such a uid to service
    /// once its files are dealt with (`find / -xdev -uid UID`). Run it with
    /// the starter stopped.
    SlotUsers {
        #[arg(long, env = "STJ_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        work_dir: Option<PathBuf>,
        #[arg(long, value_name = "UID")]
        release: Option<u32>,
    },
    /// Internal: the job of `stj submit --interactive`; waits for sessions.
    #[command(hide = true)]
    Placeholder {
        #[arg(long)]
        idle_timeout_secs: u64,
        /// Count sessions in this process's cgroup (a Slurm job's batch
        /// step) instead of its PID namespace (our containers).
        #[arg(long)]
        in_cgroup: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    // The container init must stay single-threaded: dispatch before any runtime.
    match &cli.cmd {
        Some(Cmd::ContainerInit { spec }) => stj_starter::container::init_main(spec),
        Some(Cmd::SessionEnter { spec }) => stj_starter::container::enter::main(spec),
        Some(Cmd::Placeholder {
            idle_timeout_secs,
            in_cgroup,
        }) => stj_starter::container::placeholder::main(
            std::time::Duration::from_secs(*idle_timeout_secs),
            *in_cgroup,
        ),
        Some(Cmd::GenerateDocs { dir }) => {
            if let Err(e) = stj_cli::generate(
                <Cli as clap::CommandFactory>::command(),
                stj_cli::ManSection::Admin,
                dir,
            ) {
                eprintln!("stj-starter: error: {e}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        Some(Cmd::SlotUsers {
            config,
            work_dir,
            release,
        }) => {
            let r = slot_users(config.as_deref(), work_dir.clone(), *release);
            if let Err(e) = r {
                eprintln!("stj-starter: error: {e:#}");
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        None => {}
    }
    if let Err(e) = real_main(cli) {
        eprintln!("stj-starter: error: {e:#}");
        std::process::exit(1);
    }
}

fn slot_users(
    config: Option<&std::path::Path>,
    work_dir: Option<PathBuf>,
    release: Option<u32>,
) -> Result<()> {
    let work = match work_dir {
        Some(w) => w,
        None => stj_starter::config::load(config)?.work_dir,
    };
    if let Some(uid) = release {
        stj_starter::slots::SlotUsers::release_quarantined(&work, uid)?;
        println!("slot uid {uid} released: it can be leased again");
        return Ok(());
    }
    println!("{:<8} {:<10} {:<5} STATE", "UID", "OWNER", "JOBS");
    for (uid, owner, jobs, quarantined) in stj_starter::slots::SlotUsers::list(&work)? {
        let state = match quarantined {
            Some(why) => format!("out of service: {why}"),
            None => "leased".into(),
        };
        println!("{uid:<8} {owner:<10} {jobs:<5} {state}");
    }
    Ok(())
}

fn real_main(cli: Cli) -> Result<()> {
    stj_cli::logging::init(cli.debug);
    let mut c = stj_starter::config::load(cli.config.as_deref())?;
    if let Some(v) = cli.schedd {
        c.schedd = v;
    }
    if let Some(v) = cli.token_file {
        c.token_file = v;
    }
    if let Some(v) = cli.name {
        c.name = Some(v);
    }
    if let Some(v) = cli.work_dir {
        c.work_dir = v;
    }
    if let Some(v) = cli.slots {
        c.slots = Some(v);
    }
    if let Some(v) = cli.kill_grace_secs {
        c.kill_grace_secs = v;
    }
    if let Some(v) = cli.session_listen {
        c.session_listen = Some(v);
    }
    if let Some(v) = cli.session_advertise {
        c.session_advertise = Some(v);
    }
    if let Some(v) = cli.sshd_path {
        c.sshd_path = v;
    }
    if let Some(v) = cli.slot_users {
        c.slot_users = Some(v);
    }
    if let Some(v) = cli.cgroup_parent {
        c.cgroup_parent = Some(v);
    }
    if let Some(v) = cli.metrics_listen {
        c.metrics_listen = Some(v);
    }
    if let Some(v) = cli.jobs {
        c.jobs = match v.as_str() {
            "slurm" => stj_starter::config::Jobs::Slurm,
            _ => stj_starter::config::Jobs::Queue,
        };
    }
    stj_cli::daemon::raise_fd_limit();
    let rt = tokio::runtime::Runtime::new()?;
    c.debug = cli.debug;
    rt.block_on(async {
        let listeners = stj_starter::Listeners::bind(&c).await?;
        stj_starter::run(c, listeners, stj_cli::daemon::shutdown_signal()).await
    })
}
