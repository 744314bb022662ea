//! A real systemd as PID 1, for the packages' units: these machines boot
//! without one, and a unit is only tested when systemd runs it (its
//! sandbox, the units it pulls in, what the maintainer scripts ask of
//! systemctl).
//!
//! It runs in PID, mount and UTS namespaces of its own, with a private
//! /run and a unit search path in which empty targets stand in for the
//! host's and every unit the host's targets would pull in is masked, so
//! only what the tests start runs (every service's output going to one
//! file, as there is no journald). A whole boot would run the
//! host's units, and systemd-tmpfiles-setup alone would empty /tmp under
//! every other test. /etc, /usr and /var are the host's, so what the
//! packages install and what their maintainer scripts do lands where it
//! would on a real machine. Its cgroups live under `stj-test-systemd` in
//! each hierarchy and go with it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::wait_until;

const CGROUP: &str = "stj-test-systemd";

/// Runs as PID 1 of the new namespaces, then becomes systemd.
const BOOT: &str = r#"
set -e
mount --make-rprivate /
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/stj-systemd/units
chmod 1777 /run/lock
U=/run/stj-systemd/units
for t in sysinit basic network network-online multi-user shutdown remote-fs nss-user-lookup stj-test; do
  printf '[Unit]\nDescription=%s (stj test)\n' "$t" > "$U/$t.target"
done
printf '[Unit]\nDescription=system (stj test)\n' > "$U/system.slice"
for w in /etc/systemd/system/*.wants/* /etc/systemd/system/*.requires/* \
         /usr/lib/systemd/system/*.wants/* /usr/lib/systemd/system/*.requires/*; do
  n=$(basename "$w")
  case "$n" in stj-*) continue ;; esac
  [ -e "$U/$n" ] || [ -L "$U/$n" ] || ln -s /dev/null "$U/$n"
done
# No journald here: every service's output goes to one file (a drop-in
# for all services), systemd's own to our stderr.
mkdir -p /run/systemd/system.conf.d
printf '[Manager]\nLogTarget=console\nDefaultStandardOutput=inherit\nDefaultStandardError=inherit\n' > /run/systemd/system.conf.d/stj-test.conf
mkdir -p "$U/service.d"
printf '[Service]\nStandardOutput=append:/run/stj-systemd/units.log\nStandardError=append:/run/stj-systemd/units.log\n' > "$U/service.d/stj-test-log.conf"
# Images built for containers forbid maintainer scripts to start services.
if [ -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 0\n' > /run/stj-systemd/policy-rc.d
  chmod 755 /run/stj-systemd/policy-rc.d
  mount --bind /run/stj-systemd/policy-rc.d /usr/sbin/policy-rc.d
fi
mount -t proc proc /proc
exec env container=stj-test SYSTEMD_UNIT_PATH="$U:/etc/systemd/system:/usr/lib/systemd/system" \
  /lib/systemd/systemd --system --unit=stj-test.target
"#;

pub struct Systemd {
    /// `unshare`, whose child is systemd.
    unshare: Child,
    /// systemd's pid (in our PID namespace).
    pub pid: i32,
    log: PathBuf,
}

impl Systemd {
    /// Boots it; `log` receives its and its units' output.
    pub fn boot(log: &Path) -> Systemd {
        let out = fs::File::create(log).expect("systemd log");
        // Into a cgroup of our own in every hierarchy first, so systemd
        // builds its tree there.
        let script = format!(
            "if [ -e /sys/fs/cgroup/cgroup.procs ]; then set -- /sys/fs/cgroup/; \
             else set -- /sys/fs/cgroup/*/; fi; \
             for h in \"$@\"; do \
               [ -e \"$h/cgroup.procs\" ] || continue; \
               mkdir -p \"$h{CGROUP}\" 2>/dev/null && echo $$ > \"$h{CGROUP}/cgroup.procs\" 2>/dev/null || true; \
             done; \
             exec unshare --pid --fork --kill-child --mount --uts sh -c '{}'",
            BOOT.replace('\'', r"'\''")
        );
        let unshare = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start unshare for systemd");
        let u = unshare.id();
        // Made now, so that a boot that fails is taken down too: killing
        // unshare kills systemd (--kill-child).
        let mut sd = Systemd {
            unshare,
            pid: 0,
            log: log.to_path_buf(),
        };
        sd.pid = wait_until("systemd to start as PID 1", Duration::from_secs(30), || {
            let children = fs::read_to_string(format!("/proc/{u}/task/{u}/children")).ok()?;
            let pid: i32 = children.split_whitespace().next()?.parse().ok()?;
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "systemd").then_some(pid)
        });
        wait_until("systemd to be up", Duration::from_secs(60), || {
            let o = sd.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            matches!(state.as_str(), "running" | "degraded").then_some(())
        });
        sd
    }

    /// `program` inside systemd's namespaces (its /run), as root.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--wd=/", "--"])
            .arg(program);
        c
    }

    /// `program` inside, as `uid`/`gid` (no supplementary groups), in `wd`.
    pub fn command_as(&self, uid: u32, gid: u32, wd: &Path, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p"])
            .arg(format!("--setuid={uid}"))
            .arg(format!("--setgid={gid}"))
            .arg(format!("--wd={}", wd.display()))
            .arg("--")
            .arg(program);
        c
    }

    pub fn systemctl(&self, args: &[&str]) -> Output {
        self.command("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run systemctl")
    }

    /// What `systemctl ARGS` prints (trimmed): `is-active UNIT` and the like.
    pub fn answer(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.systemctl(args).stdout)
            .trim()
            .to_string()
    }

    /// A unit's property (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.answer(&["show", "-P", name, unit])
    }

    /// What systemd and the services wrote.
    pub fn log(&self) -> String {
        let units = self
            .command("cat")
            .arg("/run/stj-systemd/units.log")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        format!(
            "--- systemd\n{}--- services\n{units}",
            fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        // PID 1 of a namespace takes every process in it along; unshare
        // takes its child (a systemd not found yet: pid 0, never signalled).
        if self.pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // Its cgroup tree, deepest first, once the processes are gone.
        let mut dirs = vec![];
        for h in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            collect_dirs(&h.path().join(CGROUP), &mut dirs);
        }
        collect_dirs(&Path::new("/sys/fs/cgroup").join(CGROUP), &mut dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = wait_until_removed(&d);
        }
    }
}

fn collect_dirs(d: &Path, out: &mut Vec<PathBuf>) {
    if !d.is_dir() {
        return;
    }
    out.push(d.to_path_buf());
    for e in fs::read_dir(d).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect_dirs(&e.path(), out);
        }
    }
}

/// rmdir of a cgroup whose last processes may still be exiting.
fn wait_until_removed(d: &Path) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match fs::remove_dir(d) {
            Ok(()) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return true,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return false,
        }
    }
}
