use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ssh_to_job::ssh_command::{alias, proxy_path, Program, SshCommand};
use ssh_to_job::{attach, fd_pass, runtime_dir::RuntimeDir, schedd_client::socket_path, user_key};
use tokio::signal::unix::{signal, SignalKind};

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
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// How to reach the job's node: auto, direct, reverse or relay.
    #[arg(long, default_value = "auto")]
    mode: String,
    /// Where reverse connections are handed to us [env STJ_DAEMON_SOCK_DIR; default /var/lock/stj/daemon_sock].
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
    /// The job id.
    job: u64,
    /// Command to run in the job (for scp/sftp: their arguments; `remote:` names the job's side).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// What an rsh-style caller (rsync -e, GIT_SSH_COMMAND) passes us:
/// `[ssh options] [user@]JOBID command...`.
struct RshArgs {
    job: u64,
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
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter("debug,h2=info,tower=info,hyper=info")
            .init();
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
    let result = if rsh {
        match parse_rsh(&argv[2..]) {
            Ok(r) => {
                let cli = Cli {
                    mode: "auto".into(),
                    daemon_sock_dir: None,
                    ssh: "ssh".into(),
                    tty: false,
                    no_tty: true,
                    copy: false,
                    ssh_config: false,
                    socket: None,
                    debug,
                    job: r.job,
                    command: r.command,
                };
                rt.block_on(run(cli, r.options))
            }
            Err(e) => Err(e),
        }
    } else {
        rt.block_on(run(Cli::parse(), Vec::new()))
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ssh-to-job: error: {e:#}");
            ExitCode::from(255)
        }
    }
}

async fn run(cli: Cli, extra_options: Vec<String>) -> Result<u8> {
    let program = Program::parse(&cli.ssh)
        .with_context(|| format!("--ssh {:?}: use ssh, scp or sftp", cli.ssh))?;
    let Some(mode) = attach::Mode::parse(&cli.mode) else {
        bail!("--mode {:?}: use auto, direct, reverse or relay", cli.mode);
    };
    let daemon_sock = attach::daemon_sock_dir(cli.daemon_sock_dir.clone());
    let socket = socket_path(cli.socket.clone());
    // Everything secret lives in here and is removed on every exit path:
    // the value is dropped when `run` returns, including after a signal.
    let rt = RuntimeDir::create()?;
    let key = user_key::generate(rt.path())?;
    let grant = attach::request(&socket, cli.job, key.public).await?;
    tracing::debug!(job_id = cli.job, node = %grant.node, direct = %grant.direct_addr, "capability granted");
    let started = std::time::Instant::now();
    let (stream, session, path) =
        attach::connect(mode, &socket, &grant, cli.job, &daemon_sock).await?;
    tracing::debug!(
        job_id = cli.job,
        path,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "connected; handshake complete"
    );
    let known_hosts = user_key::write_known_hosts(rt.path(), &alias(cli.job), session.host_pubkey)?;
    let sock_path = rt.path().join("p");
    let listener = fd_pass::bind(&sock_path)?;

    let proxy = proxy_path();
    let cmd = SshCommand {
        program,
        binary: cli.ssh.clone(),
        job_id: cli.job,
        user: &session.user,
        key: &key.path,
        known_hosts: &known_hosts,
        proxy: &proxy,
        socket: &sock_path,
        copy: cli.copy,
        use_ssh_config: cli.ssh_config,
        debug: cli.debug,
        tty: if cli.tty {
            Some(true)
        } else if cli.no_tty {
            Some(false)
        } else {
            None
        },
        extra_options,
        args: cli.command.clone(),
    };
    let argv = cmd.argv();
    tracing::debug!(?argv, "running");
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .spawn()
        .with_context(|| format!("cannot run {} (is openssh-client installed?)", argv[0]))?;

    let (mut int, mut term, mut hup) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
        signal(SignalKind::hangup())?,
    );
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
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
        };
        // Pass the signal to ssh, let it end, then clean up and report it.
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::try_from(sig).ok(),
            );
        }
        let _ = child.wait().await;
        drop(rt);
        return Ok(128 + sig as u8);
    };
    drop(rt);
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
