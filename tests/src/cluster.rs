//! A whole pool on this machine: one schedd and any number of starters, each
//! a real process with its own state under a temp dir, logs kept for failures.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::{bin, wait_until, TestUser};

pub struct Starter {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub token_file: PathBuf,
    /// The schedd's TCP address, fixed after the first start so a restarted
    /// schedd is where starters expect it.
    pub addr: Option<String>,
    schedd: Option<Child>,
    starters: Vec<Starter>,
    /// Where reverse connections are handed to clients.
    pub daemon_sock: PathBuf,
    /// When set, the schedd and clients live in `net.submit` and starters in
    /// the NAT'd node namespaces.
    pub net: Option<crate::netns::Net>,
    /// Daemons started from now on log at debug level.
    pub debug: bool,
    /// The schedd's fd limit, when a test wants a small one.
    pub schedd_fd_limit: Option<u64>,
    /// The same for starters started from now on.
    pub starter_fd_limit: Option<u64>,
}

/// The child `cmd` starts gets `n` as its hard (and soft) fd limit: a
/// daemon then raises its soft limit only up to it.
fn fd_limit(cmd: &mut Command, n: u64) {
    // SAFETY: setrlimit between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn log_file(path: &Path) -> Stdio {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log file")
        .into()
}

impl Cluster {
    /// A fresh pool with its schedd running (no starters yet).
    pub fn new() -> Cluster {
        Cluster::with_schedd_config("")
    }

    /// A pool on the NAT topology of `netns.rs`.
    pub fn with_net() -> Cluster {
        Cluster::build("", Some(crate::netns::Net::new()))
    }

    /// `with_net`, with extra `[schedd]` config lines (TOML).
    pub fn with_net_and_schedd_config(schedd_toml: &str) -> Cluster {
        Cluster::build(schedd_toml, Some(crate::netns::Net::new()))
    }

    /// Like `new`, with extra `[schedd]` config lines (TOML).
    pub fn with_schedd_config(schedd_toml: &str) -> Cluster {
        Cluster::build(schedd_toml, None)
    }

    fn build(schedd_toml: &str, net: Option<crate::netns::Net>) -> Cluster {
        // Not /tmp: jobs get a private /tmp, so their working directories
        // must live elsewhere.
        fs::create_dir_all("/var/tmp/stj-tests").expect("create /var/tmp/stj-tests");
        let dir = tempfile::Builder::new()
            .prefix("pool-")
            .tempdir_in("/var/tmp/stj-tests")
            .expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path().to_path_buf();
        let mut c = Cluster {
            socket: p.join("schedd.sock"),
            state_dir: p.join("schedd"),
            token_file: p.join("join-token"),
            dir,
            addr: None,
            schedd: None,
            starters: Vec::new(),
            daemon_sock: p.join("daemon_sock"),
            net,
            debug: false,
            schedd_fd_limit: None,
            starter_fd_limit: None,
        };
        let out = Command::new(bin("stj-schedd"))
            .arg("init-daemon-sock")
            .arg("--dir")
            .arg(&c.daemon_sock)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init-daemon-sock: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(
            c.path().join("stj.toml"),
            format!("[schedd]\n{schedd_toml}\n"),
        )
        .unwrap();
        c.start_schedd();
        // The pool's own starters enrol with a token for any name; tests of
        // enrolment mint their own with `mint_token`.
        let token = c.token_file.clone();
        c.mint_token(&["*"], &token, &[]);
        c
    }

