//! Interactive jobs and the client's ssh habits: `stj submit --interactive`,
//! --auto-retry, the ssh_config block, port forwarding.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stj_tests::{bin, ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// Collects a child's output as it comes.
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

fn stj_as(c: &Cluster, user: &TestUser, args: &str) -> Command {
    // script(1) gives the command a real pty, as a person's terminal would.
    let mut cmd = Command::new("script");
    cmd.args([
        "-qfec",
        &format!("{} {args}", bin("stj").display()),
        "/dev/null",
    ])
    .current_dir(c.workdir(user))
    .env("STJ_SCHEDD_SOCKET", &c.socket)
    .env("STJ_DAEMON_SOCK_DIR", &c.daemon_sock)
    .env("HOME", user.home())
    .env("XDG_RUNTIME_DIR", c.runtime_dir(user))
    .env("TERM", "xterm");
    std::os::unix::process::CommandExt::uid(&mut cmd, user.uid);
    std::os::unix::process::CommandExt::gid(&mut cmd, user.gid);
    cmd
}

fn live_jobs(c: &Cluster) -> Vec<serde_json::Value> {
    let out = ok(c.stj(None, c.path(), &["q", "--json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn interactive_job_gives_a_shell_in_a_fresh_job_and_goes_away_on_exit() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let mut child = stj_as(&c, &alice, "submit --interactive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    // Type into the shell until it answers from inside the job.
    wait_until("a shell inside the job", T, || {
        stdin
            .write_all(b"echo IN-JOB-$STJ_JOB_ID-$(id -u)\n")
            .ok()?;
        std::thread::sleep(Duration::from_millis(200));
        let text = out.lock().unwrap().clone();
        text.lines()
            .any(|l| {
                l.trim_start().starts_with("IN-JOB-1-")
                    && l.trim_end().ends_with(&alice.uid.to_string())
            })
            .then_some(())
    });
    stdin.write_all(b"exit\n").unwrap();
    let status = wait_until("stj to end with the session", T, || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "{}", out.lock().unwrap());
    wait_until("the job to be gone from stj q", T, || {
        live_jobs(&c).is_empty().then_some(())
    });
}

#[test]
fn ctrl_c_while_the_job_waits_removes_it() {
    let c = Cluster::new(); // no starter: the job stays idle
    let alice = TestUser::alice();
    let mut child = stj_as(&c, &alice, "submit --interactive")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    wait_until("the waiting display", T, || {
        out.lock()
            .unwrap()
            .contains("position 1 in the queue")
            .then_some(())
    });
    assert_eq!(live_jobs(&c).len(), 1);
    // Ctrl-C typed on the terminal.
    child.stdin.as_mut().unwrap().write_all(&[3]).unwrap();
    let status = wait_until("stj to stop", T, || child.try_wait().unwrap());
    assert!(!status.success());
    let text = out.lock().unwrap().clone();
    assert!(
        text.contains("interrupted while waiting for job 1") && text.contains("job 1 removed"),
        "{text}"
    );
    assert!(live_jobs(&c).is_empty());
    assert_eq!(c.job(1)["state"], "removed");
}

#[test]
fn auto_retry_waits_for_the_job_to_start() {
    let mut c = Cluster::new();
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86411"]);
    let jid = id.to_string();
    let out = c.ssh_to_job(&alice, &[&jid, "true"], None);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("job {id} is idle, not running")),
        "{err}"
    );

    let mut waiting = c
        .ssh_to_job_cmd(&alice, &["--auto-retry", &jid, "echo attached"], None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = waiting.stderr.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            s2.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    wait_until("the client to wait", T, || {
        seen.lock()
            .unwrap()
            .contains(&format!("waiting for job {id}: idle"))
            .then_some(())
    });
    c.start_starter("node1", 1);
    let o = waiting.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "attached\n",
        "{}",
        seen.lock().unwrap()
    );
}

/// What a user's own `Host *` may set that would break the session, or
/// silently reuse one (a ControlMaster: no capability, no audit record).
const HOSTILE: &str = "Host *
    User mallory
    Port 2222
    IdentityFile ~/.ssh/not_a_key
    IdentitiesOnly yes
    IdentityAgent none
    ControlMaster auto
    ControlPath ~/.ssh/cm-%r@%h:%p
    ControlPersist 60
    StrictHostKeyChecking no
    UserKnownHostsFile ~/.ssh/known_hosts_elsewhere
    HostKeyAlias somewhere-else
    ProxyUseFdpass no
    LogLevel ERROR
";

#[test]
fn ssh_scp_sftp_rsync_and_git_through_the_installed_block_despite_hostile_stanzas() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let carol = TestUser::get("stjtest-carol");
    let id = c.submit(&carol, &["--", "sleep", "86412"]);
    c.wait_state(id, "running", T);
    let host = format!("stj-job-{id}");
    let ssh_dir = carol.home().join(".ssh");
    fs::remove_dir_all(&ssh_dir).ok();
    fs::create_dir_all(&ssh_dir).unwrap();
    // Hostile before (what the user had); --install must go above it.
    fs::write(
        ssh_dir.join("config"),
        format!("{HOSTILE}\nHost login\n    HostName 192.0.2.1\n"),
    )
    .unwrap();
    Command::new("chown")
        .args(["-R", &format!("{}:{}", carol.uid, carol.gid)])
        .arg(&ssh_dir)
        .status()
        .unwrap();
    // Neither the schedd socket nor the daemon_sock dir in the environment
    // of what ssh runs: the block carries the one, the schedd tells the other.
    let env = |cmd: &mut Command| {
        cmd.current_dir(c.workdir(&carol))
            .env_remove("STJ_SCHEDD_SOCKET")
            .env_remove("STJ_DAEMON_SOCK_DIR")
            .env("HOME", carol.home())
            .env("XDG_RUNTIME_DIR", c.runtime_dir(&carol))
            .stdin(Stdio::null());
        std::os::unix::process::CommandExt::uid(cmd, carol.uid);
        std::os::unix::process::CommandExt::gid(cmd, carol.gid);
    };
    let install = || {
        let mut i = Command::new(bin("ssh-to-job"));
        i.args(["ssh-config", "--install", "--socket"])
            .arg(&c.socket);
        env(&mut i);
        ok(i.output().unwrap())
    };
    install();
    let config = fs::read_to_string(ssh_dir.join("config")).unwrap();
    assert!(
        config.lines().nth(1)
            == Some(format!("Include \"{}\"", ssh_dir.join("stj_config").display()).as_str()),
        "{config}"
    );
    assert!(
        config.contains("User mallory"),
        "the user's config is kept: {config}"
    );
    assert_eq!(
        fs::read_to_string(ssh_dir.join("config.stj-backup")).unwrap(),
        format!("{HOSTILE}\nHost login\n    HostName 192.0.2.1\n")
    );
    // And hostile after it too; installing again changes nothing.
    fs::write(ssh_dir.join("config"), format!("{config}\n{HOSTILE}")).unwrap();
    let again = install();
    assert!(again.contains("already includes"), "{again}");
    let key = carol.home().join(".config/stj/id_ed25519");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&key).unwrap().permissions()) & 0o777,
        0o600
    );

    let run = |program: &str, args: &[&str]| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        env(&mut cmd);
        ok(cmd.output().unwrap())
    };
    let mut connections = 0;
    let first = run("ssh", &[&host, "echo $STJ_SESSION_ID"]);
    let second = run("ssh", &[&host, "echo $STJ_SESSION_ID"]);
    connections += 2;
    assert_ne!(first, second, "no ControlMaster shares a session");
    assert!(!ssh_dir.read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("cm-")));
    let wd = c.workdir(&carol);
    fs::write(wd.join("f.txt"), "scp'd\n").unwrap();
    fs::create_dir_all(wd.join("tree/sub")).unwrap();
    fs::write(wd.join("tree/sub/a"), "A").unwrap();
    fs::write(wd.join("batch"), "put f.txt /tmp/sftp.txt\n").unwrap();
    Command::new("chown")
        .args(["-R", &format!("{}:{}", carol.uid, carol.gid)])
        .arg(&wd)
        .status()
        .unwrap();
    run("scp", &["f.txt", &format!("{host}:/tmp/f.txt")]);
    run("rsync", &["-a", "tree/", &format!("{host}:/tmp/tree/")]);
    run("sftp", &["-q", "-b", "batch", &host]);
    connections += 3;
    assert_eq!(
        run(
            "ssh",
            &[&host, "cat /tmp/f.txt /tmp/tree/sub/a /tmp/sftp.txt"]
        ),
        "scp'd\nAscp'd\n"
    );
    // git clone of a bare repository that exists only inside the job (/tmp is private).
    run("ssh", &[&host, "git init -q --bare /tmp/r.git && git clone -q /tmp/r.git /tmp/w && cd /tmp/w && git -c user.email=j@b -c user.name=j commit -q --allow-empty -m from-the-job && git push -q origin HEAD:master"]);
    run(
        "git",
        &["clone", "-q", &format!("{host}:/tmp/r.git"), "cloned"],
    );
    connections += 3;
    let log = run("git", &["-C", "cloned", "log", "--format=%s"]);
    assert_eq!(log.trim(), "from-the-job");

    // A client that cannot take an fd (Windows OpenSSH, ProxyUseFdpass no)
    // gets bytes; VS Code's own command line (-T -D, commands on stdin).
    // A port that was free a moment ago (ssh -D takes no port 0).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let socks = format!("127.0.0.1:{port}");
    let mut vscode = Command::new("ssh");
    vscode.args(["-o", "ProxyUseFdpass=no", "-T", "-D", &socks, &host, "bash"]);
    env(&mut vscode);
    let mut child = vscode
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        b"echo vscode-$STJ_JOB_ID; exit 3\n",
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    connections += 1;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("vscode-{id}\n")
    );

    // With HOME elsewhere than the account's home (cron, some editors),
    // ssh still reads the account's ~/.ssh and the proxy asks for the key
    // ssh offers (both find ~ in the passwd entry).
    let elsewhere = c.workdir(&carol).join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    nix::unistd::chown(&elsewhere, Some(carol.uid.into()), Some(carol.gid.into())).unwrap();
    let mut moved = Command::new("ssh");
    moved.args([&host, "echo home-elsewhere-ok"]);
    env(&mut moved);
    moved.env("HOME", &elsewhere);
    assert_eq!(ok(moved.output().unwrap()), "home-elsewhere-ok\n");
    connections += 1;

    // The host key is checked exactly, by the KnownHostsCommand: without
    // it nothing is taken on trust (no CA stands in for it on this host).
    let mut blind = Command::new("ssh");
    blind.args([
        "-o",
        "KnownHostsCommand=none",
        "-o",
        "UserKnownHostsFile=/dev/null",
        &host,
        "echo should-not-run",
    ]);
    env(&mut blind);
    let out = blind.output().unwrap();
    connections += 1;
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `ssh -A` forwards carol's agent, whatever IdentityAgent her Host * says.
    let sock = c.workdir(&carol).join("agent.sock");
    let mut agent = Command::new("ssh-agent");
    agent.args(["-D", "-a"]).arg(&sock).stdout(Stdio::null());
    env(&mut agent);
    let mut agent = agent.spawn().unwrap();
    wait_until("carol's agent", T, || sock.exists().then_some(()));
    let mut add = Command::new("ssh-add");
    add.arg(carol.home().join(".config/stj/id_ed25519"));
    env(&mut add);
    add.env("SSH_AUTH_SOCK", &sock);
    assert!(add.status().unwrap().success());
    let mut forwarded = Command::new("ssh");
    forwarded.args(["-A", &host, "ssh-add -l"]);
    env(&mut forwarded);
    forwarded.env("SSH_AUTH_SOCK", &sock);
    let listed = ok(forwarded.output().unwrap());
    connections += 1;
    agent.kill().ok();
    agent.wait().ok();
    assert!(
        listed.contains("ssh-to-job"),
        "the stj key, as the agent holds it: {listed}"
    );

    // Each connection had its own capability, and its own audit record.
    let records = c.audit(Some(&carol), id);
    let granted = records.iter().filter(|r| r["outcome"] == "granted").count();
    assert_eq!(granted, connections, "{records:?}");
}

