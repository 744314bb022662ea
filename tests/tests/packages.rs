//! The Debian packages (`scripts/package.sh`, which `scripts/test.sh` runs
//! before the tests), installed with dpkg under a real systemd: files where
//! an admin looks for them, the units pass `systemd-analyze verify`, the
//! maintainer scripts enable and start what they should, the daemons run
//! in their units' sandboxes with the installed config and give a test
//! user a session in a job, an upgrade restarts the schedd but not the
//! starter (nor its job), and a purge leaves nothing behind.
//!
//! These machines boot without systemd, so the test boots one as PID 1 of
//! namespaces of its own (`stj_tests::systemd`): /etc, /usr and /var are
//! the host's, /run is its own. Everything that talks to the units
//! (dpkg, systemctl, the users' commands, which find the schedd's socket
//! under /run) runs inside with nsenter.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use stj_tests::systemd::Systemd;
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
        .args(["/etc", "/usr", "/var/lib", "/opt", "/srv"])
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

/// The systemd the packages are installed under; on the way out, whatever
/// happened, the units stopped and the packages purged (inside, so the
/// maintainer scripts reach systemd), then systemd itself goes.
struct Machine {
    sd: Systemd,
    dir: tempfile::TempDir,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- systemd and units' output\n{}", self.sd.log());
        }
        let _ = self
            .sd
            .systemctl(&["stop", "stj-starter.service", "stj-schedd.service"]);
        let _ = self
            .sd
            .command("dpkg")
            .arg("--purge")
            .args(PACKAGES)
            .stdin(Stdio::null())
            .output();
    }
}

impl Machine {
    /// `program` inside, as root; its output, which must say success.
    fn run(&self, program: &str, args: &[&str]) -> String {
        ok(self
            .sd
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}")))
    }

    /// `program` inside as `user`, in `wd`, with a login's HOME and
    /// runtime directory.
    fn as_user(&self, user: &TestUser, wd: &Path, program: &str, args: &[&str]) -> Output {
        let runtime = self.dir.path().join(format!("run-{}", user.uid));
        if !runtime.exists() {
            fs::create_dir(&runtime).unwrap();
            nix::unistd::chown(&runtime, Some(user.uid.into()), Some(user.gid.into())).unwrap();
            fs::set_permissions(
                &runtime,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .unwrap();
        }
        self.sd
            .command_as(user.uid, user.gid, wd, program)
            .args(args)
            .env("HOME", user.home())
            .env("USER", &user.name)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {program} as {}: {e}", user.name))
    }

    /// `stat -c FORMAT path` inside (paths under /run are systemd's own).
    fn stat(&self, format: &str, path: &str) -> String {
        self.run("stat", &["-c", format, path]).trim().to_string()
    }

    fn exists(&self, path: &str) -> bool {
        self.sd
            .command("test")
            .args(["-e", path])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn is_active(&self, unit: &str) -> String {
        self.sd.answer(&["is-active", unit])
    }

    fn is_enabled(&self, unit: &str) -> String {
        self.sd.answer(&["is-enabled", unit])
    }

    fn main_pid(&self, unit: &str) -> String {
        let pid = self.sd.property(unit, "MainPID");
        assert!(
            pid != "0" && !pid.is_empty(),
            "{unit} runs: {}",
            self.sd.log()
        );
        pid
    }

    /// A line of /proc/PID/status inside (`CapBnd`, `NoNewPrivs`).
    fn status_field(&self, pid: &str, field: &str) -> String {
        let status = self.run("cat", &[&format!("/proc/{pid}/status")]);
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
            .trim()
            .to_string()
    }

    fn dpkg_install(&self, debs: &[PathBuf]) {
        let out = self
            .sd
            .command("dpkg")
            .arg("--install")
            .args(debs)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dpkg --install: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.sd.log()
        );
    }

    /// `stj nodes --json` inside, as root: is `node` connected?
    fn connected(&self, node: &str) -> bool {
        let out = self
            .sd
            .command("/usr/bin/stj")
            .args(["nodes", "--json"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v.as_array().map(|a| {
                    a.iter()
                        .any(|n| n["name"] == node && n["state"] == "connected")
                })
            })
            .unwrap_or(false)
    }

    fn job_state(&self, job: &str) -> Option<String> {
        let out = self
            .sd
            .command("/usr/bin/stj")
            .args(["q", "--json", job])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["state"].as_str().map(str::to_string)
    }
}

/// Removes (empty) directories on the way out, whatever happened.
struct RmdirOnDrop(Vec<PathBuf>);

impl Drop for RmdirOnDrop {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = fs::remove_dir(d);
        }
    }
}

