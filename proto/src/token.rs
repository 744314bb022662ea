//! The join token a starter is given once, to enrol:
//! `stj2.<sha256-hex of the CA cert>.<secret-hex>`. The hash pins the
//! schedd's CA (no CA distribution needed); the secret names an enrolment
//! ticket the admin minted for one or more node names (`stj-schedd token
//! NAME...`). Enrolment pins the node's own key to its name; after that the
//! node needs no token, and the token enrols nothing else under that name.

use ring::digest;

const PREFIX: &str = "stj2";
pub const SECRET_LEN: usize = 32;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_sha256: [u8; 32],
    pub secret: [u8; SECRET_LEN],
}

// The secret must never reach a log, even through `{:?}`.
impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_sha256", &hex::encode(self.ca_sha256))
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("a join token looks like stj2.<64 hex digits>.<64 hex digits>; mint one for this node with `stj-schedd token NODE-NAME` on the schedd host")]
    Malformed,
    #[error("this is a pool-wide join token of an older release, which no longer enrols nodes; mint one for this node with `stj-schedd token NODE-NAME` on the schedd host")]
    OldFormat,
}

impl JoinToken {
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if s.trim().starts_with("stj1.") {
            return Err(TokenError::OldFormat);
        }
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(ca), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mut t = JoinToken {
            ca_sha256: [0; 32],
            secret: [0; SECRET_LEN],
        };
        hex::decode_to_slice(ca, &mut t.ca_sha256).map_err(|_| TokenError::Malformed)?;
        hex::decode_to_slice(secret, &mut t.secret).map_err(|_| TokenError::Malformed)?;
        Ok(t)
    }

    pub fn new(ca_der: &[u8], secret: [u8; SECRET_LEN]) -> Self {
        JoinToken {
            ca_sha256: sha256(ca_der),
            secret,
        }
    }

    /// The token in its printed form. It holds the secret: print it only where
    /// the admin asked for it.
    pub fn to_printable(&self) -> String {
        format!(
            "{PREFIX}.{}.{}",
            hex::encode(self.ca_sha256),
            hex::encode(self.secret)
        )
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = JoinToken::new(b"ca", [7; 32]);
        assert_eq!(JoinToken::parse(&t.to_printable()), Ok(t.clone()));
        assert_eq!(JoinToken::parse(&format!(" {}\n", t.to_printable())), Ok(t));
    }

    #[test]
    fn rejects_malformed() {
        let good = JoinToken::new(b"ca", [7; 32]).to_printable();
        for bad in [
            "",
            "stj1",
            &good.replacen("stj2", "stj3", 1),
            &good[..good.len() - 2],
            &format!("{good}.extra"),
            &good.replace('7', "g"),
        ] {
            assert_eq!(JoinToken::parse(bad), Err(TokenError::Malformed), "{bad}");
        }
    }

    #[test]
    fn old_pool_wide_tokens_are_named() {
        let old = JoinToken::new(b"ca", [7; 32])
            .to_printable()
            .replacen("stj2", "stj1", 1);
        assert_eq!(JoinToken::parse(&old), Err(TokenError::OldFormat));
    }

    #[test]
    fn debug_hides_secret() {
        let t = JoinToken::new(b"ca", [0xab; 32]);
        assert!(!format!("{t:?}").contains("abab"));
    }
}
