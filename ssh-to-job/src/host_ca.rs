//! The user's own SSH host CA (`~/.config/stj/host_ca`, 0600, made on first
//! use; it never leaves the account), for an ssh on another machine (a
//! laptop reaching jobs through this login node) that cannot ask this one
//! which host key a session has. Once a starter has proved itself in the
//! handshake, the proxy certifies that session's host key for `stj-job-N`
//! only, for minutes, and sends the certificate along; sshd presents it.
//! One static line, `@cert-authority stj-job-* <this CA>`, then lets that
//! ssh check every session's host key.
//!
//! Certificates are for that only: the handshake does not bind the TCP
//! stream, so after it the host key is what ties ssh to the proven starter.
//! A certificate therefore names one job and expires soon — one copied out
//! of a job's session files (they belong to the job's user) stands for no
//! other job, and not for long. On this host the proxy sends none: ssh
//! checks the exact key through the KnownHostsCommand.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ring::rand::SecureRandom;
use ssh_key::certificate::{Builder, CertType};
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::PrivateKey;
use stj_proto::session_id::SessionId;

/// The host names the CA vouches for, as known_hosts patterns (also with a
/// port other than 22).
pub const PATTERNS: &str = "stj-job-*,[stj-job-*]:*";

/// How long a certificate is valid: from a little before now (clocks
/// differ) to a little after; ssh checks it when the connection starts.
const SKEW: u64 = 300;
const VALID: u64 = 300;

pub struct HostCa {
    key: PrivateKey,
}

impl HostCa {
    pub fn path(config_dir: &Path) -> PathBuf {
        config_dir.join("host_ca")
    }

    /// The CA in `config_dir`, made on first use. Two first uses at once
    /// agree on one CA.
    pub fn load_or_create(config_dir: &Path) -> Result<HostCa> {
        let key = crate::key_file::ed25519_once(&Self::path(config_dir), "stj host CA")?;
        Ok(HostCa { key })
    }

    /// The known_hosts line that trusts this CA for every job.
    pub fn known_hosts_line(&self) -> Result<String> {
        let mut public = self.key.public_key().clone();
        public.set_comment("ssh-to-job host CA");
        Ok(format!(
            "@cert-authority {PATTERNS} {}",
            public.to_openssh()?
        ))
    }

    /// A host certificate of `host` for `stj-job-{job_id}`, in the wire
    /// form the handshake carries.
    pub fn certify(&self, host: [u8; 32], job_id: u64, session: SessionId) -> Result<Vec<u8>> {
        let now = stj_proto::capability::unix_now();
        let mut nonce = [0u8; Builder::RECOMMENDED_NONCE_SIZE];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("random generator failed"))?;
        let mut b = Builder::new(
            nonce,
            KeyData::Ed25519(Ed25519PublicKey(host)),
            now.saturating_sub(SKEW),
            now + VALID,
        )?;
        b.cert_type(CertType::Host)?;
        b.key_id(format!("stj-job-{job_id} session {session}"))?;
        b.valid_principal(format!("stj-job-{job_id}"))?;
        Ok(b.sign(&self.key)?.to_bytes()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::private::Ed25519Keypair;

    #[test]
    fn certifies_for_the_job_and_publishes_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let ca = HostCa::load_or_create(dir.path()).unwrap();
        let again = HostCa::load_or_create(dir.path()).unwrap();
        assert_eq!(
            ca.known_hosts_line().unwrap(),
            again.known_hosts_line().unwrap()
        );
        assert!(ca
            .known_hosts_line()
            .unwrap()
            .starts_with("@cert-authority stj-job-*,[stj-job-*]:* ssh-ed25519 "));
        let host = Ed25519Keypair::from_seed(&[5; 32]).public.0;
        let raw = ca.certify(host, 42, SessionId([1; 16])).unwrap();
        let cert = ssh_key::Certificate::from_bytes(&raw).unwrap();
        assert_eq!(cert.valid_principals(), ["stj-job-42"]);
        assert_eq!(cert.cert_type(), CertType::Host);
        let fp = ca.key.public_key().fingerprint(Default::default());
        cert.validate_at(stj_proto::capability::unix_now(), [&fp])
            .unwrap();
    }
}
