//! The user's long-lived ed25519 keys on disk (the stj login key, the host
//! CA): made on first use, 0600, and two first uses at once (an editor
//! opening several connections) agree on one key.

use std::path::Path;

use anyhow::{Context, Result};
use ring::rand::SecureRandom;
use ssh_key::private::{Ed25519Keypair, KeypairData};
use ssh_key::{LineEnding, PrivateKey};

/// The key at `path`, made (with `comment`) if there is none yet. Refused
/// if others can read it (stj_cli::private_file).
pub fn ed25519_once(path: &Path, comment: &str) -> Result<PrivateKey> {
    if !path.exists() {
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| anyhow::anyhow!("random generator failed"))?;
        let key = PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&seed)),
            comment,
        )?;
        // Loses to a concurrent first use without harm: both read back
        // whichever key was linked in first.
        stj_cli::private_file::create_new(path, key.to_openssh(LineEnding::LF)?.as_bytes())?;
    }
    let text = stj_cli::private_file::read(path)?;
    PrivateKey::from_openssh(String::from_utf8_lossy(&text).as_ref()).with_context(|| {
        format!(
            "{} is not an OpenSSH private key; remove it and run `ssh-to-job ssh-config` again",
            path.display()
        )
    })
}
