//! stj-bench: ssh-to-job against plain OpenSSH, measured interleaved in one
//! run on this machine, printed as one markdown table.
//!
//!   cargo build --workspace --release && target/release/stj-bench [--quick]
//!   target/release/stj-bench --only relay,issuance    # some sections only
//!
//! Sections: attach, slurm, bulk, relay, issuance, scale, storm.
//!
//! Needs root (it makes users, namespaces and a pool like the tests do).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use stj_proto::preamble::{Preamble, Role};
use stj_proto::token::JoinToken;
use stj_tests::sim_starter;
use stj_tests::{Cluster, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CIPHER: &str = "aes128-gcm@openssh.com";
/// OpenSSH's key exchange before its post-quantum default (sntrup761x25519
/// in 9.x), which costs this machine about 60 ms a connection.
const CLASSIC_KEX: &str = "curve25519-sha256";

struct Row {
    what: String,
    stj: String,
    baseline: String,
    ratio: String,
    target: String,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> String {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    format!("{lo:.0}–{hi:.0}")
}

/// A plain OpenSSH server (daemon mode, pre-made keys) run as `user`, and
/// the ssh command line that logs into it.
struct PlainSshd {
    child: std::process::Child,
    port: u16,
    dir: PathBuf,
}

impl PlainSshd {
    fn start(dir: &Path, user: &TestUser) -> Result<PlainSshd> {
        let d = dir.join("plain-sshd");
        std::fs::create_dir_all(&d)?;
        for k in ["host", "client"] {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(k))
                .status()?;
            if !st.success() {
                bail!("ssh-keygen failed");
            }
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {0}/host\nAuthorizedKeysFile {0}/authorized_keys\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n",
            d.display()
        );
        std::fs::write(d.join("sshd_config"), cfg)?;
        let kh = format!(
            "[127.0.0.1]:{port} {}",
            std::fs::read_to_string(d.join("host.pub"))?
        );
        std::fs::write(d.join("known_hosts"), kh)?;
        Command::new("chown")
            .args(["-R", &format!("{}:{}", user.uid, user.gid)])
            .arg(&d)
            .status()?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .uid(user.uid)
            .gid(user.gid)
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("plain sshd did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(PlainSshd {
            child,
            port,
            dir: d,
        })
    }

    fn ssh(&self, user: &TestUser) -> String {
        format!(
            "ssh -F none -i {0}/client -o IdentitiesOnly=yes -o UserKnownHostsFile={0}/known_hosts -o StrictHostKeyChecking=yes -o Ciphers={CIPHER} -p {1} {2}@127.0.0.1",
            self.dir.display(),
            self.port,
            user.name
        )
    }
}