    /// `stj-schedd token NODES... --out FILE EXTRA...` against this pool.
    pub fn mint_token(&self, nodes: &[&str], file: &Path, extra: &[&str]) {
        let out = Command::new(bin("stj-schedd"))
            .arg("token")
            .args(nodes)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--out")
            .arg(file)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stj-schedd token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn schedd_log(&self) -> String {
        fs::read_to_string(self.path().join("schedd.log")).unwrap_or_default()
    }

    pub fn start_schedd(&mut self) {
        assert!(self.schedd.is_none(), "schedd already running");
        let addr_file = self.state_dir.join("schedd.addr");
        fs::remove_file(&addr_file).ok();
        let listen = match (&self.net, &self.addr) {
            (Some(_), _) => format!("0.0.0.0:{}", crate::netns::SCHEDD_PORT),
            (None, Some(a)) => a.clone(),
            (None, None) => "127.0.0.1:0".into(),
        };
        let ns = self.net.as_ref().map(|n| n.submit.clone());
        let mut cmd = self.command(ns.as_deref(), None, &bin("stj-schedd"));
        if let Some(n) = self.schedd_fd_limit {
            fd_limit(&mut cmd, n);
        }
        let child = cmd
            .arg("--daemon-sock-dir")
            .arg(&self.daemon_sock)
            .arg("--config")
            .arg(self.path().join("stj.toml"))
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .args(["--listen", &listen])
            .args(if self.debug {
                &["--debug"][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(log_file(&self.path().join("schedd.log")))
            .stderr(log_file(&self.path().join("schedd.log")))
            .spawn()
            .expect("start stj-schedd");
        self.schedd = Some(child);
        let addr = wait_until("the schedd to listen", Duration::from_secs(20), || {
            fs::read_to_string(&addr_file)
                .ok()
                .filter(|s| !s.is_empty())
        });
        self.addr = Some(match &self.net {
            // Starters reach it through the router at the submit host's address.
            Some(_) => format!("{}:{}", crate::netns::SUBMIT_IP, crate::netns::SCHEDD_PORT),
            None => addr,
        });
    }

    /// SIGTERM to the schedd, and its exit status once it has drained.
    pub fn stop_schedd(&mut self) -> std::process::ExitStatus {
        let mut c = self.schedd.take().expect("the schedd runs");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("signal the schedd");
        c.wait().expect("wait for the schedd")
    }

    /// `kill -9` of the schedd.
    pub fn kill_schedd(&mut self) {
        if let Some(mut c) = self.schedd.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// `kill -9` of a starter.
    pub fn kill_starter(&mut self, name: &str) {
        for s in self.starters.iter_mut().filter(|s| s.name == name) {
            s.child.kill().ok();
            s.child.wait().ok();
        }
    }

    /// The pid of starter `name`'s process.
    pub fn starter_pid(&self, name: &str) -> Option<u32> {
        self.starters
            .iter()
            .rev()
            .find(|s| s.name == name)
            .map(|s| s.child.id())
    }

    /// The address starter `name` accepts direct sessions on, from its log.
    pub fn session_listen_addr(&self, name: &str) -> String {
        wait_until(
            "the starter to say where it listens",
            Duration::from_secs(20),
            || {
                self.starter_log(name)
                    .lines()
                    .find(|l| l.contains("accepting direct session connections"))
                    .and_then(|l| l.split("listen=").nth(1))
                    .map(|a| a.split_whitespace().next().unwrap_or("").to_string())
            },
        )
    }

    pub fn schedd_pid(&self) -> Option<u32> {
        self.schedd.as_ref().map(|c| c.id())
    }

    /// Starts a starter that takes direct sessions on loopback, and waits
    /// until the schedd has registered it.
    pub fn start_starter(&mut self, name: &str, slots: u32) {
        self.start_starter_with(name, slots, &["--session-listen", "127.0.0.1:0"]);
    }

    /// `start_starter`, running jobs as the slot uids `first`..=`last`.
    pub fn start_slot_user_starter(&mut self, name: &str, slots: u32, first: u32, last: u32) {
        let range = format!("{first}-{last}");
        self.start_starter_with(
            name,
            slots,
            &["--session-listen", "127.0.0.1:0", "--slot-users", &range],
        );
    }

    pub fn start_starter_with(&mut self, name: &str, slots: u32, extra: &[&str]) {
        self.start_starter_with_token(name, slots, &self.token_file.clone(), extra)
    }

    /// `start_starter_with`, enrolling with `token` instead of the pool's.
    pub fn start_starter_with_token(
        &mut self,
        name: &str,
        slots: u32,
        token: &Path,
        extra: &[&str],
    ) {
        let child = self.spawn_starter(name, slots, token, extra);
        let log = self.path().join(format!("starter-{name}.log"));
        self.starters.push(Starter {
            name: name.to_string(),
            child,
            log,
        });
        self.wait_registrations(name, 1, Duration::from_secs(20));
    }

    /// Waits until starter `name` has registered with the schedd `times`
    /// times in all (2 = it came back once by itself).
    pub fn wait_registrations(&self, name: &str, times: usize, timeout: Duration) {
        wait_until(
            &format!("starter {name} to register {times} time(s)"),
            timeout,
            || {
                (self
                    .starter_log(name)
                    .matches("registered with the schedd")
                    .count()
                    >= times)
                    .then_some(())
            },
        );
    }

    /// Spawns a starter without waiting for anything (for tests of refusals).
    pub fn spawn_starter(
        &self,
        name: &str,
        slots: u32,
        token_file: &Path,
        extra: &[&str],
    ) -> Child {
        let work = self.path().join(format!("node-{name}"));
        self.spawn_starter_in(name, name, &work, slots, token_file, extra)
    }

    /// `spawn_starter` with the work dir (and so the node identity) given,
    /// logging to `starter-LOG.log`: another machine claiming a name.
    pub fn spawn_starter_in(
        &self,
        name: &str,
        log: &str,
        work_dir: &Path,
        slots: u32,
        token_file: &Path,
        extra: &[&str],
    ) -> Child {
        let log_name = log;
        let log = self.path().join(format!("starter-{log}.log"));
        // On the NAT topology "nodeN" runs in the N-th node namespace.
        let ns = self.net.as_ref().map(|n| {
            let i: usize = name.trim_start_matches("node").parse().unwrap_or(1);
            n.nodes[i.saturating_sub(1).min(n.nodes.len() - 1)].clone()
        });
        let mut cmd = self.command(ns.as_deref(), None, &bin("stj-starter"));
        if let Some(n) = self.starter_fd_limit {
            fd_limit(&mut cmd, n);
        }
        cmd.args(["--schedd", self.addr.as_deref().expect("schedd address")])
            .arg("--token-file")
            .arg(token_file)
            .args(["--name", name, "--kill-grace-secs", "2"])
            .arg("--work-dir")
            .arg(work_dir);
        // Beside slurmd a starter runs no job of its own: no slots, no
        // cgroups of its own to place (it refuses knobs for them).
        if !extra.windows(2).any(|w| w == ["--jobs", "slurm"]) {
            cmd.args(["--slots", &slots.to_string()])
                .arg("--cgroup-parent")
                // Another machine claiming a name has cgroups of its own.
                .arg(self.cgroup_parent(log_name));
        }
        cmd.args(extra)
            .args(if self.debug {
                &["--debug"][..]
            } else {
                &[][..]
            })
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("start stj-starter")
    }

    /// Where node `name`'s job cgroups go: pools run side by side, so each
    /// starter gets its own parent (one starter per parent).
    pub fn cgroup_parent(&self, name: &str) -> String {
        let pool = self.path().file_name().unwrap().to_string_lossy();
        format!("stjtest/{pool}-{name}")
    }

    /// Job `id`'s cgroup directories on node `name`, one per hierarchy.
    pub fn job_cgroups(&self, name: &str, id: u64) -> Vec<PathBuf> {
        cgroup_mounts()
            .into_iter()
            .map(|m| {
                m.join(self.cgroup_parent(name))
                    .join(format!("stj-job-{id}"))
            })
            .filter(|d| d.is_dir())
            .collect()
    }

    pub fn starter_log(&self, name: &str) -> String {
        fs::read_to_string(self.path().join(format!("starter-{name}.log"))).unwrap_or_default()
    }

    /// Waits for a starter that must refuse to run (`spawn_starter`),
    /// checks that it exited non-zero, and returns its log.
    pub fn starter_refused(&self, log: &str, mut child: Child) -> String {
        let status = wait_until(
            &format!("starter {log} to give up"),
            Duration::from_secs(30),
            || child.try_wait().unwrap(),
        );
        assert!(!status.success(), "starter {log} must exit non-zero");
        self.starter_log(log)
    }

    /// A working directory owned by `user`, outside /tmp.
    pub fn workdir(&self, user: &TestUser) -> PathBuf {
        let d = self.path().join(format!("work-{}", user.name));
        fs::create_dir_all(&d).unwrap();
        nix::unistd::chown(&d, Some(user.uid.into()), Some(user.gid.into())).unwrap();
        d
    }

    /// Runs `stj ARGS` as `user` (root when None) in `cwd`.
    pub fn stj(&self, user: Option<&TestUser>, cwd: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(bin("stj"));
        cmd.args(args)
            .current_dir(cwd)
            .env("STJ_SCHEDD_SOCKET", &self.socket)
            .stdin(Stdio::null());
        if let Some(u) = user {
            cmd.uid(u.uid).gid(u.gid);
        }
        cmd.output().expect("run stj")
    }

    /// Runs `ssh-to-job ARGS` as `user` in its work dir, with `stdin` as input.
    pub fn ssh_to_job(&self, user: &TestUser, args: &[&str], stdin: Option<&Path>) -> Output {
        self.ssh_to_job_cmd(user, args, stdin)
            .output()
            .expect("run ssh-to-job")
    }

    pub fn ssh_to_job_cmd(&self, user: &TestUser, args: &[&str], stdin: Option<&Path>) -> Command {
        let ns = self.net.as_ref().map(|n| n.submit.clone());
        let mut cmd = self.command(ns.as_deref(), Some(user), &bin("ssh-to-job"));
        cmd.args(args)
            .current_dir(self.workdir(user))
            .env("STJ_SCHEDD_SOCKET", &self.socket)
            .env("STJ_DAEMON_SOCK_DIR", &self.daemon_sock)
            .env("HOME", user.home())
            .env("XDG_RUNTIME_DIR", self.runtime_dir(user));
        match stdin {
            Some(p) => cmd.stdin(fs::File::open(p).expect("stdin file")),
            None => cmd.stdin(Stdio::null()),
        };
        cmd
    }

    /// `program` as `user` (root when None), inside network namespace `ns`
    /// if given (via `nsenter --net` and `setpriv`: only the network
    /// changes; `ip netns exec` would also remount /sys, hiding the cgroup
    /// filesystems a node's starter works with).
    pub fn command(&self, ns: Option<&str>, user: Option<&TestUser>, program: &Path) -> Command {
        match ns {
            None => {
                let mut c = Command::new(program);
                if let Some(u) = user {
                    c.uid(u.uid).gid(u.gid);
                }
                c
            }
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{ns}"));
                if let Some(u) = user {
                    c.arg("setpriv")
                        .arg(format!("--reuid={}", u.uid))
                        .arg(format!("--regid={}", u.gid))
                        .args(["--clear-groups", "--"]);
                }
                c.arg(program);
                c
            }
        }
    }

    /// A private runtime dir for `user`'s ssh-to-job runs, so tests can see
    /// that nothing is left in it.
    pub fn runtime_dir(&self, user: &TestUser) -> PathBuf {
        let d = self.path().join(format!("run-{}", user.uid));
        if !d.exists() {
            fs::create_dir_all(&d).unwrap();
            nix::unistd::chown(&d, Some(user.uid.into()), Some(user.gid.into())).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        }
        d
    }

    /// `stj submit` as `user` in its work dir; returns the job id.
    pub fn submit(&self, user: &TestUser, args: &[&str]) -> u64 {
        let cwd = self.workdir(user);
        let out = self.stj(Some(user), &cwd, &[&["submit"], args].concat());
        assert!(
            out.status.success(),
            "stj submit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("stj submit prints the job id alone")
    }

    pub fn job(&self, id: u64) -> serde_json::Value {
        let out = self.stj(None, self.path(), &["q", "--json", &id.to_string()]);
        assert!(
            out.status.success(),
            "stj q failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("stj q --json is JSON");
        v[0].clone()
    }

    /// `stj audit --job ID --json` as `user` (root when None).
    pub fn audit(&self, user: Option<&TestUser>, job: u64) -> Vec<serde_json::Value> {
        let out = self.stj(
            user,
            self.path(),
            &["audit", "--job", &job.to_string(), "--json"],
        );
        assert!(
            out.status.success(),
            "stj audit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("stj audit --json is JSON");
        v.as_array().cloned().unwrap_or_default()
    }

    /// Waits (with `stj wait`, which blocks server-side) for a job state.
    /// For "running" also until its node reported the job started: the
    /// queue says running once the job is assigned, and a session asked for
    /// before the node has started it is told "still starting".
    pub fn wait_state(&self, id: u64, state: &str, timeout: Duration) -> serde_json::Value {
        let out = self.stj(
            None,
            self.path(),
            &[
                "wait",
                &id.to_string(),
                "--state",
                state,
                "--timeout",
                &timeout.as_secs().to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "job {id} did not reach {state}: {} (job now: {})",
            String::from_utf8_lossy(&out.stderr),
            self.job(id)
        );
        let job = self.job(id);
        if state == "running" {
            let node = format!("node={}", job["node"].as_str().unwrap_or_default());
            let job_id = format!("job_id={id}");
            wait_until("the node to report the job started", timeout, || {
                self.schedd_log()
                    .lines()
                    .any(|l| {
                        l.contains("job started") && {
                            let words: Vec<&str> = l.split_whitespace().collect();
                            words.contains(&node.as_str()) && words.contains(&job_id.as_str())
                        }
                    })
                    .then_some(())
            });
        }
        job
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- schedd log ----\n{}", self.schedd_log());
            for s in &self.starters {
                eprintln!(
                    "---- starter {} log ----\n{}",
                    s.name,
                    fs::read_to_string(&s.log).unwrap_or_default()
                );
            }
        }
        for s in &mut self.starters {
            s.child.kill().ok();
            s.child.wait().ok();
        }
        self.kill_schedd();
        // The starters' cgroup parents (their jobs died with them; the
        // kernel lets a cgroup go once its last process has).
        let pool = self
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        for m in cgroup_mounts() {
            for e in fs::read_dir(m.join("stjtest"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if !e.file_name().to_string_lossy().starts_with(&pool) {
                    continue;
                }
                let parent = e.path();
                let gone = || {
                    for j in fs::read_dir(&parent).into_iter().flatten().flatten() {
                        if j.path().is_dir() {
                            fs::remove_dir(j.path()).ok();
                        }
                    }
                    fs::remove_dir(&parent).is_ok().then_some(())
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while gone().is_none() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// The roots of this machine's cgroup hierarchies (v1 controllers, the
/// unified v2 mount), from /proc/self/mountinfo.
pub fn cgroup_mounts() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Host pids of processes whose command line starts with `prefix` (so the
/// ssh-to-job or ssh that merely carries it as an argument does not count).
pub fn pids_matching(prefix: &str) -> Vec<i32> {
    procs(|pid| {
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        Some(
            String::from_utf8_lossy(&cmd)
                .replace('\0', " ")
                .starts_with(prefix),
        )
    })
}

/// Host pids of processes whose name (`comm`) is `name`.
pub fn pids_named(name: &str) -> Vec<i32> {
    procs(|pid| {
        Some(
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()?
                .trim_end()
                == name,
        )
    })
}

fn procs(mut matches: impl FnMut(i32) -> Option<bool>) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| pid != me && matches(pid) == Some(true))
        .collect()
}
