//! Reliability and security under fire: daemon crashes, and secrets that
//! must never reach a log.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssh_to_job::attach;
use stj_tests::{ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// A session kept open, driven line by line through its stdin.
struct Open {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: Arc<Mutex<String>>,
}

impl Open {
    fn start(c: &Cluster, user: &TestUser, mode: &str, job: u64) -> Open {
        let mut child = c
            .ssh_to_job_cmd(user, &["--mode", mode, "-T", &job.to_string(), "sh"], None)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let o = out.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    o.lock().unwrap().push_str(&(l + "\n"));
                }
            });
        }
        Open { child, stdin, out }
    }

    /// Runs a command in the open session and waits for its answer.
    fn answers(&mut self, tag: &str) -> bool {
        if self
            .stdin
            .write_all(format!("echo {tag}-$STJ_JOB_ID\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let out = self.out.clone();
        let tag = tag.to_string();
        std::panic::catch_unwind(move || {
            wait_until("the session to answer", Duration::from_secs(10), || {
                out.lock()
                    .unwrap()
                    .contains(&format!("{tag}-"))
                    .then_some(())
            })
        })
        .is_ok()
    }
}

#[test]
fn twenty_open_sessions_through_a_schedd_kill_9() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let jobs: Vec<u64> = (0..2)
        .map(|i| c.submit(&alice, &["--", "sleep", &format!("8641{}", 3 + i)]))
        .collect();
    for j in &jobs {
        c.wait_state(*j, "running", T);
    }
    // 20 sessions into the two jobs: 9 direct, 9 reverse, 2 relayed.
    let mode = |i: usize| match i {
        0..=8 => "direct",
        9..=17 => "reverse",
        _ => "relay",
    };
    let mut open: Vec<Open> = (0..20)
        .map(|i| Open::start(&c, &alice, mode(i), jobs[i % 2]))
        .collect();
    for (i, s) in open.iter_mut().enumerate() {
        assert!(
            s.answers(&format!("before-{i}")),
            "{}",
            s.out.lock().unwrap()
        );
    }
    let queue_before = ok(c.stj(None, c.path(), &["q", "--json", "--all"]));

    c.kill_schedd();
    // Direct and reverse sessions never touch the schedd once connected.
    for (i, s) in open
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| mode(*i) != "relay")
    {
        assert!(
            s.answers(&format!("after-{i}")),
            "{}",
            s.out.lock().unwrap()
        );
    }
    // Relayed ones end, and say why.
    for s in open.iter_mut().skip(18) {
        let status = wait_until("the relayed session to end", T, || {
            s.child.try_wait().unwrap()
        });
        assert!(!status.success());
        let said = s.out.lock().unwrap().clone();
        assert!(said.contains("the relay (the schedd) went away"), "{said}");
    }

    c.start_schedd();
    let restarted = std::time::Instant::now();
    wait_until("a new session after the restart", T, || {
        let out = c.ssh_to_job(&alice, &[&jobs[0].to_string(), "echo new"], None);
        (String::from_utf8_lossy(&out.stdout) == "new\n").then_some(())
    });
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(10), "new sessions took {took:?}");
    // No job lost, duplicated or marked wrongly: the queue is as it was.
    assert_eq!(
        ok(c.stj(None, c.path(), &["q", "--json", "--all"])),
        queue_before
    );

    // The sessions end normally, and each one's record is complete: the
    // node reported the ends it saw while the schedd was away, and still
    // knew which sessions were open when it registered again.
    for (i, s) in open.into_iter().enumerate() {
        let Open {
            mut child, stdin, ..
        } = s;
        drop(stdin);
        let status = wait_until("the session to end", T, || child.try_wait().unwrap());
        if mode(i) != "relay" {
            assert!(status.success(), "session {i}: {status:?}");
        }
    }
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
    // 9 direct + the new one, 9 reverse, 2 relayed.
    let want = [("direct", 10), ("reverse", 9), ("relay", 2)];
    let complete = || -> Vec<(&str, usize)> {
        let r: Vec<_> = jobs
            .iter()
            .flat_map(|j| q.sessions(*j, None).unwrap())
            .filter(|r| r.ended_at != 0 && r.end_note.is_empty() && r.bytes_to_client > 0)
            .collect();
        want.iter()
            .map(|(path, _)| (*path, r.iter().filter(|r| r.path == *path).count()))
            .collect()
    };
    let got = wait_until("21 complete session records", T, || {
        let got = complete();
        (got == want).then_some(got)
    });
    assert_eq!(got, want);
}

