//! The schedd's identity: a CA and a server certificate made on first start,
//! and the join secret starters must prove. All of it lives in the state dir,
//! private to root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use stj_proto::token::{JoinToken, SECRET_LEN};

const CA_CERT: &str = "ca.der";
const CA_KEY: &str = "ca.key.der";
const SERVER_CERT: &str = "server.der";
const SERVER_KEY: &str = "server.key.der";
const SECRET: &str = "join-secret";

/// What the TLS listener and the hello check need.
pub struct Identity {
    pub ca_der: Vec<u8>,
    pub server_der: Vec<u8>,
    server_key_der: Vec<u8>,
    secret: [u8; SECRET_LEN],
}

impl Identity {
    /// Loads the identity from `state_dir`, creating it on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make state dir {} private", state_dir.display()))?;
        if !state_dir.join(SECRET).exists() {
            create(state_dir)?;
        }
        let read = |name: &str| {
            let p = state_dir.join(name);
            fs::read(&p).with_context(|| {
                format!(
                    "cannot read {}; the state dir is damaged: restore it, or move it away to make a new identity (every starter then needs a new token)",
                    p.display()
                )
            })
        };
        let secret_bytes = read(SECRET)?;
        let secret: [u8; SECRET_LEN] = secret_bytes.as_slice().try_into().with_context(|| {
            format!("{} has the wrong length", state_dir.join(SECRET).display())
        })?;
        Ok(Identity {
            ca_der: read(CA_CERT)?,
            server_der: read(SERVER_CERT)?,
            server_key_der: read(SERVER_KEY)?,
            secret,
        })
    }

    pub fn token(&self) -> JoinToken {
        JoinToken::new(&self.ca_der, self.secret)
    }

    /// A verifier for a starter's claimed secret that compares in constant time.
    pub fn secret_checker(&self) -> SecretChecker {
        SecretChecker {
            expected_tag: hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &self.secret), JOIN_LABEL)
                .as_ref()
                .to_vec(),
        }
    }

    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let chain = vec![
            CertificateDer::from(self.server_der.clone()),
            CertificateDer::from(self.ca_der.clone()),
        ];
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("server certificate in the state dir is unusable")?;
        // Starters hold one long-lived link and never resume: tickets would
        // only cost a write and a cache entry per registration.
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }
}

const JOIN_LABEL: &[u8] = b"stj join secret v1";

pub struct SecretChecker {
    expected_tag: Vec<u8>,
}

impl SecretChecker {
    /// True when `claimed` is the join secret. `hmac::verify` compares the tags
    /// in constant time, so timing reveals nothing about the secret.
    pub fn check(&self, claimed: &[u8]) -> bool {
        hmac::verify(
            &hmac::Key::new(hmac::HMAC_SHA256, claimed),
            JOIN_LABEL,
            &self.expected_tag,
        )
        .is_ok()
    }
}

fn create(state_dir: &Path) -> Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "stj-schedd CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec![stj_proto::SCHEDD_TLS_NAME.to_string()])?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, stj_proto::SCHEDD_TLS_NAME);
    let server = server_params.signed_by(&server_key, &ca, &ca_key)?;

    let mut secret = [0u8; SECRET_LEN];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;

    write_private(&state_dir.join(CA_CERT), ca.der())?;
    write_private(&state_dir.join(CA_KEY), &ca_key.serialize_der())?;
    write_private(&state_dir.join(SERVER_CERT), server.der())?;
    write_private(&state_dir.join(SERVER_KEY), &server_key.serialize_der())?;
    // The secret is written last: its presence marks a complete identity.
    write_private(&state_dir.join(SECRET), &secret)?;
    tracing::info!(dir = %state_dir.display(), "created a new schedd CA, certificate and join secret");
    Ok(())
}

/// Writes a file readable by its owner only, atomically (temp file + rename),
/// so a crash never leaves a half-written key behind.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.token(), b.token());
        let mode = fs::metadata(dir.path().join(SECRET))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        a.tls_config().unwrap();
    }

    #[test]
    fn secret_checker_accepts_only_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path()).unwrap();
        let checker = id.secret_checker();
        assert!(checker.check(&id.token().secret));
        let mut wrong = id.token().secret;
        wrong[31] ^= 1;
        assert!(!checker.check(&wrong));
        assert!(!checker.check(b""));
    }
}
