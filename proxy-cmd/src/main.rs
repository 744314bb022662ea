//! `stj-proxy [--copy] SOCK`: the ProxyCommand ssh-to-job gives ssh.
//!
//! It connects to the ssh-to-job client's UNIX socket, which checks our uid
//! and sends us the already-handshaken session socket (SCM_RIGHTS). By
//! default we pass that socket on to ssh through our stdout (ssh's
//! `ProxyUseFdpass yes`) and exit: ssh then talks to the socket directly and
//! no process copies a byte. With `--copy` we instead relay between the
//! socket and stdin/stdout, half-closing each direction when it ends.

use std::io::{Read, Write};

use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::{Context, Result};

/// The ProxyCommand ssh-to-job gives ssh; not meant to be run by hand.
///
/// Examples: (what ssh-to-job sets up)
///   ssh -o ProxyCommand='stj-proxy /tmp/stj-x/p' -o ProxyUseFdpass=yes stj-job-42
///   ssh -o ProxyCommand='stj-proxy --copy /tmp/stj-x/p' stj-job-42
#[derive(clap::Parser)]
#[command(name = "stj-proxy", version, verbatim_doc_comment)]
struct Cli {
    /// Relay stdin/stdout instead of handing the socket to ssh.
    #[arg(long)]
    copy: bool,
    /// Say what happens on stderr.
    #[arg(long)]
    debug: bool,
    /// Write this program's man page and shell completions into DIR.
    #[arg(long, hide = true, value_name = "DIR")]
    generate_docs: Option<std::path::PathBuf>,
    /// ssh-to-job's UNIX socket.
    #[arg(required_unless_present = "generate_docs")]
    socket: Option<String>,
}

fn main() -> ExitCode {
    // Without its ssh there is nothing to do: end with it, quietly (an ssh
    // that ssh-to-job started for the wrong account is stopped so).
    let parent = nix::unistd::getppid();
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stj-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = <Cli as clap::Parser>::parse();
    if let Some(dir) = cli.generate_docs {
        return Ok(stj_cli::generate(
            <Cli as clap::CommandFactory>::command(),
            stj_cli::ManSection::User,
            &dir,
        )?);
    }
    let sock = cli.socket.context("no socket given")?;
    let session = receive_session(&sock)?;
    if cli.debug {
        eprintln!(
            "stj-proxy: received the session socket ({})",
            if cli.copy {
                "relaying"
            } else {
                "handing it to ssh"
            }
        );
    }
    if cli.copy {
        relay(session)
    } else {
        // stdout is the socketpair ssh made for ProxyUseFdpass.
        stj_cli::fd_passing::send_on_stdout(session.as_fd())
            .context("cannot pass the socket to ssh (is ProxyUseFdpass=yes set?)")?;
        Ok(())
    }
}

/// Gets the session socket from ssh-to-job. It is a TCP (or other stream)
/// socket; UnixStream is only the wrapper we hold it in.
fn receive_session(path: &str) -> Result<UnixStream> {
    let ctl = UnixStream::connect(path).with_context(|| {
        format!("cannot reach ssh-to-job at {path} (stj-proxy is meant to be run by ssh-to-job)")
    })?;
    let fd = stj_cli::fd_passing::recv_one(&ctl)
        .context("ssh-to-job sent no socket (it refuses processes of other users)")?;
    Ok(UnixStream::from(fd))
}

fn relay(session: UnixStream) -> Result<()> {
    let mut up = session.try_clone()?;
    let upstream = std::thread::spawn(move || -> std::io::Result<()> {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = stdin.read(&mut buf)?;
            if n == 0 {
                // ssh closed its side: tell the remote we are done sending.
                let _ = up.shutdown(Shutdown::Write);
                return Ok(());
            }
            up.write_all(&buf[..n])?;
        }
    });
    let mut down = session;
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = down.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
    drop(stdout);
    // The remote finished; ssh sees EOF on our stdout. The upstream thread
    // ends when ssh closes our stdin.
    let _ = upstream.join();
    Ok(())
}
