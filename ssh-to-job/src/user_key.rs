//! The ephemeral ed25519 user key: made in memory for one session (ring's
//! RNG), written only into the private runtime dir (0600) for ssh to read.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ring::rand::{SecureRandom, SystemRandom};
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::{LineEnding, PrivateKey, PublicKey};

pub struct UserKey {
    pub public: [u8; 32],
    pub path: PathBuf,
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

pub fn generate(dir: &Path) -> Result<UserKey> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    let public = pair.public.0;
    let key = PrivateKey::new(KeypairData::Ed25519(pair), "ssh-to-job")?;
    let path = dir.join("id_ed25519");
    write_private(&path, key.to_openssh(LineEnding::LF)?.as_bytes())?;
    Ok(UserKey { public, path })
}

/// The known_hosts line pinning the session's one-time host key to the alias
/// ssh is told to use, so StrictHostKeyChecking=yes accepts exactly it.
pub fn write_known_hosts(path: &Path, alias: &str, host_pubkey: [u8; 32]) -> Result<()> {
    let key = PublicKey::new(KeyData::Ed25519(Ed25519PublicKey(host_pubkey)), "");
    let line = format!("{alias} {}\n", key.to_openssh()?.trim_end());
    write_private(path, line.as_bytes())
}
