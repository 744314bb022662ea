//! What a non-TLS connection to the schedd's one port says first, so the
//! schedd can tell starter links (TLS: first byte 0x16), shared-port routing
//! and relay halves apart.
//!
//! ```text
//! route: "STJR" | version u8 | name_len u8 | name | token[32]   (starter → client's socket)
//! relay: "STJL" | version u8 | role u8 | session_id[16] | token[32]
//! ```
//!
//! Both carry a 32-byte token the schedd handed out for exactly this
//! connection: a routing name is visible to every local user
//! (`/proc/net/unix`), so the name alone must never be enough.

use crate::session_id::SessionId;

pub const VERSION: u8 = 2;
pub const ROUTE_MAGIC: &[u8; 4] = b"STJR";
pub const RELAY_MAGIC: &[u8; 4] = b"STJL";
pub const MAX_NAME: usize = 64;
pub const TOKEN_LEN: usize = 32;
/// Longest preamble; a peer that sends more before being routed is broken.
pub const MAX_LEN: usize = 6 + MAX_NAME + TOKEN_LEN;
const RELAY_LEN: usize = 6 + 16 + TOKEN_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client = 1,
    Starter = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preamble {
    Route {
        name: String,
        token: [u8; TOKEN_LEN],
    },
    Relay {
        role: Role,
        session_id: SessionId,
        token: [u8; TOKEN_LEN],
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreambleError {
    #[error("not an ssh-to-job preamble")]
    BadMagic,
    #[error("preamble version {0} is not supported")]
    Version(u8),
    #[error("routing name must be 1-{MAX_NAME} characters of [A-Za-z0-9._-]")]
    BadName,
    #[error("unknown relay role {0}")]
    BadRole(u8),
}

/// The daemon_sock naming rule: no path separators, no "..", nothing a shell
/// or a path join could misread.
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Preamble {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Preamble::Route { name, token } => {
                let mut v = ROUTE_MAGIC.to_vec();
                v.push(VERSION);
                v.push(name.len() as u8);
                v.extend_from_slice(name.as_bytes());
                v.extend_from_slice(token);
                v
            }
            Preamble::Relay {
                role,
                session_id,
                token,
            } => {
                let mut v = RELAY_MAGIC.to_vec();
                v.push(VERSION);
                v.push(*role as u8);
                v.extend_from_slice(session_id.as_bytes());
                v.extend_from_slice(token);
                v
            }
        }
    }

    /// How many bytes the preamble starting with `head` (at least 6 bytes)
    /// has in all, so the reader takes exactly that and nothing of what follows.
    pub fn total_len(head: &[u8; 6]) -> Result<usize, PreambleError> {
        if &head[..4] != ROUTE_MAGIC && &head[..4] != RELAY_MAGIC {
            return Err(PreambleError::BadMagic);
        }
        if head[4] != VERSION {
            return Err(PreambleError::Version(head[4]));
        }
        match &head[..4] {
            m if m == ROUTE_MAGIC => {
                let n = head[5] as usize;
                if n == 0 || n > MAX_NAME {
                    return Err(PreambleError::BadName);
                }
                Ok(6 + n + TOKEN_LEN)
            }
            m if m == RELAY_MAGIC => Ok(RELAY_LEN),
            _ => Err(PreambleError::BadMagic),
        }
    }

    pub fn decode(b: &[u8]) -> Result<Preamble, PreambleError> {
        let head: &[u8; 6] = b
            .get(..6)
            .and_then(|h| h.try_into().ok())
            .ok_or(PreambleError::BadMagic)?;
        let len = Preamble::total_len(head)?;
        if b.len() != len {
            return Err(PreambleError::BadMagic);
        }
        if &b[..4] == ROUTE_MAGIC {
            let (name, token) = b[6..].split_at(b.len() - 6 - TOKEN_LEN);
            let name = std::str::from_utf8(name).map_err(|_| PreambleError::BadName)?;
            if !valid_name(name) {
                return Err(PreambleError::BadName);
            }
            let mut t = [0u8; TOKEN_LEN];
            t.copy_from_slice(token);
            return Ok(Preamble::Route {
                name: name.to_string(),
                token: t,
            });
        }
        let role = match b[5] {
            1 => Role::Client,
            2 => Role::Starter,
            r => return Err(PreambleError::BadRole(r)),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[6..22]);
        let session_id = SessionId(id);
        let mut token = [0u8; TOKEN_LEN];
        token.copy_from_slice(&b[22..]);
        Ok(Preamble::Relay {
            role,
            session_id,
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names() {
        for good in ["stj-abc", "a", "A.b_c-1", &"x".repeat(64)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn bad_preambles() {
        let route = Preamble::Route {
            name: "ok".into(),
            token: [0; 32],
        };
        let mut r = route.encode();
        r[6] = b'/';
        assert_eq!(Preamble::decode(&r), Err(PreambleError::BadName));
        assert_eq!(
            Preamble::decode(b"GET / HTTP/1.1"),
            Err(PreambleError::BadMagic)
        );
        let mut v = route.encode();
        v[4] = 9;
        assert_eq!(Preamble::decode(&v), Err(PreambleError::Version(9)));
        let mut l = Preamble::Relay {
            role: Role::Client,
            session_id: SessionId([0; 16]),
            token: [0; 32],
        }
        .encode();
        l[5] = 7;
        assert_eq!(Preamble::decode(&l), Err(PreambleError::BadRole(7)));
    }

    proptest! {
        #[test]
        fn round_trip(name in "[A-Za-z0-9_-]{1,64}", sid: [u8; 16], token: [u8; 32], client: bool) {
            for p in [
                Preamble::Route { name: name.clone(), token },
                Preamble::Relay { role: if client { Role::Client } else { Role::Starter }, session_id: SessionId(sid), token },
            ] {
                let e = p.encode();
                let head: [u8; 6] = e[..6].try_into().unwrap();
                prop_assert_eq!(Preamble::total_len(&head).unwrap(), e.len());
                prop_assert_eq!(Preamble::decode(&e).unwrap(), p);
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Preamble::decode(&bytes);
            if bytes.len() >= 6 {
                let _ = Preamble::total_len(&bytes[..6].try_into().unwrap());
            }
        }
    }
}
