//! Test harness: starts the real `stj-schedd` and `stj-starter` binaries with
//! temporary state, creates real users, and waits on conditions with
//! deadlines (never on bare sleeps).

pub mod cluster;
pub mod netns;
pub mod rootfs;
pub mod sim_starter;
pub mod slurm;
pub mod systemd;
pub mod users;
pub mod wait;

pub use cluster::Cluster;

/// Lets this process (and the daemons it starts) hold `n` file
/// descriptors, for tests and benchmarks that open thousands of sockets.
pub fn raise_fd_limit(n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain setrlimit on this process; failure leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

/// A single-threaded tokio runtime, for tests that drive the client library
/// (grants, handshakes) directly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The stdout of a command that must have succeeded; fails the test with
/// both streams otherwise.
pub fn ok(o: std::process::Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): stdout {} stderr {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
pub use users::TestUser;
pub use wait::wait_until;

use std::path::PathBuf;

/// Where cargo put the workspace's binaries: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, which scripts/test.sh does)",
        p.display()
    );
    p
}

/// Runs a shell command line that must succeed (mounts and the like).
pub fn sh(cmd: &str) {
    let st = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .expect("run sh");
    assert!(st.success(), "{cmd}: {st}");
}

/// `path` made read-only (for root too) by a read-only bind mount of
/// itself, until dropped.
pub struct ReadOnly(std::path::PathBuf);

pub fn read_only(path: &std::path::Path) -> ReadOnly {
    sh(&format!(
        "mount --bind {0} {0} && mount -o remount,ro,bind {0}",
        path.display()
    ));
    ReadOnly(path.to_path_buf())
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Runs `f` in a thread of its own whose credentials are `user`'s (Linux
/// credentials are per thread; the raw syscall changes only this one), so
/// what it connects to sees `user` in SO_PEERCRED.
pub fn as_user<R: Send + 'static>(user: &TestUser, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (uid, gid) = (user.uid, user.gid);
    std::thread::spawn(move || {
        // SAFETY: raw setresgid/setresuid on this thread only.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .unwrap()
}
