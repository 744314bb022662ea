use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ssh_to_job::schedd_client::socket_path;
use ssh_to_job::session::{self, Options};
use ssh_to_job::ssh_command::Program;
use ssh_to_job::{attach, ssh_config};
use stj_proto::job_ref::JobRef;

/// Open a real OpenSSH session inside a running job: same container,
/// environment and working directory.
///
/// Examples:
///   ssh-to-job 42                                   # interactive shell in job 42
///   ssh-to-job 42 'ps -ef; pwd'                     # run a command, get its exit status
///   ssh-to-job --ssh scp 42 -- results.tar remote:  # copy into the job's working directory
///   ssh-to-job --ssh sftp 42
///   rsync -a -e 'ssh-to-job --rsh' data/ 42:data/   # rsync (and GIT_SSH_COMMAND) style
///   ssh-to-job --mode relay --debug 42 hostname     # through the schedd's relay; say what happened
///   ssh-to-job -L 8888:localhost:8888 42 -N         # reach a notebook server in the job
///   ssh-to-job ssh-config --install                 # then plain `ssh stj-job-42` works
#[derive(Parser, Debug)]
#[command(
    name = "ssh-to-job",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// How to reach the job's node: auto, direct, reverse or relay.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Where reverse connections are handed to us [env STJ_DAEMON_SOCK_DIR; default: the schedd's daemon_sock_dir].
    #[arg(long)]
    daemon_sock_dir: Option<PathBuf>,
    /// The OpenSSH program to run: ssh, scp or sftp (or a path to one).
    #[arg(long, default_value = "ssh")]
    ssh: String,
    /// Force a pty.
    #[arg(short = 't', conflicts_with = "no_tty")]
    tty: bool,
    /// Disable the pty.
    #[arg(short = 'T')]
    no_tty: bool,
    /// Relay bytes through stj-proxy instead of handing ssh the socket.
    #[arg(long)]
    copy: bool,
    /// Read ~/.ssh/config (ControlMaster/ControlPath stay off for this session).
    #[arg(long)]
    ssh_config: bool,
    /// The schedd's UNIX socket [env STJ_SCHEDD_SOCKET].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Say what happens, and run ssh with -o LogLevel=DEBUG.
    #[arg(long)]
    debug: bool,
    /// Wait while the job is idle or starting (with progress), then attach.
    #[arg(long)]
    auto_retry: bool,
    /// Retry failures that waiting can cure (node away, job starting) N times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retry: u32,
    /// Remove the job if interrupted (Ctrl-C, SIGTERM, SIGHUP).
    #[arg(long)]
    remove_on_interrupt: bool,
    /// Land in the job's own container, not the innermost one its program
    /// runs in (the default, when the job started a container of its own).
    #[arg(long)]
    outer: bool,
    /// A node of the job's allocation to open the session on (Slurm
    /// multi-node jobs) [default: the node its program started on].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// The step of a Slurm job to enter: batch (the default), extern, or a
    /// step number (squeue -s lists them).
    #[arg(long, value_name = "STEP")]
    step: Option<stj_proto::handshake::Step>,
    /// While your own caps are full (max_sessions_per_user,
    /// max_pending_per_user), wait this long for room before giving up
    /// (0: do not wait).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    room_wait: u64,
    /// Forward a local port (ssh -L).
    #[arg(short = 'L', value_name = "SPEC")]
    local_forward: Vec<String>,
    /// Forward a remote port (ssh -R).
    #[arg(short = 'R', value_name = "SPEC")]
    remote_forward: Vec<String>,
    /// Dynamic (SOCKS) forwarding (ssh -D).
    #[arg(short = 'D', value_name = "SPEC")]
    dynamic_forward: Vec<String>,
    /// X11 forwarding (ssh -X).
    #[arg(short = 'X')]
    x11: bool,
    /// Trusted X11 forwarding (ssh -Y).
    #[arg(short = 'Y')]
    x11_trusted: bool,
    /// Agent forwarding (ssh -A).
    #[arg(short = 'A')]
    agent: bool,
    /// No remote command, just forwardings (ssh -N).
    #[arg(short = 'N')]
    no_command: bool,
    /// An ssh option (ssh -o), repeatable.
    #[arg(short = 'o', value_name = "OPTION")]
    option: Vec<String>,
    /// The job id (Slurm: also 42_7 for an array task, 42+1 for a
    /// heterogeneous job's component).
    job: Option<JobRef>,
    /// Command to run in the job (for scp/sftp: their arguments; `remote:` names the job's side).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// The `Host stj-job-*` block for ssh: then plain ssh, scp, sftp, rsync,
    /// git and VS Code Remote-SSH reach job N as `stj-job-N`. Printed, or
    /// with --install written to ~/.ssh/stj_config and included from the
    /// first line of ~/.ssh/config (where no `Host *` can override it).
    SshConfig {
        /// Write the block and the Include (idempotent; the old config is
        /// kept as ~/.ssh/config.stj-backup).
        #[arg(long, conflicts_with_all = ["ca", "laptop"])]
        install: bool,
        /// Print only the known_hosts line that trusts your host CA for
        /// every job (for a machine that reaches jobs through this one).
        #[arg(long, conflicts_with = "laptop")]
        ca: bool,
        /// Print the block for a machine (a laptop) that reaches only this
        /// host's sshd, as LOGIN (a host name or ssh alias there).
        #[arg(long, value_name = "LOGIN", requires = "client_key")]
        laptop: Option<String>,
        /// With --laptop: the public key (`ssh-ed25519 AAAA...`) that ssh
        /// there logs in with; its private half stays there.
        #[arg(long, value_name = "PUBKEY")]
        client_key: Option<String>,
        /// With --laptop: where that private half is, there.
        #[arg(long, value_name = "PATH", default_value = "~/.ssh/id_ed25519")]
        identity_file: String,
        /// The schedd's UNIX socket the block uses [env STJ_SCHEDD_SOCKET].
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// ProxyCommand of that block (`ssh-to-job proxy %n`, or `%h` where
    /// `%n` is not expanded). Hands ssh the socket when stdout is one
    /// (ProxyUseFdpass yes), else relays bytes: paramiko, Windows OpenSSH,
    /// through a login node (`ssh LOGIN ssh-to-job proxy --stdio %h`).
    Proxy {
        host: String,
        /// Relay bytes even when stdout is a socket (libssh-based clients,
        /// which give a socketpair but want bytes).
        #[arg(long)]
        stdio: bool,
        /// Get the capability for this public key (`ssh-ed25519 AAAA...`)
        /// instead of your stj key here: an ssh elsewhere logs in with it.
        #[arg(long, value_name = "PUBKEY")]
        client_key: Option<String>,
        /// Ask for the job's own host key (the one `ssh-to-job host-key
        /// --add` put in known_hosts) instead of a one-time key: for
        /// clients that check host keys only there (paramiko, Ansible).
        #[arg(long)]
        job_key: bool,
        /// The schedd's UNIX socket [env STJ_SCHEDD_SOCKET].
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Where reverse connections are handed to us [env STJ_DAEMON_SOCK_DIR].
        #[arg(long)]
        daemon_sock_dir: Option<PathBuf>,
    },
    /// Each job's SSH host key, learnt through a handshake with its starter,
    /// as known_hosts lines; --add also puts them in ~/.ssh/known_hosts. For
    /// clients that check host keys only there (paramiko, Ansible's paramiko
    /// connection, Fabric); a job keeps its key for its life.
    HostKey {
        /// Also write the lines into ~/.ssh/known_hosts (replacing older
        /// lines for these jobs).
        #[arg(long)]
        add: bool,
        /// The schedd's UNIX socket [env STJ_SCHEDD_SOCKET].
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(required = true)]
        jobs: Vec<JobRef>,
    },
    /// KnownHostsCommand of that block (`%n %H`); prints the session's host key.
    KnownHosts {
        host: String,
        /// The name ssh looks the key up by (`%H`).
        lookup: Option<String>,
    },
    /// Write this program's man page and shell completions into DIR.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
}

