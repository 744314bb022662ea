//! A private directory (0700) for the session's key, known_hosts and the
//! fd-passing socket; removed when dropped. Its path stays short whatever
//! `$TMPDIR` is, because a UNIX socket path must fit in 108 bytes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Longest base directory we use: leaves room for "/stj-XXXXXX/p.sock".
const MAX_BASE: usize = 80;

pub struct RuntimeDir {
    dir: tempfile::TempDir,
}

impl RuntimeDir {
    pub fn create() -> Result<RuntimeDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            // `su` keeps the caller's XDG_RUNTIME_DIR: use it only if it is ours to write.
            .filter(|p| {
                p.is_dir()
                    && p.as_os_str().len() <= MAX_BASE
                    && nix::unistd::access(p.as_path(), nix::unistd::AccessFlags::W_OK).is_ok()
            })
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let dir = tempfile::Builder::new()
            .prefix("stj-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&base)
            .with_context(|| {
                format!("cannot create a private runtime dir in {}", base.display())
            })?;
        Ok(RuntimeDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
