//! This node's own identity towards the schedd: a key made on first start
//! (with a self-signed certificate to carry it in TLS), and the hash of the
//! schedd CA it enrolled with. The schedd pins the key to the node's name
//! at enrolment; from then on the node needs no join token, and nobody
//! without this key registers under its name. Kept in
//! `<work_dir>/identity/`, root only: a key others can read is refused.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use stj_cli::private_file;

const KEY: &str = "node.key";
const CERT: &str = "node.crt";
const SCHEDD_CA: &str = "schedd-ca.sha256";

pub struct NodeIdentity {
    pub dir: PathBuf,
    key_der: Vec<u8>,
    cert_der: Vec<u8>,
    /// The schedd CA this node enrolled with, once it has.
    pub schedd_ca: Option<[u8; 32]>,
}

impl NodeIdentity {
    /// Loads the identity in `work_dir/identity`, making a key on first use.
    pub fn load_or_create(work_dir: &Path) -> Result<NodeIdentity> {
        let dir = work_dir.join("identity");
        match fs::symlink_metadata(&dir) {
            Ok(m) => {
                if !m.is_dir() || m.uid() != 0 || m.mode() & 0o077 != 0 {
                    bail!(
                        "the node identity dir {} must be a directory owned by root with mode 0700 (it is {:04o}, uid {}); it holds this node's key: fix it with `chown root: {0} && chmod 700 {0}`, or remove it to enrol the node anew",
                        dir.display(),
                        m.mode() & 0o7777,
                        m.uid()
                    );
                }
            }
            Err(_) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?,
        }
        let key_path = dir.join(KEY);
        if !key_path.exists() {
            let key = rcgen::KeyPair::generate().context("cannot make the node key")?;
            let cert = rcgen::CertificateParams::new(vec!["stj-starter".to_string()])?
                .self_signed(&key)
                .context("cannot make the node certificate")?;
            // The certificate first: a key file present means both are.
            private_file::write(&dir.join(CERT), cert.der())?;
            private_file::write(&key_path, &key.serialize_der())?;
            tracing::info!(dir = %dir.display(), "made this node's key; the schedd pins it when the node enrols");
        }
        let key_der = private_file::read(&key_path)?;
        let cert_der = private_file::read(&dir.join(CERT))?;
        let schedd_ca = match private_file::read(&dir.join(SCHEDD_CA)) {
            Ok(hex) => {
                let mut pin = [0u8; 32];
                hex::decode_to_slice(String::from_utf8_lossy(&hex).trim(), &mut pin).with_context(
                    || {
                        format!(
                            "{} is damaged; remove the identity dir to enrol the node anew",
                            dir.join(SCHEDD_CA).display()
                        )
                    },
                )?;
                Some(pin)
            }
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        Ok(NodeIdentity {
            dir,
            key_der,
            cert_der,
            schedd_ca,
        })
    }

    /// Remembers the schedd this node enrolled with, so later starts need
    /// no token.
    pub fn enrolled_with(&self, ca: [u8; 32]) -> Result<()> {
        if self.schedd_ca == Some(ca) {
            return Ok(());
        }
        private_file::write(&self.dir.join(SCHEDD_CA), hex::encode(ca).as_bytes())?;
        Ok(())
    }

    /// The certificate chain and key rustls presents.
    pub fn tls_identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![CertificateDer::from(self.cert_der.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_kept_private_and_refused_when_readable() {
        let work = tempfile::tempdir().unwrap();
        let a = NodeIdentity::load_or_create(work.path()).unwrap();
        assert!(a.schedd_ca.is_none());
        a.enrolled_with([3; 32]).unwrap();
        let b = NodeIdentity::load_or_create(work.path()).unwrap();
        assert_eq!(a.cert_der, b.cert_der, "the key is made once");
        assert_eq!(b.schedd_ca, Some([3; 32]));
        let key = work.path().join("identity").join(KEY);
        assert_eq!(fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!(
            "{:#}",
            NodeIdentity::load_or_create(work.path()).err().unwrap()
        );
        assert!(e.contains("chmod 600"), "{e}");
    }
}
