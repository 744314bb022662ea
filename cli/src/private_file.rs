//! Files that hold secrets (join tokens, node and schedd keys): written so
//! that nobody else can read them even for a moment and a crash never
//! leaves half a key, and refused when someone else could read them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("cannot write {path}: {cause}{}", hint(cause))]
    Write { path: PathBuf, cause: io::Error },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("{path} can be read by others (mode {mode:04o}); it holds a secret: run `chmod 600 {path}` (and make sure it was not copied while readable)")]
    Readable { path: PathBuf, mode: u32 },
    #[error("{path} belongs to uid {owner}, not to uid {me} who reads it; it holds a secret: `chown` it to the daemon's user")]
    Owner { path: PathBuf, owner: u32, me: u32 },
}

fn hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::StorageFull => " (the filesystem is full: free space on it)",
        io::ErrorKind::ReadOnlyFilesystem => " (the filesystem is mounted read-only)",
        _ => "",
    }
}

// The io::Error is part of the message, not a separate `source()` (so the
// field is not called `source`): a chain printed with `{:#}` would say it
// twice.
impl PrivateFileError {
    /// The file does not exist (a missing optional file, not a fault).
    pub fn is_not_found(&self) -> bool {
        matches!(self, PrivateFileError::Read { cause, .. } if cause.kind() == io::ErrorKind::NotFound)
    }
}

/// Writes `data` to `path` readable by its owner only: a fresh temp file
/// (0600, O_EXCL), fsync'd, then renamed over `path`.
pub fn write(path: &Path, data: &[u8]) -> Result<(), PrivateFileError> {
    replace(path, data, 0o600)
}

/// [`write`] with another mode (less the umask): for files that are no
/// secret but must never be seen half-written or lost to a crash (a user's
/// ssh config, known_hosts).
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), PrivateFileError> {
    let err = |cause| PrivateFileError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    let written = f.write_all(data).and_then(|_| f.sync_all());
    if let Err(e) = written.and_then(|_| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    // The rename is durable once the directory is.
    if let Some(dir) = path.parent() {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Creates `path` with `data`, readable by its owner only, unless it exists:
/// returns false then and changes nothing. Written in full under a temp
/// name and linked into place, so two processes racing to create it never
/// both "win", and nobody sees it half-written.
pub fn create_new(path: &Path, data: &[u8]) -> Result<bool, PrivateFileError> {
    let tmp = path.with_extension(format!("new{}", std::process::id()));
    write(&tmp, data)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(cause) => Err(PrivateFileError::Write {
            path: path.to_path_buf(),
            cause,
        }),
    }
}

/// Reads a secret file, refusing one that group or others can read or that
/// belongs to another user than ours.
pub fn read(path: &Path) -> Result<Vec<u8>, PrivateFileError> {
    let err = |cause| PrivateFileError::Read {
        path: path.to_path_buf(),
        cause,
    };
    let f = fs::File::open(path).map_err(err)?;
    // Checked on the opened file, so what we read is what we checked.
    let meta = f.metadata().map_err(err)?;
    check(path, &meta)?;
    let mut data = Vec::new();
    io::Read::read_to_end(&mut &f, &mut data).map_err(err)?;
    Ok(data)
}

/// Whether `meta` (of `path`) is private to us.
pub fn check(path: &Path, meta: &fs::Metadata) -> Result<(), PrivateFileError> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(PrivateFileError::Owner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            me,
        });
    }
    if meta.mode() & 0o077 != 0 {
        return Err(PrivateFileError::Readable {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_private_read_back_and_readable_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write(&p, b"secret").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(read(&p).unwrap(), b"secret");
        write(&p, b"again").unwrap();
        assert_eq!(read(&p).unwrap(), b"again");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(!create_new(&p, b"other").unwrap(), "an existing file stays");
        assert_eq!(read(&p).unwrap(), b"again");
        let fresh = dir.path().join("fresh");
        assert!(create_new(&fresh, b"new").unwrap());
        assert_eq!(read(&fresh).unwrap(), b"new");
        fs::remove_file(&fresh).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
    }
}