/// What an rsh-style caller (rsync -e, GIT_SSH_COMMAND) passes us:
/// `[ssh options] [user@]JOBID command...`.
struct RshArgs {
    job: JobRef,
    options: Vec<String>,
    command: Vec<String>,
}

fn parse_rsh(args: &[String]) -> Result<RshArgs> {
    let mut options = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        match a.as_str() {
            "-o" => {
                let v = args.get(i + 1).context("-o needs a value")?;
                // Options that would redirect the session are ours to set.
                let key = v
                    .split(['=', ' '])
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if !matches!(
                    key.as_str(),
                    "proxycommand"
                        | "hostname"
                        | "user"
                        | "identityfile"
                        | "userknownhostsfile"
                        | "hostkeyalias"
                ) {
                    options.push(v.clone());
                }
                i += 2;
            }
            "-l" | "-p" | "-i" | "-F" | "-c" | "-m" | "-e" | "-b" => i += 2,
            s if s.starts_with('-') && s.len() > 1 => i += 1,
            _ => break,
        }
    }
    let host = args
        .get(i)
        .context("usage: ssh-to-job --rsh [ssh options] JOBID COMMAND...")?;
    let id = host
        .rsplit('@')
        .next()
        .unwrap_or(host)
        .trim_start_matches("stj-job-");
    let job = id
        .parse()
        .with_context(|| format!("{host:?} is not a job id"))?;
    Ok(RshArgs {
        job,
        options,
        command: args[i + 1..].to_vec(),
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let rsh = argv.get(1).map(String::as_str) == Some("--rsh");
    let debug = argv.iter().any(|a| a == "--debug");
    if debug {
        stj_cli::logging::init(true);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssh-to-job: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        if rsh {
            let r = parse_rsh(&argv[2..])?;
            let o = Options {
                tty: Some(false),
                debug,
                ssh_options: r.options,
                args: r.command,
                ..Options::ssh(r.job, socket_path(None))
            };
            session::run(&o).await
        } else {
            let cli = Cli::parse();
            match &cli.cmd {
                Some(Sub::SshConfig {
                    install,
                    ca,
                    laptop,
                    client_key,
                    identity_file,
                    socket,
                }) => {
                    let socket = socket_path(socket.clone());
                    let text = match (laptop, client_key) {
                        _ if *install => ssh_config::install(&socket).map(|()| String::new()),
                        _ if *ca => ssh_config::ca_line(),
                        (Some(login), Some(key)) => {
                            ssh_config::laptop_block(&socket, login, key, identity_file)
                        }
                        _ => ssh_config::block(&socket),
                    };
                    text.map(|t| {
                        print!("{t}");
                        0
                    })
                }
                Some(Sub::Proxy {
                    host,
                    stdio,
                    client_key,
                    job_key,
                    socket,
                    daemon_sock_dir,
                }) => {
                    let client_key = client_key
                        .as_deref()
                        .map(ssh_config::parse_ed25519)
                        .transpose()?;
                    let handoff = if *stdio {
                        ssh_config::Handoff::Stdio
                    } else {
                        ssh_config::Handoff::detect()
                    };
                    ssh_config::proxy(
                        host,
                        &socket_path(socket.clone()),
                        attach::daemon_sock_dir(daemon_sock_dir.clone()).as_deref(),
                        handoff,
                        client_key,
                        *job_key,
                    )
                    .await
                    .map(|()| 0)
                }
                Some(Sub::HostKey { add, socket, jobs }) => {
                    ssh_config::host_keys(&socket_path(socket.clone()), jobs, *add)
                        .await
                        .map(|()| 0)
                }
                Some(Sub::KnownHosts { host, lookup }) => {
                    ssh_config::known_hosts(host, lookup.as_deref()).map(|()| 0)
                }
                Some(Sub::GenerateDocs { dir }) => {
                    stj_cli::generate(
                        <Cli as clap::CommandFactory>::command(),
                        stj_cli::ManSection::User,
                        dir,
                    )?;
                    Ok(0)
                }
                None => session::run(&options(cli)?).await,
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ssh-to-job: error: {e:#}");
            ExitCode::from(255)
        }
    }
}

fn options(cli: Cli) -> Result<Options> {
    let program = Program::parse(&cli.ssh)
        .with_context(|| format!("--ssh {:?}: use ssh, scp or sftp", cli.ssh))?;
    let Some(mode) = attach::Mode::parse(&cli.mode) else {
        bail!("--mode {:?}: use auto, direct, reverse or relay", cli.mode);
    };
    let Some(job) = cli.job else {
        bail!("which job? usage: ssh-to-job [OPTIONS] JOBID [COMMAND...] (see --help)");
    };
    let mut flags = Vec::new();
    for (flag, values) in [
        ("-L", &cli.local_forward),
        ("-R", &cli.remote_forward),
        ("-D", &cli.dynamic_forward),
    ] {
        for v in values {
            flags.push(flag.to_string());
            flags.push(v.clone());
        }
    }
    for (on, flag) in [
        (cli.x11, "-X"),
        (cli.x11_trusted, "-Y"),
        (cli.agent, "-A"),
        (cli.no_command, "-N"),
    ] {
        if on {
            flags.push(flag.to_string());
        }
    }
    if !flags.is_empty() && program != Program::Ssh {
        bail!(
            "-L, -R, -D, -X, -Y, -A and -N are ssh options; they do not apply to --ssh {}",
            cli.ssh
        );
    }
    if cli
        .node
        .as_deref()
        .is_some_and(|n| !stj_proto::valid_node_name(n))
    {
        bail!("--node {:?}: not a node name", cli.node.unwrap_or_default());
    }
    Ok(Options {
        target: attach::Target {
            job,
            node: cli.node,
        },
        step: cli.step,
        mode,
        program,
        ssh_binary: cli.ssh.clone(),
        tty: if cli.tty {
            Some(true)
        } else if cli.no_tty {
            Some(false)
        } else {
            None
        },
        copy: cli.copy,
        use_ssh_config: cli.ssh_config,
        debug: cli.debug,
        socket: socket_path(cli.socket),
        daemon_sock: attach::daemon_sock_dir(cli.daemon_sock_dir),
        ssh_options: cli.option,
        ssh_flags: flags,
        args: cli.command,
        auto_retry: cli.auto_retry,
        retries: cli.retry,
        remove_on_interrupt: cli.remove_on_interrupt,
        room_wait: std::time::Duration::from_secs(cli.room_wait),
        outer: cli.outer,
    })
}
