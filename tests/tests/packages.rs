//! The Debian packages (`scripts/package.sh`, which `scripts/test.sh` runs
//! before the tests) installed with dpkg on this machine: files where an
//! admin looks for them, the units pass `systemd-analyze verify`, the
//! installed daemons run as their units start them (with the installed
//! config, unchanged) and give a test user a session in a job, and a purge
//! leaves nothing behind.
//!
//! There is no systemd as PID 1 here, so the units are not started by
//! systemd: the test runs each unit's ExecStartPre and ExecStart lines
//! itself, under the unit's capability bounding set and no_new_privs
//! (setpriv), the two directives most likely to break a daemon. The
//! file-system sandboxing of stj-schedd.service is checked by
//! `systemd-analyze verify` only.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stj_tests::{bin, ok, wait_until, TestUser};

const T: Duration = Duration::from_secs(60);
const PACKAGES: [&str; 4] = ["stj-common", "stj-schedd", "stj-starter", "ssh-to-job"];
const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// `target/debian/NAME_*.deb`, made by scripts/package.sh.
fn deb(name: &str) -> PathBuf {
    let target = bin("stj")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    let dir = target.join("debian");
    fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let f = p.file_name().unwrap_or_default().to_string_lossy();
            f.starts_with(&format!("{name}_")) && f.ends_with(".deb")
        })
        .unwrap_or_else(|| {
            panic!(
                "no {name}_*.deb in {}: build the packages first (scripts/package.sh; scripts/test.sh does)",
                dir.display()
            )
        })
}

fn installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Every path under the places packages and daemons write, and the
/// cgroup directories a starter makes.
fn snapshot() -> BTreeSet<String> {
    let out = ok(Command::new("find")
        .args(["/etc", "/usr", "/var/lib", "/run", "/opt", "/srv"])
        .args(["-xdev", "-path", "/var/lib/dpkg", "-prune", "-o", "-print"])
        .output()
        .expect("run find"));
    let mut paths: BTreeSet<String> = out.lines().map(str::to_string).collect();
    let cg = ok(Command::new("find")
        .args([
            "/sys/fs/cgroup",
            "-maxdepth",
            "2",
            "-type",
            "d",
            "-name",
            "stj_*",
        ])
        .output()
        .expect("run find"));
    paths.extend(cg.lines().map(str::to_string));
    paths
}

/// What a unit file says about starting its daemon.
struct Unit {
    exec_start_pre: Vec<String>,
    exec_start: String,
    /// setpriv's --bounding-set argument, from CapabilityBoundingSet=.
    bounding_set: Option<String>,
    no_new_privs: bool,
    umask: Option<String>,
}

impl Unit {
    fn read(name: &str) -> Unit {
        let text = fs::read_to_string(Path::new(UNIT_DIR).join(name)).expect("installed unit");
        let mut u = Unit {
            exec_start_pre: vec![],
            exec_start: String::new(),
            bounding_set: None,
            no_new_privs: false,
            umask: None,
        };
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "ExecStartPre" => u.exec_start_pre.push(v.to_string()),
                "ExecStart" => u.exec_start = v.to_string(),
                "NoNewPrivileges" => u.no_new_privs = v == "yes",
                "UMask" => u.umask = Some(v.to_string()),
                "CapabilityBoundingSet" => {
                    let (drop, caps) = match v.strip_prefix('~') {
                        Some(rest) => (true, rest),
                        None => (false, v),
                    };
                    let names = caps
                        .split_whitespace()
                        .map(|c| c.trim_start_matches("CAP_").to_lowercase());
                    u.bounding_set = Some(if drop {
                        names.map(|c| format!("-{c}")).collect::<Vec<_>>().join(",")
                    } else {
                        std::iter::once("-all".to_string())
                            .chain(names.map(|c| format!("+{c}")))
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                }
                _ => {}
            }
        }
        assert!(!u.exec_start.is_empty(), "{name} has an ExecStart");
        u
    }

    /// `line` as systemd would run it in this unit's sandbox ("+": outside
    /// it, but with the unit's umask still).
    fn command(&self, line: &str) -> Command {
        let (privileged, line) = match line.strip_prefix('+') {
            Some(l) => (true, l),
            None => (false, line),
        };
        let argv: Vec<&str> = line.split_whitespace().collect();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "umask {} && exec \"$@\"",
                self.umask.as_deref().unwrap_or("0022")
            ))
            .args(["sh", "setpriv"]);
        if !privileged {
            if let Some(b) = &self.bounding_set {
                c.arg(format!("--bounding-set={b}"));
            }
            if self.no_new_privs {
                c.arg("--no-new-privs");
            }
        }
        c.arg("--").args(&argv);
        c
    }
}

