//! The schedd's identity: a CA and a server certificate made on first start,
//! in the state dir, private to root. Starters pin the CA by its hash (in
//! their join token) and present a key of their own in TLS, which
//! `enrolment.rs` pins to their node name.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use stj_proto::tls_signatures::Signatures;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use stj_cli::private_file;
use stj_proto::token::{JoinToken, SECRET_LEN};

const CA_CERT: &str = "ca.der";
const CA_KEY: &str = "ca.key.der";
const SERVER_CERT: &str = "server.der";
/// Written last: its presence marks a complete identity.
const SERVER_KEY: &str = "server.key.der";

/// What the TLS listener needs, and the CA hash tokens carry.
pub struct Identity {
    pub ca_der: Vec<u8>,
    pub server_der: Vec<u8>,
    server_key_der: Vec<u8>,
}

impl Identity {
    /// Loads the identity from `state_dir`, creating it on first start.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity> {
        fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state dir {}", state_dir.display()))?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make state dir {} private", state_dir.display()))?;
        {
            // The schedd starting (a package's postinst starts it) and an
            // admin's `stj-schedd token` at the same moment must not each
            // make half an identity: one makes it, the other waits and
            // reads it.
            let dir = fs::File::open(state_dir)
                .with_context(|| format!("cannot open state dir {}", state_dir.display()))?;
            // SAFETY: flock on a descriptor we own; released when `dir` closes.
            if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("cannot lock state dir {}", state_dir.display()));
            }
            if !state_dir.join(SERVER_KEY).exists() {
                create(state_dir)?;
            }
        }
        let damaged = |p: &Path| {
            format!(
                "cannot read {}; the state dir is damaged: restore it, or move it away to make a new identity (every starter then needs a new token)",
                p.display()
            )
        };
        let read = |name: &str| {
            let p = state_dir.join(name);
            fs::read(&p).with_context(|| damaged(&p))
        };
        let key = state_dir.join(SERVER_KEY);
        Ok(Identity {
            ca_der: read(CA_CERT)?,
            server_der: read(SERVER_CERT)?,
            server_key_der: private_file::read(&key).with_context(|| damaged(&key))?,
        })
    }

    /// The join token for an enrolment ticket's secret.
    pub fn token(&self, secret: [u8; SECRET_LEN]) -> JoinToken {
        JoinToken::new(&self.ca_der, secret)
    }

    pub fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone()));
        let chain = vec![
            CertificateDer::from(self.server_der.clone()),
            CertificateDer::from(self.ca_der.clone()),
        ];
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(NodeKeyProof {
                signatures: Signatures::new(provider),
            }))
            .with_single_cert(chain, key)
            .context("server certificate in the state dir is unusable")?;
        // Starters hold one long-lived link and never resume: tickets would
        // only cost a write and a cache entry per registration.
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }
}

/// Every starter must present a certificate (its node key, self-signed) and
/// prove in TLS that it holds the key. Which name that key may use is not a
/// TLS question: the link checks the certificate's hash against the pin in
/// `enrolment.rs` once it knows the name the starter claims.
#[derive(Debug)]
struct NodeKeyProof {
    signatures: Signatures,
}

impl ClientCertVerifier for NodeKeyProof {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust comes from the pin, not from a chain.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
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

    private_file::write(&state_dir.join(CA_CERT), ca.der())?;
    private_file::write(&state_dir.join(CA_KEY), &ca_key.serialize_der())?;
    private_file::write(&state_dir.join(SERVER_CERT), server.der())?;
    private_file::write(&state_dir.join(SERVER_KEY), &server_key.serialize_der())?;
    tracing::info!(dir = %state_dir.display(), "created a new schedd CA and certificate");
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
        assert_eq!(a.token([1; 32]), b.token([1; 32]));
        for f in [CA_KEY, SERVER_KEY] {
            let mode = fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        a.tls_config().unwrap();
    }
}
