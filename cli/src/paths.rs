//! Where an installed pool keeps things, defined once for every program
//! (doc comments and `--help` texts quote the same values).

/// The config file; one `[section]` per daemon.
pub const CONFIG: &str = "/etc/stj/stj.toml";
/// The schedd's UNIX socket for users (`stj`, `ssh-to-job`).
pub const SCHEDD_SOCKET: &str = "/run/stj/schedd.sock";
/// The schedd's queue, CA, keys and audit log.
pub const SCHEDD_STATE_DIR: &str = "/var/lib/stj/schedd";
/// Where clients make the sockets reverse connections are handed to.
pub const DAEMON_SOCK_DIR: &str = "/var/lock/stj/daemon_sock";
/// The daemon_sock directory's mode: anyone may add a socket, nobody may
/// list or remove another's.
pub const DAEMON_SOCK_MODE: u32 = 0o1733;

/// Whether `dir` is a daemon_sock directory as `stj-schedd init-daemon-sock`
/// makes it: root's, mode 1733. Anything else (a directory a user made
/// first, in /run/lock after a reboot) lets its owner delete or rename the
/// sockets in it, so neither clients nor the schedd use it.
pub fn is_daemon_sock_dir(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .map(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o7777 == DAEMON_SOCK_MODE)
        .unwrap_or(false)
}
/// The starter's scratch directory (kit, job dirs, node key).
pub const STARTER_WORK_DIR: &str = "/var/lib/stj/starter";