/// The installed pool: its daemons stopped and the packages purged on the
/// way out, whatever happens in between.
struct Pool {
    dir: tempfile::TempDir,
    daemons: Vec<(String, Child)>,
}

impl Pool {
    fn start(&mut self, name: &str, unit: &Unit) {
        for pre in &unit.exec_start_pre {
            let out = unit.command(pre).output().expect("run ExecStartPre");
            assert!(
                out.status.success(),
                "{name} ExecStartPre={pre}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = fs::File::create(self.log_path(name)).unwrap();
        let child = unit
            .command(&unit.exec_start)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the installed daemon");
        self.daemons.push((name.to_string(), child));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self) -> String {
        self.daemons
            .iter()
            .map(|(n, _)| {
                format!(
                    "--- {n}\n{}",
                    fs::read_to_string(self.log_path(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// SIGTERM to each daemon, newest first; waits for each to exit.
    fn stop(&mut self) {
        while let Some((name, mut child)) = self.daemons.pop() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let exited = wait_until(&format!("{name} to exit on SIGTERM"), T, || {
                child.try_wait().ok().flatten()
            });
            assert!(exited.success(), "{name} exited with {exited} on SIGTERM");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (_, c) in self.daemons.iter_mut() {
            c.kill().ok();
            c.wait().ok();
        }
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

fn mode(p: &str) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .mode()
        & 0o7777
}

#[test]
fn packages_install_run_a_session_with_the_installed_config_and_purge_clean() {
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(p)).collect();
    for p in PACKAGES {
        assert!(
            !installed(p),
            "{p} is installed already (a run that did not finish?): dpkg --purge {} first",
            PACKAGES.join(" ")
        );
    }
    // Users exist before the snapshot: making one writes to /etc.
    let alice = TestUser::alice();
    let before = snapshot();

    let mut pool = Pool {
        dir: tempfile::tempdir().unwrap(),
        daemons: vec![],
    };
    ok(Command::new("dpkg")
        .arg("--install")
        .args(&debs)
        .output()
        .unwrap());

    // Where an admin looks for things.
    for f in [
        "/usr/sbin/stj-schedd",
        "/usr/sbin/stj-starter",
        "/usr/bin/ssh-to-job",
        "/usr/bin/stj",
        "/usr/bin/stj-proxy",
        "/usr/lib/stj/libstj_preload.so",
        "/usr/share/man/man8/stj-schedd.8.gz",
        "/usr/share/man/man8/stj-starter.8.gz",
        "/usr/share/man/man1/ssh-to-job.1.gz",
        "/usr/share/man/man1/stj.1.gz",
        "/usr/share/man/man1/stj-proxy.1.gz",
        "/usr/share/bash-completion/completions/ssh-to-job",
        "/usr/share/zsh/vendor-completions/_stj",
        "/usr/share/fish/vendor_completions.d/stj-schedd.fish",
        "/usr/share/doc/stj-common/README.md",
    ] {
        assert!(Path::new(f).is_file(), "{f} is installed");
    }
    let conffiles = ok(Command::new("dpkg-query")
        .args(["-W", "-f", "${Conffiles}", "stj-common"])
        .output()
        .unwrap());
    assert!(
        conffiles.contains("/etc/stj/stj.toml"),
        "stj.toml is a conffile: {conffiles}"
    );
    // The postinst made the reverse-connection directory.
    assert_eq!(mode("/var/lock/stj/daemon_sock"), 0o1733);
    assert_eq!(fs::metadata("/var/lock/stj/daemon_sock").unwrap().uid(), 0);
    // The schedd is enabled at install; the starter is not (it needs its
    // token first).
    let wants = Path::new("/etc/systemd/system/multi-user.target.wants");
    assert!(
        wants.join("stj-schedd.service").exists(),
        "stj-schedd.service enabled"
    );
    assert!(
        !wants.join("stj-starter.service").exists(),
        "stj-starter.service not enabled"
    );

    // The units as systemd reads them: keys, paths, man pages they name.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(Path::new(UNIT_DIR).join("stj-schedd.service"))
        .arg(Path::new(UNIT_DIR).join("stj-starter.service"))
        .output()
        .expect("run systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // The daemons, as their units start them, with the installed config;
    // the schedd as after a reboot, when /run/lock (a tmpfs) starts empty.
    let schedd = Unit::read("stj-schedd.service");
    assert!(schedd.no_new_privs && schedd.bounding_set.is_some() && schedd.umask.is_some());
    fs::remove_dir_all("/run/lock/stj").unwrap();
    pool.start("stj-schedd", &schedd);
    // Made again by its ExecStartPre, reachable by users despite UMask.
    assert_eq!(mode("/run/lock/stj"), 0o755);
    assert_eq!(mode("/var/lock/stj/daemon_sock"), 0o1733);
    let stj = |user: Option<&TestUser>, args: &[&str]| {
        let mut c = Command::new("/usr/bin/stj");
        c.args(args).current_dir("/").stdin(Stdio::null());
        if let Some(u) = user {
            c.uid(u.uid).gid(u.gid);
        }
        c.output().expect("run /usr/bin/stj")
    };
    wait_until(
        "the installed schedd to answer on /run/stj/schedd.sock",
        T,
        || stj(None, &["nodes"]).status.success().then_some(()),
    );
    let node = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    ok(Command::new("/usr/sbin/stj-schedd")
        .args(["token", &node, "--out", "/etc/stj/join-token"])
        .output()
        .unwrap());
    pool.start("stj-starter", &Unit::read("stj-starter.service"));
    wait_until("the installed starter to register", T, || {
        let out = stj(None, &["nodes", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v.as_array()?
            .iter()
            .any(|n| n["name"] == node.as_str() && n["state"] == "connected")
            .then_some(())
    });

    // A job and a session, as a user, with the installed commands and
    // nothing but their defaults.
    let work = alice.home().join("stj-package-test");
    fs::create_dir_all(&work).unwrap();
    nix::unistd::chown(&work, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();
    let submit = Command::new("/usr/bin/stj")
        .args([
            "submit",
            "--",
            "sh",
            "-c",
            "echo from-the-job > out; exec sleep 600",
        ])
        .current_dir(&work)
        .uid(alice.uid)
        .gid(alice.gid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let job = ok(submit).trim().to_string();
    wait_until("the job to run", T, || {
        let out = stj(None, &["q", "--json", &job]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[0]["state"] == "running" && work.join("out").exists()).then_some(())
    });
    let runtime = pool.dir.path().join("run-alice");
    fs::create_dir(&runtime).unwrap();
    nix::unistd::chown(&runtime, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();
    fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Reverse: through the directory the package made (auto would fall
    // back to the relay if users could not reach it).
    let session = Command::new("/usr/bin/ssh-to-job")
        .args(["--mode", "reverse", &job, "cat out; pwd"])
        .current_dir(&work)
        .env("HOME", alice.home())
        .env("XDG_RUNTIME_DIR", &runtime)
        .uid(alice.uid)
        .gid(alice.gid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        session.status.success(),
        "ssh-to-job {job}: {}\n{}",
        String::from_utf8_lossy(&session.stderr),
        pool.logs()
    );
    assert_eq!(
        String::from_utf8_lossy(&session.stdout),
        format!("from-the-job\n{}\n", work.display())
    );
    ok(stj(Some(&alice), &["rm", &job]));
    pool.stop();

    // Removed, not purged: the admin's configuration stays (policy), the
    // programs go.
    ok(Command::new("dpkg")
        .arg("--remove")
        .args(PACKAGES)
        .output()
        .unwrap());
    assert!(
        Path::new("/etc/stj/stj.toml").exists(),
        "conffile kept on remove"
    );
    assert!(!Path::new("/usr/sbin/stj-schedd").exists());

    // Purged: nothing of ours anywhere (caches of other packages aside,
    // e.g. man-db's pages formatted for systemd-analyze's look-ups).
    ok(Command::new("dpkg")
        .arg("--purge")
        .args(PACKAGES)
        .output()
        .unwrap());
    fs::remove_dir_all(&work).unwrap();
    let after = snapshot();
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.starts_with("/var/lib/man-db") && !p.starts_with("/var/cache/"))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:#?}");
    let gone: Vec<&String> = before.difference(&after).collect();
    assert!(
        gone.is_empty(),
        "removed by the packages but not theirs: {gone:#?}"
    );
}
