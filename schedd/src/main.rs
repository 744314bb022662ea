use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use stj_schedd::config;

/// The ssh-to-job scheduler daemon.
///
/// Examples:
///   stj-schedd --config /etc/stj/stj.toml
///   stj-schedd --state-dir ./stj-dev/schedd --listen 127.0.0.1:9618 --socket ./stj-dev/schedd.sock
///   stj-schedd token node1 --out /etc/stj/join-token.node1   # enrols node1 once, 0600
///   stj-schedd token 'rack3-*' --ttl 2h --out join-token       # any unenrolled rack3-* node, 2 h
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
    /// Serve Prometheus metrics at http://ADDR/metrics [config: metrics_listen; default: nowhere].
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
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
    /// Mint a join token that enrols the named nodes (patterns with `*`).
    ///
    /// Each name enrols once: from then on that node's own key is pinned to
    /// its name and it needs no token. The token expires after --ttl. It is
    /// a secret: --out writes it 0600; printed to a file (`> FILE`) the file
    /// is made 0600 too.
    #[command(verbatim_doc_comment)]
    Token {
        /// Node names (or patterns like 'rack3-*') this token may enrol.
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
        /// How long the token can enrol (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Write the token to this file (mode 0600) instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Unpin a node's key so the node can enrol again (a reinstalled node);
    /// it then needs a new token.
    ForgetNode {
        name: String,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// List enrolled nodes: name, since when, from where, key hash.
    Enrolled {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
}

/// The config's state dir, or the one given.
fn state_dir(config: Option<&std::path::Path>, dir: Option<PathBuf>) -> Result<PathBuf> {
    Ok(match dir {
        Some(d) => d,
        None => config::load(config)?.state_dir,
    })
}

fn enrolment(state_dir: &std::path::Path) -> Result<stj_schedd::enrolment::Enrolment> {
    let db = state_dir.join(stj_schedd::queue::DB_FILE);
    stj_schedd::enrolment::Enrolment::open(&db)
        .with_context(|| format!("cannot open the node table in {}", db.display()))
}

/// Prints a secret. When stdout is a file (`> join-token`), the file is
/// made 0600 before anything is written to it.
fn print_secret(text: &str) -> Result<()> {
    use std::io::Write;
    let out = std::io::stdout();
    let st = nix::sys::stat::fstat(out.as_fd().as_raw_fd())?;
    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        nix::sys::stat::fchmod(
            out.as_fd().as_raw_fd(),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .context("cannot make the output file private (0600); write it with --out instead")?;
    }
    let mut lock = out.lock();
    writeln!(lock, "{text}")?;
    lock.flush()?;
    Ok(())
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
            stj_cli::generate(
                <Cli as clap::CommandFactory>::command(),
                stj_cli::ManSection::Admin,
                &dir,
            )?;
            Ok(())
        }
        Some(Cmd::InitDaemonSock { config, dir }) => {
            let c = config::load(config.as_deref())?;
            let dir = dir.unwrap_or(c.daemon_sock_dir);
            stj_schedd::daemon_sock::init(&dir)?;
            println!("{} is ready (root-owned, mode 1733)", dir.display());
            Ok(())
        }
        Some(Cmd::Token {
            nodes,
            ttl,
            out,
            config,
            state_dir: dir,
        }) => {
            let dir = state_dir(config.as_deref(), dir)?;
            let id = stj_schedd::pki::Identity::load_or_create(&dir)?;
            let secret = enrolment(&dir)?.mint(&nodes, ttl)?;
            let token = id.token(secret).to_printable();
            match out {
                Some(path) => {
                    stj_cli::private_file::write(&path, format!("{token}\n").as_bytes())?;
                    eprintln!(
                        "join token for {} (valid {}) written to {} (0600)",
                        nodes.join(" "),
                        humantime::format_duration(ttl),
                        path.display()
                    );
                }
                None => print_secret(&token)?,
            }
            Ok(())
        }
        Some(Cmd::ForgetNode {
            name,
            config,
            state_dir: dir,
        }) => {
            let dir = state_dir(config.as_deref(), dir)?;
            if !enrolment(&dir)?.forget(&name)? {
                anyhow::bail!("no node {name:?} is enrolled (`stj-schedd enrolled` lists them)");
            }
            println!("node {name} forgotten: it can enrol again with a new token (`stj-schedd token {name}`); until it does, nothing registers under its name");
            Ok(())
        }
        Some(Cmd::Enrolled {
            config,
            state_dir: dir,
        }) => {
            let dir = state_dir(config.as_deref(), dir)?;
            println!(
                "{:<24} {:<12} {:<22} KEY SHA-256",
                "NODE", "ENROLLED", "FROM"
            );
            for n in enrolment(&dir)?.list()? {
                println!(
                    "{:<24} {:<12} {:<22} {}",
                    n.name,
                    n.enrolled_at,
                    n.enrolled_from,
                    hex::encode(n.cert_sha256)
                );
            }
            Ok(())
        }
        None => {
            let a = cli.run;
            stj_cli::logging::init(a.debug);
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
            if let Some(v) = a.metrics_listen {
                c.metrics_listen = Some(v);
            }
            stj_cli::daemon::raise_fd_limit();
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let listeners = stj_schedd::Listeners::bind(&c).await?;
                stj_schedd::run(c, listeners, stj_cli::daemon::shutdown_signal()).await
            })
        }
    }
}
