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
/// The starter's scratch directory (kit, job dirs, node key).
pub const STARTER_WORK_DIR: &str = "/var/lib/stj/starter";
