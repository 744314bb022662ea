//! The id of one session: 16 random bytes the schedd picks when it grants a
//! capability. It names the session everywhere (capability, preamble, link
//! reports, audit records) and is shown as lower-case hex.

use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    pub const LEN: usize = 16;

    /// A fresh id from the system's secure generator.
    pub fn random() -> Result<SessionId, ring::error::Unspecified> {
        let mut id = [0u8; Self::LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)?;
        Ok(SessionId(id))
    }

    /// The id in a wire field; None unless it is exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<SessionId> {
        b.try_into().ok().map(SessionId)
    }

    /// The id as [`Display`] shows it (audit records store it so).
    pub fn parse_hex(s: &str) -> Option<SessionId> {
        hex::decode(s).ok().and_then(|b| Self::from_slice(&b))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    pub fn to_vec(self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl TryFrom<&[u8]> for SessionId {
    type Error = std::array::TryFromSliceError;
    fn try_from(b: &[u8]) -> Result<SessionId, Self::Error> {
        b.try_into().map(SessionId)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_strict_lengths() {
        let id = SessionId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(SessionId::parse_hex(&id.to_string()), Some(id));
        assert_eq!(SessionId::from_slice(&[1; 15]), None);
        assert_eq!(SessionId::from_slice(&[1; 17]), None);
        assert_eq!(SessionId::parse_hex("zz"), None);
        assert_ne!(SessionId::random().unwrap(), SessionId::random().unwrap());
    }
}
