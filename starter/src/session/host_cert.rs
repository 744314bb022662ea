//! The host certificate a client may send with its Proof: an OpenSSH
//! certificate of this session's one-time host key, signed by the client's
//! own host CA, for sshd to present (`HostCertificate`). It is the client's
//! statement, checked here only so that sshd is never handed something
//! that is not a host certificate of exactly this key for exactly this job.

use ssh_key::certificate::CertType;
use ssh_key::public::{Ed25519PublicKey, KeyData};
use ssh_key::Certificate;

/// Larger than any certificate of one ed25519 key with one principal.
pub const MAX_LEN: usize = 2048;

/// None: the client sent none. Some(text): the certificate in the
/// `*-cert.pub` form sshd reads.
pub fn check(raw: &[u8], host: [u8; 32], job_id: u64) -> Result<Option<String>, String> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_LEN {
        return Err(format!(
            "the host certificate is {} bytes, more than {MAX_LEN}",
            raw.len()
        ));
    }
    let cert = Certificate::from_bytes(raw)
        .map_err(|e| format!("the host certificate does not parse: {e}"))?;
    if cert.cert_type() != CertType::Host {
        return Err("the host certificate is a user certificate".into());
    }
    if cert.public_key() != &KeyData::Ed25519(Ed25519PublicKey(host)) {
        return Err("the host certificate is for another key than this session's".into());
    }
    // This job's name and nothing else: a certificate that named others
    // would let this session's key (its files are the job user's) stand in
    // for them.
    if cert.valid_principals() != [format!("stj-job-{job_id}")] {
        return Err(format!(
            "the host certificate must name exactly stj-job-{job_id}"
        ));
    }
    cert.to_openssh()
        .map(Some)
        .map_err(|e| format!("the host certificate cannot be written: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::certificate::Builder;
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    use ssh_key::PrivateKey;

    fn ca() -> PrivateKey {
        PrivateKey::new(
            KeypairData::Ed25519(Ed25519Keypair::from_seed(&[9; 32])),
            "ca",
        )
        .unwrap()
    }

    fn cert(host: [u8; 32], kind: CertType, principals: &str) -> Vec<u8> {
        let mut b = Builder::new(
            [1; 16],
            KeyData::Ed25519(Ed25519PublicKey(host)),
            0,
            u64::MAX / 2,
        )
        .unwrap();
        b.cert_type(kind).unwrap();
        for p in principals.split(',') {
            b.valid_principal(p).unwrap();
        }
        b.sign(&ca()).unwrap().to_bytes().unwrap()
    }

    #[test]
    fn only_a_host_certificate_of_this_key_for_this_job() {
        let host = Ed25519Keypair::from_seed(&[3; 32]).public.0;
        assert_eq!(check(&[], host, 7), Ok(None));
        assert!(check(&cert(host, CertType::Host, "stj-job-7"), host, 7)
            .unwrap()
            .unwrap()
            .starts_with("ssh-ed25519-cert-v01@openssh.com "));
        assert!(check(&cert(host, CertType::Host, "stj-job-7,stj-job"), host, 7).is_err());
        assert!(check(&cert(host, CertType::Host, "stj-job-8"), host, 7).is_err());
        assert!(check(&cert(host, CertType::Host, "stj-job-7,login1"), host, 7).is_err());
        assert!(check(&cert(host, CertType::User, "stj-job-7"), host, 7).is_err());
        assert!(check(&cert([4; 32], CertType::Host, "stj-job-7"), host, 7).is_err());
        assert!(check(&[0xff; 100], host, 7).is_err());
        assert!(check(&vec![0; MAX_LEN + 1], host, 7).is_err());
    }
}
