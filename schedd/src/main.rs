use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use stj_schedd::config;

/// The ssh-to-job scheduler daemon.
///
/// Examples:
///   stj-schedd --config /etc/stj/stj.toml
///   stj-schedd --state-dir ./stj-dev/schedd --listen 127.0.0.1:9618 --socket ./stj-dev/schedd.sock
///   stj-schedd token --state-dir ./stj-dev/schedd > join-token
#[derive(Parser)]
#[command(name = "stj-schedd", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config file ([schedd] section).
    #[arg(long, env = "STJ_CONFIG")]
    config: Option<PathBuf>,
    /// TCP address starters dial [config: listen; default 0.0.0.0:9618].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// UNIX socket of the user API [config: socket; default /run/stj/schedd.sock].
    #[arg(long, env = "STJ_SCHEDD_SOCKET")]
    socket: Option<PathBuf>,
    /// Queue, CA and join secret [config: state_dir; default /var/lib/stj/schedd].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory of clients' reverse-connection sockets [config: daemon_sock_dir].
    #[arg(long)]
    daemon_sock_dir: Option<PathBuf>,
    /// Log at debug level (never logs secrets).
    #[arg(long)]
    debug: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the daemon_sock dir (root-owned, mode 1733) for reverse connections. Idempotent.
    InitDaemonSock {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The directory [config: daemon_sock_dir; default /var/lock/stj/daemon_sock].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write this program's man page and shell completions into DIR.
    #[command(hide = true)]
    GenerateDocs { dir: PathBuf },
    /// Print the join token starters need (creates the identity on first use).
    Token {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("STJ_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},h2=info,tower=info,hyper=info,rustls=info"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = real_main(cli) {
        eprintln!("stj-schedd: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::GenerateDocs { dir }) => {
            stj_cli::generate(<Cli as clap::CommandFactory>::command(), &dir)?;
            Ok(())
        }
        Some(Cmd::InitDaemonSock { config, dir }) => {
            let c = config::load(config.as_deref())?;
            let dir = dir.unwrap_or(c.daemon_sock_dir);
            stj_schedd::init_daemon_sock(&dir)?;
            println!("{} is ready (root-owned, mode 1733)", dir.display());
            Ok(())
        }
        Some(Cmd::Token { config, state_dir }) => {
            let mut c = config::load(config.as_deref())?;
            if let Some(d) = state_dir {
                c.state_dir = d;
            }
            let id = stj_schedd::pki::Identity::load_or_create(&c.state_dir)?;
            println!("{}", id.token().to_printable());
            Ok(())
        }
        None => {
            let a = cli.run;
            init_logging(a.debug);
            let mut c = config::load(a.config.as_deref())?;
            if let Some(v) = a.listen {
                c.listen = v;
            }
            if let Some(v) = a.socket {
                c.socket = v;
            }
            if let Some(v) = a.state_dir {
                c.state_dir = v;
            }
            if let Some(v) = a.daemon_sock_dir {
                c.daemon_sock_dir = v;
            }
            stj_cli::daemon::raise_fd_limit();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(stj_schedd::run(c, stj_cli::daemon::shutdown_signal()))
        }
    }
}