/// The cgroup hierarchies job cgroups go in: the v2 one (unified or the
/// root) and each v1 one.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_path_buf()];
    }
    let mut v: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !p.is_symlink() && p.join("cgroup.procs").exists())
        .collect();
    // The first is the one a starter locks: v2 first.
    v.sort_by_key(|p| !p.ends_with("unified"));
    v
}

/// CapBnd (hex) has capability number `cap`.
fn has_cap(capbnd: &str, cap: u32) -> bool {
    u64::from_str_radix(capbnd, 16).expect("CapBnd is hex") & (1 << cap) != 0
}

const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_BOOT: u32 = 22;

#[test]
fn packages_install_run_upgrade_and_purge_clean_under_systemd() {
    let debs: Vec<PathBuf> = PACKAGES.iter().map(|p| deb(p)).collect();
    for p in PACKAGES {
        assert!(
            !installed(p),
            "{p} is installed already (a run that did not finish?): dpkg --purge {} first",
            PACKAGES.join(" ")
        );
    }
    // The purge deletes the default state and token paths: never those of
    // a pool set up by hand on this machine.
    for p in ["/etc/stj", "/var/lib/stj"] {
        assert!(
            !Path::new(p).exists(),
            "{p} exists: a pool of this machine's own? the test would purge it; move it away first"
        );
    }
    // Users exist before the snapshot: making one writes to /etc.
    let alice = TestUser::alice();
    let work = alice.home().join("stj-package-test");
    let before = snapshot();
    let private_tmp = |d: &str| -> BTreeSet<String> {
        fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("systemd-private-") && n.contains("-stj-"))
            .collect()
    };
    let private_before = (private_tmp("/tmp"), private_tmp("/var/tmp"));

    let dir = tempfile::tempdir().unwrap();
    let sd = Systemd::boot(&dir.path().join("systemd.log"));
    let m = Machine { sd, dir };

    m.dpkg_install(&debs);

    // Where an admin looks for things.
    for f in [
        "/usr/sbin/stj-schedd",
        "/usr/sbin/stj-starter",
        "/usr/bin/ssh-to-job",
        "/usr/bin/stj",
        "/usr/bin/stj-proxy",
        "/usr/lib/stj/libstj_preload.so",
        "/usr/lib/tmpfiles.d/stj-schedd.conf",
        "/usr/lib/systemd/system/stj-schedd-sock.service",
        "/usr/share/man/man8/stj-schedd.8.gz",
        "/usr/share/man/man8/stj-starter.8.gz",
        "/usr/share/man/man1/ssh-to-job.1.gz",
        "/usr/share/man/man1/stj.1.gz",
        "/usr/share/man/man1/stj-proxy.1.gz",
        "/usr/share/bash-completion/completions/ssh-to-job",
        "/usr/share/zsh/vendor-completions/_stj",
        "/usr/share/fish/vendor_completions.d/stj-schedd.fish",
        "/usr/share/doc/stj-common/README.md.gz",
        "/usr/share/doc/stj-common/copyright",
        "/usr/share/doc/stj-schedd/changelog.Debian.gz",
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
    let arch = ok(Command::new("dpkg-query")
        .args(["-W", "-f", "${Architecture}", "stj-common"])
        .output()
        .unwrap());
    assert_eq!(arch, "all", "stj-common holds no binaries");

    // The maintainer scripts: the schedd enabled and running, the starter
    // installed but neither (it needs its schedd address and token first).
    assert_eq!(m.is_enabled("stj-schedd.service"), "enabled");
    wait_until("stj-schedd.service to be active", T, || {
        (m.is_active("stj-schedd.service") == "active").then_some(())
    });
    assert_eq!(m.is_enabled("stj-starter.service"), "disabled");
    assert_eq!(m.is_active("stj-starter.service"), "inactive");
    // The reverse-connection directory, root's, reachable by users.
    assert_eq!(m.stat("%a %u", "/run/lock/stj"), "755 0");
    assert_eq!(m.stat("%a %u", "/run/lock/stj/daemon_sock"), "1733 0");

    // The units as systemd reads them: keys, paths, man pages they name.
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(Path::new(UNIT_DIR).join("stj-schedd.service"))
        .arg(Path::new(UNIT_DIR).join("stj-schedd-sock.service"))
        .arg(Path::new(UNIT_DIR).join("stj-starter.service"))
        .output()
        .expect("run systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    wait_until(
        "the installed schedd to answer on /run/stj/schedd.sock",
        T,
        || {
            m.sd.command("/usr/bin/stj")
                .arg("nodes")
                .stdin(Stdio::null())
                .output()
                .ok()?
                .status
                .success()
                .then_some(())
        },
    );

    // The schedd's sandbox, as systemd made it: only the capabilities the
    // unit names, no_new_privs, and of /run only what it uses (not
    // systemd's private socket, which root could otherwise drive).
    let schedd = m.main_pid("stj-schedd.service");
    let capbnd = m.status_field(&schedd, "CapBnd");
    assert_eq!(
        u64::from_str_radix(&capbnd, 16).unwrap(),
        (1 << CAP_DAC_OVERRIDE) | (1 << CAP_NET_BIND_SERVICE),
        "stj-schedd's bounding set"
    );
    assert_eq!(m.status_field(&schedd, "NoNewPrivs"), "1");
    assert!(m.exists("/run/systemd/private"), "systemd's socket exists");
    let in_schedd = |path: &str| {
        m.sd.command("nsenter")
            .args(["-t", &schedd, "-m", "test", "-e", path])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    assert!(
        !in_schedd("/run/systemd/private"),
        "the schedd sees systemd's socket"
    );
    assert!(in_schedd("/run/stj/schedd.sock"));
    assert!(in_schedd("/run/lock/stj/daemon_sock"));

    // After a reboot /run/lock (a tmpfs) starts empty: tmpfiles.d makes the
    // directory at boot, and stj-schedd-sock.service before each start of
    // the schedd (a configured directory, too).
    m.run("systemctl", &["stop", "stj-schedd.service"]);
    m.run("rm", &["-rf", "/run/lock/stj"]);
    m.run("systemd-tmpfiles", &["--create", "stj-schedd.conf"]);
    assert_eq!(m.stat("%a %u", "/run/lock/stj/daemon_sock"), "1733 0");
    m.run("rm", &["-rf", "/run/lock/stj"]);
    m.run("systemctl", &["start", "stj-schedd.service"]);
    assert_eq!(m.stat("%a %u", "/run/lock/stj"), "755 0");
    assert_eq!(m.stat("%a %u", "/run/lock/stj/daemon_sock"), "1733 0");

    // A node, with README's lines: its token from the schedd, the
    // schedd's address in the conffile, then enable --now.
    // As the starter names itself: in systemd's UTS namespace.
    let node = m.run("hostname", &[]).trim().to_string();
    let token = m.dir.path().join(format!("join-token.{node}"));
    m.run(
        "/usr/sbin/stj-schedd",
        &["token", &node, "--out", &token.to_string_lossy()],
    );
    m.run(
        "sed",
        &[
            "-i",
            r#"s/^#schedd = .*/schedd = "127.0.0.1:9618"/"#,
            "/etc/stj/stj.toml",
        ],
    );
    assert!(fs::read_to_string("/etc/stj/stj.toml")
        .unwrap()
        .contains("\nschedd = \"127.0.0.1:9618\"\n"));
    m.run(
        "install",
        &["-m", "600", &token.to_string_lossy(), "/etc/stj/join-token"],
    );
    m.run("systemctl", &["enable", "--now", "stj-starter.service"]);
    assert_eq!(m.is_enabled("stj-starter.service"), "enabled");
    wait_until("the installed starter to register", T, || {
        m.connected(&node).then_some(())
    });

    // A job and a session, as a user, with the installed commands and
    // nothing but their defaults.
    fs::create_dir_all(&work).unwrap();
    nix::unistd::chown(&work, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();
    let submit = m.as_user(
        &alice,
        &work,
        "/usr/bin/stj",
        &[
            "submit",
            "--",
            "sh",
            "-c",
            "echo from-the-job > out; exec sleep 600",
        ],
    );
    let job = ok(submit).trim().to_string();
    wait_until("the job to run", T, || {
        (m.job_state(&job).as_deref() == Some("running") && work.join("out").exists()).then_some(())
    });
    // Reverse: through the directory the package made (auto would fall
    // back to the relay if users could not reach it, or the sandboxed
    // schedd could not reach their sockets). --auto-retry: the job may
    // still be starting on its node.
    let session = |what: &str| {
        let out = m.as_user(
            &alice,
            &work,
            "/usr/bin/ssh-to-job",
            &["--mode", "reverse", "--auto-retry", &job, "cat out; pwd"],
        );
        assert!(
            out.status.success(),
            "{what}: ssh-to-job {job}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.sd.log()
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("from-the-job\n{}\n", work.display())
        );
    };
    session("first session");
    // Its start found the directory as it should be, inside its sandbox.
    assert!(
        !m.sd.log().contains("the daemon_sock dir is missing"),
        "{}",
        m.sd.log()
    );

    // Nothing the job starts, even set-id, may load a kernel module.
    let uid = alice.uid.to_string();
    let job_pid = m.run("pgrep", &["-u", &uid, "-x", "sleep"]);
    let job_pid = job_pid.lines().next().expect("the job's sleep").to_string();
    let job_capbnd = m.status_field(&job_pid, "CapBnd");
    assert!(
        !has_cap(&job_capbnd, CAP_SYS_MODULE) && !has_cap(&job_capbnd, CAP_SYS_BOOT),
        "the job's bounding set {job_capbnd} keeps SYS_MODULE or SYS_BOOT"
    );

    // An upgrade (the same packages again): the schedd restarts, the
    // starter and its job do not; sessions work once the node is back.
    let starter = m.main_pid("stj-starter.service");
    m.dpkg_install(&debs);
    wait_until("stj-schedd.service to be active again", T, || {
        (m.is_active("stj-schedd.service") == "active").then_some(())
    });
    assert_ne!(
        m.main_pid("stj-schedd.service"),
        schedd,
        "the schedd restarted"
    );
    assert_eq!(
        m.main_pid("stj-starter.service"),
        starter,
        "the starter kept running"
    );
    wait_until("the starter to be back after the upgrade", T, || {
        m.connected(&node).then_some(())
    });
    assert_eq!(m.job_state(&job).as_deref(), Some("running"));
    session("session after the upgrade");

    ok(m.as_user(&alice, &work, "/usr/bin/stj", &["rm", &job]));
    wait_until("the job's processes to end", T, || {
        (!m.exists(&format!("/proc/{job_pid}"))).then_some(())
    });

    // Removed, not purged: the units stopped, the admin's configuration
    // stays (policy), the programs go.
    m.run(
        "dpkg",
        &[
            "--remove",
            PACKAGES[0],
            PACKAGES[1],
            PACKAGES[2],
            PACKAGES[3],
        ],
    );
    assert_eq!(m.is_active("stj-schedd.service"), "inactive");
    assert_eq!(m.is_active("stj-starter.service"), "inactive");
    assert!(
        Path::new("/etc/stj/stj.toml").exists(),
        "conffile kept on remove"
    );
    assert!(!Path::new("/usr/sbin/stj-schedd").exists());

    // Purged: nothing of ours anywhere (caches of other packages aside,
    // e.g. man-db's pages formatted for systemd-analyze's look-ups).
    m.run(
        "dpkg",
        &[
            "--purge",
            PACKAGES[0],
            PACKAGES[1],
            PACKAGES[2],
            PACKAGES[3],
        ],
    );
    for p in ["/run/stj", "/run/lock/stj", "/etc/stj/join-token"] {
        assert!(!m.exists(p), "{p} left after purge");
    }
    fs::remove_dir_all(&work).unwrap();
    drop(m);

    // Another starter instance on this node, still running: its cgroup
    // parent in every hierarchy, flocked (as a starter does) in the first
    // only. The starter's purge leaves it in all. (Run here, outside the
    // test's systemd, which empties cgroups at the root of some v1
    // hierarchies when units go, as a host's systemd does not.)
    let other: Vec<PathBuf> = cgroup_hierarchies()
        .iter()
        .map(|h| h.join("stj_pkgtest-other"))
        .collect();
    let _rmdir = RmdirOnDrop(other.clone());
    for d in &other {
        fs::create_dir(d).unwrap();
    }
    let held = fs::File::open(&other[0]).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&held),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0
    );
    let scripts = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb("stj-starter"))
        .arg(scripts.path())
        .output()
        .unwrap());
    ok(Command::new("sh")
        .arg(scripts.path().join("postrm"))
        .arg("purge")
        .output()
        .unwrap());
    let gone: Vec<&PathBuf> = other.iter().filter(|d| !d.is_dir()).collect();
    drop(held);
    assert!(
        gone.is_empty(),
        "a running starter's cgroup parents removed by the purge: {gone:?}"
    );
    // Once that starter is gone, the next purge removes them.
    ok(Command::new("sh")
        .arg(scripts.path().join("postrm"))
        .arg("purge")
        .output()
        .unwrap());
    let left: Vec<&PathBuf> = other.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "left by the purge: {left:?}");
    let after = snapshot();
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|p| !p.starts_with("/var/lib/man-db") && !p.starts_with("/var/cache/"))
        .collect();
    assert!(left.is_empty(), "left after purge: {left:#?}");
    // (Empty cgroup parents of starters that no longer run, stj_*, are
    // the purge's to remove, whoever's they were.)
    let gone: Vec<&String> = before
        .difference(&after)
        .filter(|p| !(p.starts_with("/sys/fs/cgroup/") && p.contains("/stj_")))
        .collect();
    assert!(
        gone.is_empty(),
        "removed by the packages but not theirs: {gone:#?}"
    );
    // PrivateTmp= directories go with the unit.
    assert_eq!(
        (private_tmp("/tmp"), private_tmp("/var/tmp")),
        private_before
    );
}