impl Drop for PlainSshd {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Runs `sh -c script` as `user` in the pool's environment; returns seconds.
fn timed(c: &Cluster, user: &TestUser, script: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(c.workdir(user))
        .env("STJ_SCHEDD_SOCKET", &c.socket)
        .env("STJ_DAEMON_SOCK_DIR", &c.daemon_sock)
        .env("HOME", user.home())
        .env("XDG_RUNTIME_DIR", c.runtime_dir(user))
        .uid(user.uid)
        .gid(user.gid)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "`{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(t.elapsed().as_secs_f64())
}

/// `ssh-to-job J true` into a Slurm job (a real slurmctld and slurmd, a
/// starter beside slurmd) against `srun --overlap --jobid J true` and its
/// `--pty` form (on a pty from script(1), as a person runs it), interleaved.
fn slurm_attach(stj: &str, user: &TestUser, runs: usize) -> Result<Vec<Row>> {
    let s = stj_tests::slurm::slurm();
    let mut c = Cluster::with_schedd_config("jobs = \"slurm\"\n");
    c.start_starter_with(&s.node, 1, &["--jobs", "slurm"]);
    let out = Command::new("sbatch")
        .args(["--parsable", "-o", "/dev/null", "--wrap", "sleep 86399"])
        .current_dir(c.workdir(user))
        .uid(user.uid)
        .gid(user.gid)
        .output()?;
    let job: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(';')
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("sbatch: {}", String::from_utf8_lossy(&out.stderr)))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stj_tests::cluster::pids_matching("sleep 86399").is_empty() {
        if Instant::now() > deadline {
            bail!("Slurm did not start the benchmark's job");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first session also waits for the node's starter to see the job.
    timed(&c, user, &format!("{stj} --retry 20 {job} true"))?;
    let (mut a, mut b, mut p, mut f) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        a.push(timed(&c, user, &format!("{stj} {job} true"))? * 1000.0);
        f.push(
            timed(
                &c,
                user,
                &format!("{stj} -o KexAlgorithms={CLASSIC_KEX} {job} true"),
            )? * 1000.0,
        );
        b.push(timed(&c, user, &format!("srun --overlap --jobid {job} true"))? * 1000.0);
        p.push(
            timed(
                &c,
                user,
                &format!("script -qec 'srun --overlap --jobid {job} --pty true' /dev/null"),
            )? * 1000.0,
        );
    }
    let _ = Command::new("scancel").arg(job.to_string()).status();
    let row = |ours: &str, mine: &mut Vec<f64>, name: &str, base: &mut Vec<f64>, target: &str| {
        let (ma, mb) = (median(mine), median(base));
        Row {
            what: format!(
                "attach into a Slurm job: `{ours}` vs `{name}` (ms, median of {runs}; range)"
            ),
            stj: format!("{ma:.0} ({})", spread(mine)),
            baseline: format!("{mb:.0} ({})", spread(base)),
            ratio: format!("{:.2}×", ma / mb),
            target: target.into(),
        }
    };
    let pq = "ssh-to-job J true";
    let classic = format!("ssh-to-job -o KexAlgorithms={CLASSIC_KEX} J true");
    Ok(vec![
        row(pq, &mut a, "srun --overlap --jobid J true", &mut b, "–"),
        row(
            pq,
            &mut a,
            "srun --overlap --jobid J --pty true",
            &mut p,
            "≤ 1.3×",
        ),
        row(
            &classic,
            &mut f,
            "srun --overlap --jobid J --pty true",
            &mut p,
            "≤ 1.3×",
        ),
    ])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .map(|i| {
            args.get(i + 1)
                .map(|v| v.split(',').map(String::from).collect())
                .context("--only needs a list: attach,slurm,bulk,relay,issuance,scale,storm")
        })
        .transpose()?;
    let run = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == section));
    stj_tests::raise_fd_limit(65536);
    let rt = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let (runs, attach_runs, size_mib) = if quick {
        (1, 5, 32u64)
    } else {
        (3, 21, 1024u64)
    };

    // ---- a real pool: one starter that takes direct connections ----
    let mut c = Cluster::new();
    c.start_starter("node1", 4);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86400"]);
    c.wait_state(job, "running", Duration::from_secs(30));
    let plain = PlainSshd::start(c.path(), &alice)?;
    let stj = format!(
        "{} -o Ciphers={CIPHER}",
        stj_tests::bin("ssh-to-job").display()
    );

    // 1. attach latency, interleaved
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..if run("attach") { attach_runs } else { 0 } {
        a.push(timed(&c, &alice, &format!("{stj} {job} true"))? * 1000.0);
        b.push(timed(&c, &alice, &format!("{} true", plain.ssh(&alice)))? * 1000.0);
    }
    if run("attach") {
        let (ma, mb) = (median(&mut a), median(&mut b));
        rows.push(Row {
            what: format!(
            "attach: `ssh-to-job J true` vs `ssh host true` (ms, median of {attach_runs}; range)"
        ),
            stj: format!("{ma:.0} ({})", spread(&a)),
            baseline: format!("{mb:.0} ({})", spread(&b)),
            ratio: format!("{:.2}×", ma / mb),
            target: "≤ 1.3×".into(),
        });
    }

    // 1b. attach into a Slurm job against Slurm's own way in
    if run("slurm") {
        rows.extend(slurm_attach(&stj, &alice, attach_runs)?);
    }

    // 2. bulk throughput per path, up and down, against plain ssh
    let bytes = size_mib << 20;
    let up = |cmd: &str| format!("head -c {bytes} /dev/zero | {cmd} 'cat > /dev/null'");
    let down = |cmd: &str| format!("{cmd} 'head -c {bytes} /dev/zero' > /dev/null");
    let paths: [(&str, String); 5] = [
        ("direct, fd passing", format!("{stj} --mode direct {job}")),
        (
            "direct, --copy",
            format!("{stj} --mode direct --copy {job}"),
        ),
        ("reverse, fd passing", format!("{stj} --mode reverse {job}")),
        ("relay, fd passing", format!("{stj} --mode relay {job}")),
        ("relay, --copy", format!("{stj} --mode relay --copy {job}")),
    ];
    let plain_cmd = plain.ssh(&alice);
    // (direction, the shell line that moves the bytes through a command)
    type Transfer<'a> = (&'a str, &'a dyn Fn(&str) -> String);
    let bulk: &[Transfer] = if run("bulk") {
        &[("up", &up), ("down", &down)]
    } else {
        &[]
    };
    let schedd = c.schedd_pid().context("schedd pid")?;
    for (dir, make) in bulk {
        for (name, cmd) in &paths {
            let (mut s, mut p) = (Vec::new(), Vec::new());
            // The schedd's CPU while ssh-to-job runs: the relay's share of
            // the machine on the relay paths (near zero on the others).
            let (mut schedd_cpu, mut wall) = (0.0, 0.0);
            for _ in 0..runs {
                let c0 = cpu_secs(schedd)?;
                let t = timed(&c, &alice, &make(cmd))?;
                schedd_cpu += cpu_secs(schedd)? - c0;
                wall += t;
                s.push(size_mib as f64 / t);
                p.push(size_mib as f64 / timed(&c, &alice, &make(&plain_cmd))?);
            }
            let (ms, mp) = (median(&mut s), median(&mut p));
            let relay_share = if name.starts_with("relay") {
                format!("; relay used {:.2} cores", schedd_cpu / wall)
            } else {
                String::new()
            };
            rows.push(Row {
                what: format!("bulk {size_mib} MiB {dir}, {name} (MiB/s, {CIPHER}{relay_share})"),
                stj: format!("{ms:.0}"),
                baseline: format!("{mp:.0}"),
                ratio: format!("{:.2}×", ms / mp),
                target: if name.contains("fd passing") {
                    "≥ 0.95×".into()
                } else {
                    "–".into()
                },
            });
        }
    }
    drop(plain);

    // 3–5 use a schedd with simulated starters only.
    let mut sim = Cluster::new();
    let token = JoinToken::parse(&std::fs::read_to_string(&sim.token_file)?)?;
    let addr = sim.addr.clone().context("schedd address")?;
    let relay_bytes: u64 = if quick { 64 << 20 } else { 1 << 30 };
    if run("relay") {
        let rounds = if quick { 1 } else { 5 };
        rows.extend(rt.block_on(relay_cost(&sim, &token, &addr, &alice, relay_bytes, rounds))?);
    }
    if run("issuance") {
        rows.extend(rt.block_on(issuance(
            &sim,
            &token,
            &addr,
            &alice,
            if quick { 1 } else { 5 },
        ))?);
    }
    if run("scale") {
        let (starters, sessions) = if quick { (500, 50) } else { (10_000, 500) };
        rows.extend(rt.block_on(scale(&mut sim, &token, &addr, starters, sessions))?);
    }

    if run("storm") {
        let n = if quick { 500 } else { 10_000 };
        rows.push(storm(n)?);
    }

    println!("| measurement | ssh-to-job | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.stj, r.baseline, r.ratio, r.target
        );
    }
    Ok(())
}

