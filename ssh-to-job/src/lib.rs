//! The user's side of ssh-to-job: talking to the local schedd, opening the
//! data connection with its handshake, and running OpenSSH's own tools over it.

pub mod attach;
pub mod audit_view;
pub mod client_error;
pub mod fd_pass;
pub mod host_ca;
pub mod jobs_view;
pub mod key_file;
pub mod limits;
pub mod nodes_view;
pub mod runtime_dir;
pub mod schedd_client;
pub mod session;
pub mod slurm_interactive;
pub mod ssh_command;
pub mod ssh_config;
pub mod submit;
pub mod user_key;
pub mod waiting;
pub mod why_ended;