#[test]
fn local_port_forwarding_reaches_a_server_inside_the_job() {
    let mut c = Cluster::with_net();
    c.start_starter_with("node1", 1, &[]);
    let alice = TestUser::alice();
    let server = "use IO::Socket::INET; my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 7777, Listen => 5, ReuseAddr => 1) or die; while (my $c = $s->accept) { print $c \"hello from the job\\n\"; close $c }";
    let id = c.submit(&alice, &["--", "perl", "-e", server]);
    c.wait_state(id, "running", T);
    let mut fwd = c
        .ssh_to_job_cmd(
            &alice,
            &[
                "-L",
                "127.0.0.1:17777:127.0.0.1:7777",
                "-N",
                &id.to_string(),
            ],
            None,
        )
        .spawn()
        .unwrap();
    let net = c.net.as_ref().unwrap();
    let submit = net.submit.clone();
    // The job's port lives on a NAT'd node: only the forward reaches it.
    let got = wait_until("the forwarded port to answer", T, || {
        net.within(&submit, || {
            let addr: SocketAddr = "127.0.0.1:17777".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            (!text.is_empty()).then_some(text)
        })
    });
    assert_eq!(got, "hello from the job\n");
    fwd.kill().ok();
    fwd.wait().ok();
}

/// paramiko (Fabric, Ansible's paramiko connection) checks host keys only
/// against known_hosts, and runs a ProxyCommand without an fd to take.
/// `ssh-to-job host-key --add J` puts the job's host key there, learnt
/// through a handshake with its starter; then paramiko with its strictest
/// policy, and `ansible -c paramiko -m ping`, reach the job.
#[test]
fn paramiko_and_ansible_reach_a_job_whose_host_key_was_added() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let erin = TestUser::get("stjtest-erin");
    let id = c.submit(&erin, &["--", "sleep", "86470"]);
    c.wait_state(id, "running", T);
    fs::remove_dir_all(erin.home().join(".ssh")).ok();
    fs::remove_dir_all(erin.home().join(".ansible")).ok();
    // Erin's other known hosts, which --add must keep as they are.
    fs::create_dir_all(erin.home().join(".ssh")).unwrap();
    let others = "|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDjSchg/OlMq00vI52YcyMuEvlaWPDU97PItaBLtrfSH\nlogin1,10.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDjSchg/OlMq00vI52YcyMuEvlaWPDU97PItaBLtrfSH\n@cert-authority *.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDjSchg/OlMq00vI52YcyMuEvlaWPDU97PItaBLtrfSH\n";
    fs::write(erin.home().join(".ssh/known_hosts"), others).unwrap();
    stj_tests::sh(&format!(
        "chown -R {}:{} {}",
        erin.uid,
        erin.gid,
        erin.home().join(".ssh").display()
    ));
    let env = |cmd: &mut Command| {
        cmd.current_dir(c.workdir(&erin))
            .env("HOME", erin.home())
            .env("LC_ALL", "C.UTF-8")
            .env("STJ_SCHEDD_SOCKET", &c.socket)
            .env_remove("STJ_DAEMON_SOCK_DIR")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(Stdio::null());
        std::os::unix::process::CommandExt::uid(cmd, erin.uid);
        std::os::unix::process::CommandExt::gid(cmd, erin.gid);
    };
    let me = bin("ssh-to-job");
    // The stj key (made on first use) is what paramiko logs in with.
    let mut gen = Command::new(&me);
    gen.arg("ssh-config");
    env(&mut gen);
    ok(gen.output().unwrap());
    let key = erin.home().join(".config/stj/id_ed25519");
    let proxy = format!(
        "{} proxy --job-key --socket {} %h",
        me.display(),
        c.socket.display()
    );
    let script = format!(
        r#"
import paramiko, sys
c = paramiko.SSHClient()
c.load_system_host_keys()
c.set_missing_host_key_policy(paramiko.RejectPolicy())
try:
    c.connect("stj-job-{id}", username="{user}", key_filename="{key}",
              sock=paramiko.ProxyCommand("{proxy}".replace("%h", "stj-job-{id}")),
              look_for_keys=False, allow_agent=False, timeout=30)
except paramiko.SSHException as e:
    print("refused:", e)
    sys.exit(3)
_, out, _ = c.exec_command("echo paramiko-$STJ_JOB_ID")
print(out.read().decode(), end="")
"#,
        user = erin.name,
        key = key.display(),
    );
    let paramiko = || {
        let mut p = Command::new("python3");
        p.args(["-c", &script]);
        env(&mut p);
        p.output().unwrap()
    };
    // Nothing on trust: with no line for the job, the strictest policy says no.
    let before = paramiko();
    assert_eq!(
        before.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );
    assert!(String::from_utf8_lossy(&before.stdout).contains("not found in known_hosts"));

    let mut add = Command::new(&me);
    add.args(["host-key", "--add", &id.to_string()]);
    env(&mut add);
    let line = ok(add.output().unwrap());
    assert!(
        line.starts_with(&format!("stj-job-{id} ssh-ed25519 ")),
        "{line}"
    );
    let known = fs::read_to_string(erin.home().join(".ssh/known_hosts")).unwrap();
    assert_eq!(
        known,
        format!("{others}{line}"),
        "the others kept, the line printed added"
    );
    // Adding again replaces it rather than piling up lines.
    ok(add.output().unwrap());
    assert_eq!(
        fs::read_to_string(erin.home().join(".ssh/known_hosts")).unwrap(),
        format!("{others}{line}")
    );

    let after = paramiko();
    assert_eq!(
        String::from_utf8_lossy(&after.stdout),
        format!("paramiko-{id}\n"),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );

    // Only sessions that ask for the job's key get it: OpenSSH through the
    // proxy without --job-key meets a one-time key, which the line does not
    // vouch for; with --job-key the line does.
    let openssh = |job_key: bool| {
        let mut o = Command::new("ssh");
        o.args(["-F", "none", "-l", &erin.name, "-i"])
            .arg(&key)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=yes",
            ])
            .arg("-o")
            .arg(format!(
                "ProxyCommand={} proxy {} --socket {} %n",
                me.display(),
                if job_key { "--job-key" } else { "" },
                c.socket.display()
            ))
            .args([&format!("stj-job-{id}"), "echo openssh-in"]);
        env(&mut o);
        o.output().unwrap()
    };
    let one_time = openssh(false);
    assert_eq!(one_time.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&one_time.stderr).contains("IDENTIFICATION HAS CHANGED")
            || String::from_utf8_lossy(&one_time.stderr).contains("Host key verification failed"),
        "{}",
        String::from_utf8_lossy(&one_time.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&openssh(true).stdout),
        "openssh-in\n"
    );

    let mut ansible = Command::new("ansible");
    ansible
        .args([
            "all",
            "-i",
            &format!("stj-job-{id},"),
            "-c",
            "paramiko",
            "-u",
            &erin.name,
        ])
        .arg("--private-key")
        .arg(&key)
        .args(["-m", "ping", "-o"])
        .env("ANSIBLE_PARAMIKO_PROXY_COMMAND", &proxy)
        .env("ANSIBLE_HOST_KEY_CHECKING", "True");
    env(&mut ansible);
    let out = ansible.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("SUCCESS") && text.contains("pong"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
