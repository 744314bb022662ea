//! The ssh-to-job capability: what the schedd grants one client for one
//! session, and `k`, the key that proves it.
//!
//! `public` travels in a fixed canonical encoding so both sides MAC exactly
//! the same bytes:
//!
//! ```text
//! "stjcap1" | session_id[16] | job_id u64 | owner_uid u32 | expiry u64
//!           | client_pubkey[32] | starter_id_len u8 | starter_id
//! ```
//! (integers big-endian). `k = HMAC-SHA256(starter_key, encoding)`.

use ring::hmac;

use crate::session_id::SessionId;

const MAGIC: &[u8; 7] = b"stjcap1";
pub const MAX_STARTER_ID: usize = 64;
const FIXED: usize = 7 + 16 + 8 + 4 + 8 + 32 + 1;
pub const MAX_ENCODED: usize = FIXED + MAX_STARTER_ID;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    pub session_id: SessionId,
    pub job_id: u64,
    pub owner_uid: u32,
    /// Unix seconds after which the capability is void.
    pub expiry: u64,
    pub client_pubkey: [u8; 32],
    /// The node name of the starter that runs the job.
    pub starter_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapabilityError {
    #[error("capability is malformed")]
    Malformed,
    #[error("starter id longer than {MAX_STARTER_ID} bytes")]
    StarterIdTooLong,
}

impl Capability {
    pub fn encode(&self) -> Result<Vec<u8>, CapabilityError> {
        let id = self.starter_id.as_bytes();
        if id.len() > MAX_STARTER_ID {
            return Err(CapabilityError::StarterIdTooLong);
        }
        let mut out = Vec::with_capacity(FIXED + id.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(self.session_id.as_bytes());
        out.extend_from_slice(&self.job_id.to_be_bytes());
        out.extend_from_slice(&self.owner_uid.to_be_bytes());
        out.extend_from_slice(&self.expiry.to_be_bytes());
        out.extend_from_slice(&self.client_pubkey);
        out.push(id.len() as u8);
        out.extend_from_slice(id);
        Ok(out)
    }

    /// Strict: exactly one encoding decodes to a given capability, so no two
    /// byte strings share a MAC.
    pub fn decode(b: &[u8]) -> Result<Capability, CapabilityError> {
        if b.len() < FIXED || b.len() > MAX_ENCODED || &b[..7] != MAGIC {
            return Err(CapabilityError::Malformed);
        }
        let take = |at: usize, n: usize| &b[at..at + n];
        let id_len = b[FIXED - 1] as usize;
        if b.len() != FIXED + id_len || id_len > MAX_STARTER_ID {
            return Err(CapabilityError::Malformed);
        }
        let starter_id = std::str::from_utf8(&b[FIXED..])
            .map_err(|_| CapabilityError::Malformed)?
            .to_string();
        Ok(Capability {
            session_id: SessionId(arr(take(7, 16))?),
            job_id: u64::from_be_bytes(arr(take(23, 8))?),
            owner_uid: u32::from_be_bytes(arr(take(31, 4))?),
            expiry: u64::from_be_bytes(arr(take(35, 8))?),
            client_pubkey: arr(take(43, 32))?,
            starter_id,
        })
    }
}

/// Unix seconds: the clock capability expiries (and everything timed
/// against them: session reports, pending routes, replay sets) count on, in
/// the schedd and the starter alike.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `k` for an encoded capability.
pub fn derive_k(starter_key: &[u8], encoded: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, starter_key), encoded);
    let mut k = [0u8; 32];
    k.copy_from_slice(tag.as_ref());
    k
}

fn arr<const N: usize>(s: &[u8]) -> Result<[u8; N], CapabilityError> {
    s.try_into().map_err(|_| CapabilityError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Capability {
        Capability {
            session_id: SessionId([1; 16]),
            job_id: 42,
            owner_uid: 1000,
            expiry: 1_800_000_000,
            client_pubkey: [2; 32],
            starter_id: "node1".into(),
        }
    }

    #[test]
    fn rejects_oversize_and_truncation() {
        let mut c = sample();
        c.starter_id = "x".repeat(65);
        assert_eq!(c.encode(), Err(CapabilityError::StarterIdTooLong));
        let e = sample().encode().unwrap();
        assert!(Capability::decode(&e[..e.len() - 1]).is_err());
        let mut long = e.clone();
        long.push(0);
        assert!(Capability::decode(&long).is_err());
        assert!(Capability::decode(&vec![0; 10_000]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(session_id: [u8; 16], job_id: u64, owner_uid: u32, expiry: u64,
                      client_pubkey: [u8; 32], starter_id in "[A-Za-z0-9._-]{0,64}") {
            let c = Capability { session_id: SessionId(session_id), job_id, owner_uid, expiry, client_pubkey, starter_id };
            prop_assert_eq!(Capability::decode(&c.encode().unwrap()).unwrap(), c);
        }

        /// Any single flipped bit either fails to decode or yields a
        /// different capability with a different k: a tampered capability
        /// never proves itself.
        #[test]
        fn every_single_bit_tamper_changes_k(bit in 0usize..(FIXED + 5) * 8) {
            let key = [9u8; 32];
            let enc = sample().encode().unwrap();
            let k = derive_k(&key, &enc);
            let mut bad = enc.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            if let Ok(c) = Capability::decode(&bad) {
                prop_assert_ne!(&c, &sample());
            }
            prop_assert_ne!(derive_k(&key, &bad), k);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Capability::decode(&bytes);
        }
    }
}