#[test]
fn no_secret_reaches_any_log_even_with_debug() {
    let mut c = Cluster::new();
    c.kill_schedd();
    c.debug = true;
    c.start_schedd();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86414"]);
    c.wait_state(job, "running", T);
    let mut client_logs = String::new();
    for mode in ["direct", "reverse", "relay"] {
        let out = c.ssh_to_job(
            &alice,
            &["--debug", "--mode", mode, &job.to_string(), "true"],
            None,
        );
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        client_logs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // A session whose k and relay token this test knows, through the relay.
    let rt = stj_tests::rt();
    let grant = rt
        .block_on(attach::request(&c.socket, &job.into(), [7; 32]))
        .unwrap();
    let token = std::fs::read_to_string(&c.token_file).unwrap();
    let join_secret = token.trim().rsplit('.').next().unwrap().to_string();
    let logs = format!("{}{}{client_logs}", c.schedd_log(), c.starter_log("node1"));
    assert!(logs.contains("DEBUG"), "the daemons did log at debug level");
    for (what, secret) in [
        ("join secret", join_secret),
        ("k", hex(&grant.k)),
        ("relay token", hex(&grant.relay_token)),
    ] {
        assert!(
            !logs.to_lowercase().contains(&secret.to_lowercase()),
            "the {what} appears in a log"
        );
    }
    for (what, bytes) in [("k", &grant.k), ("relay token", &grant.relay_token)] {
        assert!(
            !logs.contains(&format!("{:?}", bytes.as_slice())),
            "the {what} appears in a log as bytes"
        );
    }
}

#[test]
fn a_killed_starters_jobs_end_and_are_requeued_within_the_heartbeat_deadline() {
    let mut c = Cluster::with_schedd_config("heartbeat_secs = 1");
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86415"]);
    c.wait_state(job, "running", T);
    wait_until("the job's process", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86415").is_empty()).then_some(())
    });
    // An open session, recorded as open.
    let mut session = Open::start(&c, &alice, "direct", job);
    assert!(session.answers("open"));
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
    wait_until("the session to be recorded open", T, || {
        q.sessions(job, None)
            .unwrap()
            .iter()
            .any(|r| r.started_at != 0)
            .then_some(())
    });

    c.kill_starter("node1");
    let killed = std::time::Instant::now();
    wait_until("the job to die with its starter", T, || {
        stj_tests::cluster::pids_matching("sleep 86415")
            .is_empty()
            .then_some(())
    });
    let requeued = wait_until("the schedd to requeue the job", T, || {
        let j = c.job(job);
        (j["state"] == "idle").then_some(j)
    });
    assert!(
        killed.elapsed() < Duration::from_secs(3 * 1 + 5),
        "within the heartbeat deadline (3 s), give or take: {:?}",
        killed.elapsed()
    );
    assert!(
        requeued["reason"]
            .as_str()
            .unwrap()
            .contains("starter on node node1 stopped"),
        "{requeued}"
    );
    // The session died with the node, and its record says so.
    let record = wait_until("the session to be recorded as ended", T, || {
        q.sessions(job, None)
            .unwrap()
            .into_iter()
            .find(|r| r.ended_at != 0)
    });
    assert!(
        record.end_note.contains("starter on node node1 stopped"),
        "{record:?}"
    );
    wait_until("the session's client to end", T, || {
        session.child.try_wait().unwrap()
    });
    // Another node picks it up; nothing is lost or duplicated.
    c.start_starter("node2", 1);
    let j = c.wait_state(job, "running", T);
    assert_eq!(j["node"], "node2");
    let all: serde_json::Value =
        serde_json::from_str(&ok(c.stj(None, c.path(), &["q", "--json", "--all"]))).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[test]
fn a_thousand_silent_connections_do_not_keep_a_real_user_out() {
    stj_tests::raise_fd_limit(8192);
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86416"]);
    c.wait_state(job, "running", T);
    let log = c.starter_log("node1");
    let direct = log
        .lines()
        .find_map(|l| {
            l.split("accepting direct session connections listen=")
                .nth(1)
        })
        .expect("the starter's direct port")
        .trim()
        .to_string();
    let schedd = c.addr.clone().unwrap();
    // Connections to each port that never say a word: 1,000 to the schedd,
    // 1,500 to the starter (more than it keeps unheard from one address,
    // so the oldest are evicted as new ones come).
    let mut idle = Vec::new();
    for (target, n) in [(&direct, 1500), (&schedd, 1000)] {
        for _ in 0..n {
            idle.push(std::net::TcpStream::connect(target.as_str()).unwrap());
        }
    }
    for mode in ["direct", "relay"] {
        let out = ok(c.ssh_to_job(
            &alice,
            &["--mode", mode, &job.to_string(), "echo still-served"],
            None,
        ));
        assert_eq!(out, "still-served\n", "{mode}");
    }
    drop(idle);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn a_network_cut_between_starter_and_schedd_is_survived() {
    let mut c = Cluster::with_net();
    // Short heartbeats so the cut is noticed in seconds, not half a minute.
    c.kill_schedd();
    std::fs::write(c.path().join("stj.toml"), "[schedd]\nheartbeat_secs = 1\n").unwrap();
    c.start_schedd();
    c.start_starter_with("node1", 1, &[]);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86417"]);
    c.wait_state(job, "running", T);
    let net = c.net.as_ref().unwrap();
    let node = net.nodes[0].clone();
    // Drop every packet between node1 and the schedd, both ways.
    for chain in [
        ["-I", "OUTPUT", "-d", "10.231.1.1", "-j", "DROP"],
        ["-I", "INPUT", "-s", "10.231.1.1", "-j", "DROP"],
    ] {
        net.iptables(&node, &chain);
    }
    let cut = std::time::Instant::now();
    wait_until("the schedd to notice the silence", T, || {
        c.schedd_log()
            .contains("no heartbeat from the starter")
            .then_some(())
    });
    wait_until("the starter to notice it too", T, || {
        c.starter_log("node1")
            .contains("no heartbeat from the schedd")
            .then_some(())
    });
    // The cut lasts 30 s; all along the job runs on and the queue keeps it
    // (its lease holds).
    while cut.elapsed() < Duration::from_secs(30) {
        assert!(!stj_tests::cluster::pids_matching("sleep 86417").is_empty());
        assert_eq!(c.job(job)["state"], "running");
        std::thread::sleep(Duration::from_secs(1));
    }
    for chain in [
        ["-D", "OUTPUT", "-d", "10.231.1.1", "-j", "DROP"],
        ["-D", "INPUT", "-s", "10.231.1.1", "-j", "DROP"],
    ] {
        net.iptables(&node, &chain);
    }
    c.wait_registrations("node1", 2, Duration::from_secs(90));
    assert_eq!(
        c.job(job)["state"],
        "running",
        "the same job, never requeued"
    );
    assert_eq!(
        ok(c.ssh_to_job(&alice, &[&job.to_string(), "echo after-the-cut"], None)),
        "after-the-cut\n"
    );
}

#[test]
fn two_hundred_concurrent_sessions_against_one_schedd_and_two_starters() {
    stj_tests::raise_fd_limit(8192);
    // One user runs all 200: the per-user caps must let that through.
    let mut c =
        Cluster::with_schedd_config("max_sessions_per_user = 400\nmax_pending_per_user = 1000");
    c.start_starter("node1", 1);
    c.start_starter("node2", 1);
    let alice = TestUser::alice();
    let jobs: Vec<u64> = (0..2)
        .map(|i| c.submit(&alice, &["--", "sleep", &format!("8641{}", 8 + i)]))
        .collect();
    let mut nodes = std::collections::HashSet::new();
    for j in &jobs {
        nodes.insert(
            c.wait_state(*j, "running", T)["node"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(nodes.len(), 2, "one job on each starter");
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..200)
        .map(|i| {
            let job = jobs[i % 2].to_string();
            let t = std::time::Instant::now();
            let child = c
                .ssh_to_job_cmd(
                    &alice,
                    &["--retry", "3", &job, &format!("echo load-{i}")],
                    None,
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (i, t, child)
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for (i, t, child) in children {
        let out = child.wait_with_output().unwrap();
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        if String::from_utf8_lossy(&out.stdout) != format!("load-{i}\n") {
            failures.push(format!(
                "{i}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "200 concurrent sessions in {:.1} s: attach+run latency p50 {:.0} ms, p99 {:.0} ms",
        started.elapsed().as_secs_f64(),
        latencies[99],
        latencies[197]
    );
    assert!(
        failures.is_empty(),
        "{} failures: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn submits_cut_off_by_a_schedd_kill_queue_each_job_exactly_once() {
    let mut c = Cluster::new();
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);
    let socket = c.socket.clone();
    let submit = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(stj_tests::bin("stj"));
        cmd.arg("submit")
            .args(extra)
            .args(["--", "true"])
            .current_dir(&wd)
            .env("STJ_SCHEDD_SOCKET", &socket)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        std::os::unix::process::CommandExt::uid(&mut cmd, alice.uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, alice.gid);
        cmd
    };
    // 30 submits in flight when the schedd dies; it is back a moment later.
    let children: Vec<_> = (0..30).map(|_| submit(&[]).spawn().unwrap()).collect();
    c.kill_schedd();
    c.start_schedd();
    let mut ids = std::collections::BTreeSet::new();
    for ch in children {
        let out = ch.wait_with_output().unwrap();
        ids.insert(ok(out).trim().parse::<u64>().unwrap());
    }
    assert_eq!(ids.len(), 30, "30 distinct jobs: {ids:?}");
    let q: serde_json::Value =
        serde_json::from_slice(&c.stj(None, c.path(), &["q", "--all", "--json"]).stdout).unwrap();
    let queued: std::collections::BTreeSet<u64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        queued, ids,
        "every job queued once, none unknown to its submitter"
    );

    // A schedd that stays away: the outcome is unknown, and stj says how
    // to settle it without a second job.
    c.kill_schedd();
    let out = submit(&["--request-id", "settle-me"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown") && err.contains("--request-id settle-me"),
        "{err}"
    );
    c.start_schedd();
    let first = ok(submit(&["--request-id", "settle-me"]).output().unwrap());
    let again = ok(submit(&["--request-id", "settle-me"]).output().unwrap());
    assert_eq!(first, again, "the same request id returns the same job");
}

#[test]
fn a_local_user_flooding_both_ports_neither_stops_nor_starves_the_schedd() {
    let mut c = Cluster::new();
    // A small fd limit, so that the flood would reach it without the caps.
    c.kill_schedd();
    c.schedd_fd_limit = Some(1024);
    c.start_schedd();
    c.start_starter("node1", 1);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let job = c.submit(&alice, &["--", "sleep", "86434"]);
    c.wait_state(job, "running", T);
    let pid = nix::unistd::Pid::from_raw(c.schedd_pid().unwrap() as i32);
    // Bob opens 3,000 connections to the user socket and 1,500 to the TCP
    // port, holds them, and says "ready".
    let addr = c.addr.clone().unwrap();
    let (host, port) = addr.split_once(':').unwrap();
    let flood = format!(
        "import socket, sys, time\n\
         held = []\n\
         for i in range(3000):\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.settimeout(1)\n\
         \x20   try: s.connect('{sock}'); held.append(s)\n\
         \x20   except OSError: pass\n\
         for i in range(1500):\n\
         \x20   s = socket.socket(); s.settimeout(1)\n\
         \x20   try: s.connect(('{host}', {port})); held.append(s)\n\
         \x20   except OSError: pass\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n",
        sock = c.socket.display()
    );
    let mut bobs = std::process::Command::new("python3");
    bobs.args(["-c", &flood])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::uid(&mut bobs, bob.uid);
    std::os::unix::process::CommandExt::gid(&mut bobs, bob.gid);
    let mut bobs = bobs.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(bobs.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    // Meanwhile: alice and root are served, and alice gets a session.
    let started = std::time::Instant::now();
    let q = c.stj(Some(&alice), c.path(), &["q", "--json"]);
    let q_took = started.elapsed();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert!(c.stj(None, c.path(), &["q"]).status.success());
    let out = ok(c.ssh_to_job(
        &alice,
        &["--mode", "direct", &job.to_string(), "echo served"],
        None,
    ));
    assert_eq!(out, "served\n");
    eprintln!("under the flood: alice's stj q took {q_took:?}");
    assert!(
        nix::sys::signal::kill(pid, None).is_ok(),
        "the schedd is alive"
    );
    assert!(c.socket.exists(), "its socket is still there");
    assert!(c.schedd_log().contains("connection caps"));
    drop(bobs.stdin.take());
    bobs.wait().unwrap();
    assert!(c.stj(Some(&alice), c.path(), &["q"]).status.success());
}

/// Counts one peer as done when dropped, however it ended.
struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The schedd's resident memory, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn unauthenticated_peers_cannot_make_the_schedd_buffer_megabytes() {
    use tokio::io::AsyncWriteExt;
    let mut c = Cluster::new();
    let pid = c.schedd_pid().unwrap();
    let token =
        stj_proto::token::JoinToken::parse(&std::fs::read_to_string(&c.token_file).unwrap())
            .unwrap();
    let addr = c.addr.clone().unwrap();
    let before = rss_kib(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 500 peers, each with a key of its own (any key passes TLS), each
    // sending a 1 MiB frame as its "hello" and then holding on.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let peers: Vec<_> = (0..500)
        .map(|_| {
            let (addr, token, mut stop) = (addr.clone(), token.clone(), stop_rx.clone());
            let sent = sent.clone();
            rt.spawn(async move {
                let _count = Counted(sent);
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
                    .unwrap()
                    .self_signed(&key)
                    .unwrap();
                let id = (
                    vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(
                        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
                    ),
                );
                let (cfg, _) = stj_starter::tls::client_config(token.ca_sha256, id).unwrap();
                let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else {
                    return;
                };
                let Ok(mut tls) = tokio_rustls::TlsConnector::from(cfg)
                    .connect(stj_starter::tls::server_name(), tcp)
                    .await
                else {
                    return;
                };
                let mut frame = (1u32 << 20).to_be_bytes().to_vec();
                frame.resize(4 + (1 << 20), 7);
                let _ = tls.write_all(&frame).await;
                drop(_count);
                let _ = stop.changed().await;
            })
        })
        .collect();
    // The highest the schedd's memory goes while they come.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    // Meanwhile a real starter registers.
    c.start_starter("node1", 1);
    wait_until(
        "every peer to have sent its frame (or been refused)",
        Duration::from_secs(60),
        || (sent.load(std::sync::atomic::Ordering::Relaxed) == 500).then_some(()),
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    stop_tx.send(true).unwrap();
    for p in peers {
        let _ = rt.block_on(p);
    }
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("schedd RSS {before} KiB before, {peak} KiB under 500 unauthenticated 1 MiB hellos");
    assert!(grown_mib < 48, "the schedd grew by {grown_mib} MiB");
    assert!(c.stj(None, c.path(), &["q"]).status.success());
}

#[test]
fn a_flooded_starter_still_starts_jobs_and_a_broken_one_hands_them_back() {
    // A starter with a small fd limit, its session port flooded by bob.
    let mut c = Cluster::new();
    c.starter_fd_limit = Some(1024);
    c.start_starter("node1", 4);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let direct = c.session_listen_addr("node1");
    let (host, port) = direct.split_once(':').unwrap();
    let flood = format!(
        "import socket, sys\n\
         held = []\n\
         for i in range(3000):\n\
         \x20   s = socket.socket(); s.settimeout(1)\n\
         \x20   try: s.connect(('{host}', {port})); held.append(s)\n\
         \x20   except OSError: pass\n\
         print('ready', flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut bobs = std::process::Command::new("python3");
    bobs.args(["-c", &flood])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    std::os::unix::process::CommandExt::uid(&mut bobs, bob.uid);
    std::os::unix::process::CommandExt::gid(&mut bobs, bob.gid);
    let mut bobs = bobs.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(bobs.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    // Jobs assigned during the flood start (they used to end with "Too many
    // open files"), and sessions into them work.
    let jobs: Vec<u64> = (0..3)
        .map(|i| c.submit(&alice, &["--", "sleep", &format!("8643{i}")]))
        .collect();
    for j in &jobs {
        c.wait_state(*j, "running", T);
    }
    let out = ok(c.ssh_to_job(
        &alice,
        &["--mode", "relay", &jobs[0].to_string(), "echo started"],
        None,
    ));
    assert_eq!(out, "started\n");
    drop(bobs.stdin.take());
    bobs.wait().unwrap();
    for j in &jobs {
        ok(c.stj(Some(&alice), c.path(), &["rm", &j.to_string()]));
    }

    // A node whose work dir broke after it registered (read-only now)
    // cannot start jobs: they go back to the queue and run elsewhere.
    c.kill_starter("node1");
    c.start_starter("node2", 8);
    let ro = stj_tests::read_only(&c.path().join("node-node2/jobs"));
    c.start_starter("node3", 1);
    // node2 has the most free slots, so it is tried first.
    let j = c.submit(&alice, &["--", "sleep", "86439"]);
    let job = c.wait_state(j, "running", T);
    drop(ro);
    assert_eq!(job["node"], "node3", "{job}");
    assert!(
        c.schedd_log()
            .contains("the node could not start the job; requeued"),
        "node2 failed it first"
    );
}

/// A schedd restart brings every starter back at once. Registrations are
/// admitted at a bounded rate (here 200 a second, for 600 simulated
/// starters: a storm of seconds); starters call back at random moments
/// and, turned away, later. Meanwhile a real node that is back serves its
/// sessions as ever, and every starter is registered again in the end.
#[test]
fn a_reconnect_storm_after_a_schedd_restart_keeps_sessions_going() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut c =
        Cluster::with_schedd_config("max_registrations_per_sec = 200\nheartbeat_secs = 1\n");
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86433"]);
    c.wait_state(job, "running", T);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let token =
        stj_proto::token::JoinToken::parse(&std::fs::read_to_string(&c.token_file).unwrap())
            .unwrap();
    let addr = c.addr.clone().unwrap();
    let base = std::time::Instant::now();
    let marks: Vec<Arc<AtomicU64>> = (0..600).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, m) in marks.iter().enumerate() {
        rt.spawn(stj_tests::sim_starter::stay_registered(
            addr.clone(),
            token.clone(),
            format!("storm-{i}"),
            base,
            m.clone(),
        ));
    }
    wait_until(
        "600 simulated starters to register",
        Duration::from_secs(120),
        || {
            marks
                .iter()
                .all(|m| m.load(Ordering::SeqCst) > 0)
                .then_some(())
        },
    );
    c.kill_schedd();
    let restart = base.elapsed().as_millis() as u64;
    c.start_schedd();
    // node1 is back (it calls back like the rest) and serves its job's
    // sessions while the storm goes on.
    let out = wait_until(
        "a session into the job on a node that is back",
        Duration::from_secs(60),
        || {
            let o = c.ssh_to_job(&alice, &[&job.to_string(), "echo back"], None);
            o.status
                .success()
                .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
        },
    );
    assert_eq!(out, "back\n");
    let during = marks
        .iter()
        .filter(|m| m.load(Ordering::SeqCst) <= restart)
        .count();
    wait_until(
        "every simulated starter to register again",
        Duration::from_secs(120),
        || {
            marks
                .iter()
                .all(|m| m.load(Ordering::SeqCst) > restart)
                .then_some(())
        },
    );
    assert!(
        during > 0,
        "the storm was paced: some starters were still away when the session ran"
    );
    // `stj nodes` lists them all, though one reply holds at most 500.
    let node_names = |names: &[&str]| -> Vec<String> {
        let args = [&["nodes", "--json"][..], names].concat();
        let out = ok(c.stj(Some(&alice), &c.workdir(&alice), &args));
        let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_string())
            .collect()
    };
    let names = node_names(&[]);
    assert_eq!(names.len(), 601, "600 simulated starters and node1");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
    // Named ones, from anywhere in the list.
    let named = node_names(&["storm-599", "node1", "storm-0"]);
    assert_eq!(named, ["node1", "storm-0", "storm-599"]);
    rt.shutdown_background();
}
