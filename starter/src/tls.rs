//! The starter's side of TLS: trust exactly the CA whose hash the join token
//! pins, and the name `stj-schedd` in the server certificate, whatever address
//! the schedd was dialled at; present this node's own key (`identity.rs`).

use std::sync::{Arc, Mutex};
use stj_proto::tls_signatures::Signatures;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use stj_proto::token::sha256;

#[derive(Debug)]
pub struct PinnedCa {
    pin: [u8; 32],
    signatures: Signatures,
    /// The CA hash the schedd offered when it did not match, for the error message.
    pub mismatch: Arc<Mutex<Option<String>>>,
}

pub fn client_config(
    pin: [u8; 32],
    identity: (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<Mutex<Option<String>>>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = Arc::new(Mutex::new(None));
    let verifier = PinnedCa {
        pin,
        signatures: Signatures::new(provider.clone()),
        mismatch: mismatch.clone(),
    };
    let (chain, key) = identity;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    Ok((Arc::new(cfg), mismatch))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(stj_proto::SCHEDD_TLS_NAME).expect("valid DNS name")
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| sha256(c) == self.pin) else {
            let offered = intermediates
                .last()
                .map(|c| hex::encode(sha256(c)))
                .unwrap_or_else(|| "none".into());
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(offered);
            return Err(rustls::Error::General(
                "schedd CA does not match the join token's pin".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.signatures.provider().clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], &server_name(), ocsp_response, now)
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
