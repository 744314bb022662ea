//! `stj-proxy [--copy] SOCK`: the ProxyCommand ssh-to-job gives ssh.
//!
//! It connects to the ssh-to-job client's UNIX socket, which checks our uid
//! and sends us the already-handshaken session socket (SCM_RIGHTS). By
//! default we pass that socket on to ssh through our stdout (ssh's
//! `ProxyUseFdpass yes`) and exit: ssh then talks to the socket directly and
//! no process copies a byte. With `--copy` we instead relay between the
//! socket and stdin/stdout, half-closing each direction when it ends.

use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use sendfd::{RecvWithFd, SendWithFd};

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
        // SAFETY: fd 1 stays open for our lifetime; ManuallyDrop keeps us from closing it.
        let out = ManuallyDrop::new(unsafe { UnixStream::from_raw_fd(1) });
        out.send_with_fd(&[0], &[session_fd(&session)])
            .context("cannot pass the socket to ssh (is ProxyUseFdpass=yes set?)")?;
        Ok(())
    }
}

fn session_fd(s: &UnixStream) -> RawFd {
    std::os::fd::AsRawFd::as_raw_fd(s)
}

/// Gets the session socket from ssh-to-job. It is a TCP (or other stream)
/// socket; UnixStream is only the wrapper we hold it in.
fn receive_session(path: &str) -> Result<UnixStream> {
    let ctl = UnixStream::connect(path).with_context(|| {
        format!("cannot reach ssh-to-job at {path} (stj-proxy is meant to be run by ssh-to-job)")
    })?;
    let mut byte = [0u8; 1];
    let mut fds = [-1 as RawFd; 1];
    let (n, nfds) = ctl
        .recv_with_fd(&mut byte, &mut fds)
        .context("receiving the session socket")?;
    if n == 0 || nfds != 1 || fds[0] < 0 {
        bail!("ssh-to-job sent no socket (it refuses processes of other users)");
    }
    // SAFETY: the kernel installed this fd for us; we own it now.
    Ok(unsafe { UnixStream::from_raw_fd(fds[0]) })
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