/// A reconnect storm: `n` simulated starters (the real link protocol, the
/// starter's own backoff) registered, the schedd killed and started again;
/// how long until all are registered again, and how long the median and the
/// last one waited.
fn storm(n: usize) -> Result<Row> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let rt = tokio::runtime::Runtime::new()?;
    let mut c = Cluster::new();
    let token = JoinToken::parse(&std::fs::read_to_string(&c.token_file)?)?;
    let addr = c.addr.clone().context("schedd address")?;
    let base = Instant::now();
    let marks: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, m) in marks.iter().enumerate() {
        rt.spawn(sim_starter::stay_registered(
            addr.clone(),
            token.clone(),
            format!("storm-{i}"),
            base,
            m.clone(),
        ));
    }
    let all_after = |t: u64, limit: Duration| -> Result<()> {
        let deadline = Instant::now() + limit;
        while marks.iter().any(|m| m.load(Ordering::SeqCst) <= t) {
            if Instant::now() > deadline {
                let missing = marks
                    .iter()
                    .filter(|m| m.load(Ordering::SeqCst) <= t)
                    .count();
                bail!("{missing} of {n} simulated starters did not register in {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    };
    all_after(0, Duration::from_secs(300))?;
    c.kill_schedd();
    let restart = base.elapsed().as_millis() as u64;
    c.start_schedd();
    all_after(restart, Duration::from_secs(300))?;
    let mut waits: Vec<f64> = marks
        .iter()
        .map(|m| (m.load(Ordering::SeqCst) - restart) as f64 / 1000.0)
        .collect();
    let longest = waits.iter().cloned().fold(0.0, f64::max);
    let med = median(&mut waits);
    rt.shutdown_background();
    Ok(Row {
        what: format!("reconnect storm: {n} simulated starters registered again after a schedd kill -9 and restart (s: all back; median wait, longest)"),
        stj: format!("{longest:.1} (median {med:.1}, longest {longest:.1})"),
        baseline: "–".into(),
        ratio: "–".into(),
        target: "–".into(),
    })
}

/// A job on a simulated starter, and a relayed raw connection pair for it.
async fn relay_pair(
    c: &Cluster,
    job: u64,
    sim: &mut sim_starter::SimStarter,
) -> Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let grant = ssh_to_job::attach::request(&c.socket, &job.into(), [7; 32]).await?;
    let sid = grant.session_id;
    let token = grant.relay_token;
    let mut client = tokio::net::TcpStream::connect(&grant.broker_addr).await?;
    client
        .write_all(
            &Preamble::Relay {
                role: Role::Client,
                session_id: sid,
                token,
            }
            .encode(),
        )
        .await?;
    let starter = tokio::time::timeout(
        Duration::from_secs(10),
        sim.relays.as_mut().context("relays")?.recv(),
    )
    .await?
    .context("no relay half")?;
    Ok((client, starter))
}

async fn pump(
    mut from: tokio::net::TcpStream,
    mut to: tokio::net::TcpStream,
    bytes: u64,
) -> Result<f64> {
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let buf = vec![0u8; 256 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            from.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        from.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 256 << 10];
    let mut got = 0u64;
    loop {
        let n = to.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    writer.await??;
    if got != bytes {
        bail!("moved {got} of {bytes} bytes");
    }
    Ok((bytes as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) `pid` has used so far.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// The least a relay can do: two blocking threads, each splicing one
/// direction through a pipe, no runtime, no bookkeeping. Measured beside
/// ours, it shows what the second TCP hop itself costs on this machine.
fn minimal_relay() -> Result<std::net::SocketAddr> {
    use nix::fcntl::{splice, SpliceFFlags};
    use std::os::fd::{AsFd, AsRawFd};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || -> Result<()> {
        let (a, _) = l.accept()?;
        let (b, _) = l.accept()?;
        let (a2, b2) = (a.try_clone()?, b.try_clone()?);
        let one_way = |from: std::net::TcpStream, to: std::net::TcpStream| {
            std::thread::spawn(move || -> Result<()> {
                let (r, w) = nix::unistd::pipe()?;
                // SAFETY: fcntl on a pipe we own.
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
                loop {
                    let mut n = splice(
                        from.as_fd(),
                        None,
                        w.as_fd(),
                        None,
                        1 << 20,
                        SpliceFFlags::SPLICE_F_MOVE,
                    )?;
                    if n == 0 {
                        to.shutdown(std::net::Shutdown::Write).ok();
                        return Ok(());
                    }
                    while n > 0 {
                        n -= splice(
                            r.as_fd(),
                            None,
                            to.as_fd(),
                            None,
                            n,
                            SpliceFFlags::SPLICE_F_MOVE,
                        )?;
                    }
                }
            })
        };
        let t1 = one_way(a, b2);
        let t2 = one_way(b, a2);
        t1.join().ok();
        t2.join().ok();
        Ok(())
    });
    Ok(addr)
}

/// A raw connection pair through `minimal_relay`.
async fn minimal_pair() -> Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let addr = minimal_relay()?;
    let a = tokio::net::TcpStream::connect(addr).await?;
    // The relay accepts in order: `a` is its first side, `b` its second.
    let b = tokio::net::TcpStream::connect(addr).await?;
    Ok((a, b))
}

/// Relay vs loopback TCP, interleaved rounds, with the CPU each party used:
/// on a box with few cores the relay's share of the CPU sets the ceiling.
async fn relay_cost(
    c: &Cluster,
    token: &JoinToken,
    addr: &str,
    user: &TestUser,
    bytes: u64,
    rounds: usize,
) -> Result<Vec<Row>> {
    let mut s = sim_starter::register(addr, token, "sim-relay", 1, true).await?;
    let job = c.submit(user, &["--", "sleep", "86400"]);
    c.wait_state(job, "running", Duration::from_secs(30));
    let schedd = c.schedd_pid().context("schedd pid")?;
    let me = std::process::id();
    let (mut relayed, mut direct, mut minimal) = (Vec::new(), Vec::new(), Vec::new());
    // CPU seconds per GiB: endpoints (this process) and relay (the schedd).
    let (mut ends_r, mut relay_cpu, mut ends_d) = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        let (a, b) = relay_pair(c, job, &mut s).await?;
        let (m0, s0) = (cpu_secs(me)?, cpu_secs(schedd)?);
        relayed.push(pump(a, b, bytes).await?);
        ends_r += cpu_secs(me)? - m0;
        relay_cpu += cpu_secs(schedd)? - s0;

        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let a = tokio::net::TcpStream::connect(l.local_addr()?).await?;
        let (b, _) = l.accept().await?;
        let m0 = cpu_secs(me)?;
        direct.push(pump(a, b, bytes).await?);
        ends_d += cpu_secs(me)? - m0;

        let (a, b) = minimal_pair().await?;
        minimal.push(pump(a, b, bytes).await?);
    }
    let gib = (rounds as u64 * bytes) as f64 / (1u64 << 30) as f64;
    let (ends_r, relay_cpu, ends_d) = (ends_r / gib, relay_cpu / gib, ends_d / gib);
    let (mr, md, mm) = (
        median(&mut relayed),
        median(&mut direct),
        median(&mut minimal),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(vec![
        Row {
            what: format!(
                "relay cost: {} MiB raw through the broker relay vs loopback TCP (MiB/s, median of {rounds}; range)",
                bytes >> 20
            ),
            stj: format!("{mr:.0} ({})", spread(&relayed)),
            baseline: format!("{md:.0} ({})", spread(&direct)),
            ratio: format!("{:.2}×", mr / md),
            target: "≥ 0.9×".into(),
        },
        Row {
            what: format!(
                "relay floor: the same through a minimal relay (2 blocking splice threads, no runtime) vs loopback TCP (MiB/s, median of {rounds}; range)"
            ),
            stj: format!("{mm:.0} ({})", spread(&minimal)),
            baseline: format!("{md:.0}"),
            ratio: format!("{:.2}× (ours: {:.2}× of it)", mm / md, mr / mm),
            target: "–".into(),
        },
        Row {
            what: format!(
                "relay cost, CPU per GiB moved: endpoints + relay vs endpoints alone (CPU-s; {cores} cores)"
            ),
            stj: format!("{ends_r:.2} + {relay_cpu:.2}"),
            baseline: format!("{ends_d:.2}"),
            ratio: format!("{:.2}×", ends_d / (ends_r + relay_cpu)),
            target: "–".into(),
        },
    ])
}

async fn issuance(
    c: &Cluster,
    token: &JoinToken,
    addr: &str,
    user: &TestUser,
    secs: u64,
) -> Result<Vec<Row>> {
    let _node = sim_starter::register(addr, token, "sim-issue", 1, false).await?;
    let job = c.submit(user, &["--", "sleep", "86400"]);
    c.wait_state(job, "running", Duration::from_secs(30));
    let mut rows = Vec::new();
    for callers in [1usize, 16] {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let socket = c.socket.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = ssh_to_job::schedd_client::connect(&socket).await?;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    client
                        .request_session(stj_proto::user::RequestSessionRequest {
                            job_id: job,
                            client_pubkey: vec![7; 32],
                            ..Default::default()
                        })
                        .await?;
                    n += 1;
                }
                Ok::<_, anyhow::Error>(n)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let rate = total as f64 / secs as f64;
        rows.push(Row {
            what: format!("capability issuance, {callers} concurrent caller(s) (RequestSession/s)"),
            stj: format!("{rate:.0}"),
            baseline: "–".into(),
            ratio: "–".into(),
            target: if callers == 16 {
                "≥ 5000/s".into()
            } else {
                "–".into()
            },
        });
    }
    Ok(rows)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

async fn scale(
    c: &mut Cluster,
    token: &JoinToken,
    addr: &str,
    starters: usize,
    sessions: usize,
) -> Result<Vec<Row>> {
    let pid = c.schedd_pid().context("schedd pid")?;
    let before = rss_kib(pid)?;
    let t = Instant::now();
    let mut links = Vec::with_capacity(starters);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..starters {
        let (addr, token, sem) = (addr.to_string(), token.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            sim_starter::register(&addr, &token, &format!("idle-{i}"), 0, false).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if let Ok(Ok(s)) = t.await {
            links.push(s);
            ok += 1;
        }
    }
    let took = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib(pid)?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / ok.max(1) as f64 / 1024.0;
    let mut rows = vec![Row {
        what: format!("broker scale: {ok}/{starters} idle simulated starters registered in {took:.1} s; schedd RSS per registration (KiB)"),
        stj: format!("{per:.1}"),
        baseline: format!("RSS {before} → {after} KiB"),
        ratio: "–".into(),
        target: "≤ 16 KiB".into(),
    }];

    // Concurrent relayed sessions moving data.
    let mut s = sim_starter::register(addr, token, "sim-many", 1, true).await?;
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86400"]);
    c.wait_state(job, "running", Duration::from_secs(30));
    let mut pairs = Vec::new();
    for _ in 0..sessions {
        pairs.push(relay_pair(c, job, &mut s).await?);
    }
    let per_session: u64 = 1 << 20;
    let t = Instant::now();
    let results =
        futures::future::join_all(pairs.into_iter().map(|(a, b)| pump(a, b, per_session))).await;
    let secs = t.elapsed().as_secs_f64();
    let good = results.iter().filter(|r| r.is_ok()).count();
    rows.push(Row {
        what: format!(
            "{sessions} concurrent relayed sessions, 1 MiB each: succeeded; aggregate MiB/s"
        ),
        stj: format!("{good}/{sessions}"),
        baseline: format!(
            "{:.0} MiB/s",
            (good as f64) * (per_session as f64) / (1 << 20) as f64 / secs
        ),
        ratio: "–".into(),
        target: format!("{sessions}/{sessions}"),
    });
    drop(links);
    Ok(rows)
}
