//! Node identity: which key may register under which node name.
//!
//! A join token enrols; it is not an identity. The admin mints one for one
//! or more node names (`stj-schedd token NAME...`, patterns with `*`
//! allowed, expiring). A node registering under a name nobody enrolled yet
//! presents such a token, and from then on the name is pinned to the
//! SHA-256 of the certificate (the node's own key) it showed in TLS: only
//! that key registers as that name again, with or without a token. A
//! second key under a known name, a token for other names, an expired
//! token: refused, with what the admin does about it. So a stolen token
//! enrols at most the names it lists that are not enrolled yet, until it
//! expires, and a compromised node holds only its own key: it can register
//! as itself, and attack only the jobs the schedd sends it.
//!
//! Both tables live in the queue database; `stj-schedd token`,
//! `forget-node` and `nodes` open it beside a running schedd (SQLite locks).

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, Connection, OptionalExtension};
use stj_proto::token::{sha256, SECRET_LEN};

use crate::queue::now;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS enrolment_tokens (
    secret_sha256 BLOB PRIMARY KEY,
    names         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name          TEXT PRIMARY KEY,
    cert_sha256   BLOB NOT NULL UNIQUE,
    enrolled_at   INTEGER NOT NULL,
    enrolled_from TEXT NOT NULL
);
";

pub struct Enrolment {
    conn: Mutex<Connection>,
}

/// A node as enrolled.
pub struct EnrolledNode {
    pub name: String,
    pub cert_sha256: [u8; 32],
    pub enrolled_at: i64,
    pub enrolled_from: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The name's pinned key.
    Known,
    /// First registration of this name; its key is pinned from now on.
    Enrolled,
}

/// Why a node may not register. Messages name what the admin does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("node name {name} is enrolled with another key (since {enrolled_at}, from {from}): this is not that node. If {name} was reinstalled, run `stj-schedd forget-node {name}` on the schedd host and give it a new token (`stj-schedd token {name}`)")]
    WrongKey {
        name: String,
        enrolled_at: i64,
        from: String,
    },
    #[error("this node's key is already enrolled as {other}; a node has one name: set `name` to {other}, or remove the node's identity dir to enrol anew")]
    KeyInUse { other: String },
    #[error("node {name} is not enrolled and brought no join token: mint one with `stj-schedd token {name}` on the schedd host and put it in the starter's token_file")]
    NotEnrolled { name: String },
    #[error("the join token is not known here (revoked, or minted by another schedd): mint one with `stj-schedd token {name}` on the schedd host")]
    UnknownToken { name: String },
    #[error("the join token expired at unix time {at}: mint a new one with `stj-schedd token {name}` on the schedd host")]
    Expired { name: String, at: i64 },
    #[error("the join token does not enrol node name {name} (it enrols: {covers}): mint one with `stj-schedd token {name}` on the schedd host")]
    NotForName { name: String, covers: String },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrolmentError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("node database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("{0:?} is not a node name or pattern: 1-64 characters of [A-Za-z0-9._-], with `*` for any run of them")]
    BadName(String),
    #[error("the system random generator failed")]
    Random,
}

/// `*` matches any run of characters; everything else matches itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| matches(rest, &tail[i..]))
        }
    }
}

fn valid_pattern(p: &str) -> bool {
    let literal = p.replace('*', "x");
    stj_proto::valid_node_name(&literal)
}

impl Enrolment {
    pub fn open(db: &Path) -> rusqlite::Result<Enrolment> {
        let conn = crate::queue::connect(db)?;
        conn.execute_batch(SCHEMA)?;
        Ok(Enrolment {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new enrolment ticket for `names` (patterns allowed) valid for
    /// `ttl`; returns its secret (the token's second half).
    pub fn mint(
        &self,
        names: &[String],
        ttl: Duration,
    ) -> Result<[u8; SECRET_LEN], EnrolmentError> {
        if let Some(bad) = names.iter().find(|n| !valid_pattern(n)) {
            return Err(EnrolmentError::BadName(bad.clone()));
        }
        if names.is_empty() {
            return Err(EnrolmentError::BadName(String::new()));
        }
        let mut secret = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| EnrolmentError::Random)?;
        let now = now();
        let conn = self.conn();
        conn.execute(
            "DELETE FROM enrolment_tokens WHERE expires_at < ?1",
            params![now],
        )?;
        conn.execute(
            "INSERT INTO enrolment_tokens (secret_sha256, names, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                sha256(&secret).to_vec(),
                names.join(" "),
                now,
                now.saturating_add(ttl.as_secs().min(i64::MAX as u64) as i64)
            ],
        )?;
        Ok(secret)
    }

    /// May the holder of the certificate with hash `cert` register as
    /// `name`? `secret` is the join token's (empty without one); it only
    /// matters for a name not enrolled yet.
    pub fn admit(
        &self,
        name: &str,
        cert: [u8; 32],
        secret: &[u8],
        peer: &str,
    ) -> Result<Admitted, EnrolmentError> {
        let refuse = |r| Err(EnrolmentError::Refused(r));
        let mut conn = self.conn();
        // IMMEDIATE: two registrations racing for one new name see each
        // other; exactly one key gets pinned.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let pinned: Option<(Vec<u8>, i64, String)> = tx
            .query_row(
                "SELECT cert_sha256, enrolled_at, enrolled_from FROM nodes WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((pin, enrolled_at, from)) = pinned {
            // Hashes of public certificates: no secret to time.
            if pin == cert {
                return Ok(Admitted::Known);
            }
            return refuse(Refusal::WrongKey {
                name: name.into(),
                enrolled_at,
                from,
            });
        }
        let other: Option<String> = tx
            .query_row(
                "SELECT name FROM nodes WHERE cert_sha256 = ?1",
                params![cert.to_vec()],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = other {
            return refuse(Refusal::KeyInUse { other });
        }
        if secret.is_empty() {
            return refuse(Refusal::NotEnrolled { name: name.into() });
        }
        let ticket: Option<(String, i64)> = tx
            .query_row(
                "SELECT names, expires_at FROM enrolment_tokens WHERE secret_sha256 = ?1",
                params![sha256(secret).to_vec()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((names, expires_at)) = ticket else {
            return refuse(Refusal::UnknownToken { name: name.into() });
        };
        if now() > expires_at {
            return refuse(Refusal::Expired {
                name: name.into(),
                at: expires_at,
            });
        }
        if !names.split(' ').any(|p| matches(p, name)) {
            return refuse(Refusal::NotForName {
                name: name.into(),
                covers: names,
            });
        }
        tx.execute(
            "INSERT INTO nodes (name, cert_sha256, enrolled_at, enrolled_from) VALUES (?1, ?2, ?3, ?4)",
            params![name, cert.to_vec(), now(), peer],
        )?;
        tx.commit()?;
        Ok(Admitted::Enrolled)
    }

    /// Whether some node is enrolled with this key.
    pub fn is_enrolled(&self, cert: [u8; 32]) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM nodes WHERE cert_sha256 = ?1")?
            .query_row(params![cert.to_vec()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Unpins `name`: it can enrol again with a new token. False if it was
    /// not enrolled.
    pub fn forget(&self, name: &str) -> rusqlite::Result<bool> {
        Ok(self
            .conn()
            .execute("DELETE FROM nodes WHERE name = ?1", params![name])?
            == 1)
    }

    pub fn list(&self) -> rusqlite::Result<Vec<EnrolledNode>> {
        self.list_after("", usize::MAX)
    }

    /// The first `limit` enrolled nodes whose names sort after `after`
    /// ("": from the first), by name: a page of `stj nodes`.
    pub fn list_after(&self, after: &str, limit: usize) -> rusqlite::Result<Vec<EnrolledNode>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT name, cert_sha256, enrolled_at, enrolled_from FROM nodes \
             WHERE name > ?1 ORDER BY name LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![after, limit], |r| {
            let pin: Vec<u8> = r.get(1)?;
            let mut cert_sha256 = [0u8; 32];
            if pin.len() == 32 {
                cert_sha256.copy_from_slice(&pin);
            }
            Ok(EnrolledNode {
                name: r.get(0)?,
                cert_sha256,
                enrolled_at: r.get(2)?,
                enrolled_from: r.get(3)?,
            })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> (tempfile::TempDir, Enrolment) {
        let dir = tempfile::tempdir().unwrap();
        let e = Enrolment::open(&dir.path().join("q.sqlite")).unwrap();
        (dir, e)
    }

    fn refusal(r: Result<Admitted, EnrolmentError>) -> Refusal {
        match r {
            Err(EnrolmentError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn patterns() {
        assert!(matches("node*", "node1"));
        assert!(matches("*", "anything"));
        assert!(matches("rack*-n*", "rack3-n17"));
        assert!(!matches("node*", "gpu1"));
        assert!(!matches("node1", "node10"));
        assert!(valid_pattern("node*") && !valid_pattern("../x") && !valid_pattern(""));
    }

    #[test]
    fn a_token_enrols_its_names_once_and_the_key_is_pinned() {
        let (_d, e) = book();
        let secret = e.mint(&["node1".into(), "gpu*".into()], DAY).unwrap();
        assert_eq!(
            e.admit("node1", [1; 32], &secret, "10.0.0.1").unwrap(),
            Admitted::Enrolled
        );
        // Again, without a token: the pinned key is enough.
        assert_eq!(
            e.admit("node1", [1; 32], b"", "10.0.0.1").unwrap(),
            Admitted::Known
        );
        // Another key under that name, even with the token: refused.
        assert!(matches!(
            refusal(e.admit("node1", [2; 32], &secret, "10.0.0.9")),
            Refusal::WrongKey { .. }
        ));
        // The token does not cover other names.
        assert!(matches!(
            refusal(e.admit("node2", [3; 32], &secret, "x")),
            Refusal::NotForName { .. }
        ));
        // A pattern covers names; one key has one name.
        assert_eq!(
            e.admit("gpu7", [4; 32], &secret, "x").unwrap(),
            Admitted::Enrolled
        );
        assert!(matches!(
            refusal(e.admit("gpu8", [4; 32], &secret, "x")),
            Refusal::KeyInUse { .. }
        ));
        // Without a token, an unknown name; with a made-up one, unknown token.
        assert!(matches!(
            refusal(e.admit("gpu9", [5; 32], b"", "x")),
            Refusal::NotEnrolled { .. }
        ));
        assert!(matches!(
            refusal(e.admit("gpu9", [5; 32], &[0; 32], "x")),
            Refusal::UnknownToken { .. }
        ));
    }

    #[test]
    fn expired_tokens_enrol_nothing_and_forgotten_names_enrol_again() {
        let (_d, e) = book();
        let old = e.mint(&["node1".into()], Duration::ZERO).unwrap();
        e.conn()
            .execute(
                "UPDATE enrolment_tokens SET expires_at = expires_at - 10",
                [],
            )
            .unwrap();
        assert!(matches!(
            refusal(e.admit("node1", [1; 32], &old, "x")),
            Refusal::Expired { .. }
        ));
        let fresh = e.mint(&["node1".into()], DAY).unwrap();
        e.admit("node1", [1; 32], &fresh, "x").unwrap();
        assert!(e.forget("node1").unwrap());
        assert!(!e.forget("node1").unwrap());
        // The reinstalled node, with a new key and a token.
        assert_eq!(
            e.admit("node1", [9; 32], &fresh, "x").unwrap(),
            Admitted::Enrolled
        );
        assert_eq!(e.list().unwrap()[0].cert_sha256, [9; 32]);
    }

    #[test]
    fn enrolled_nodes_come_in_pages_by_name() {
        let (_d, e) = book();
        let names: Vec<String> = ["n3", "n1", "n10", "n2"].map(String::from).to_vec();
        let token = e.mint(&names, DAY).unwrap();
        for (i, n) in names.iter().enumerate() {
            e.admit(n, [i as u8; 32], &token, "x").unwrap();
        }
        let page = |after: &str| -> Vec<String> {
            e.list_after(after, 2)
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect()
        };
        assert_eq!(page(""), ["n1", "n10"]);
        assert_eq!(page("n10"), ["n2", "n3"]);
        assert!(page("n3").is_empty());
        assert_eq!(e.list().unwrap().len(), 4);
    }

    #[test]
    fn bad_names_are_refused_at_minting() {
        let (_d, e) = book();
        assert!(matches!(
            e.mint(&["a/b".into()], DAY),
            Err(EnrolmentError::BadName(_))
        ));
        assert!(e.mint(&[], DAY).is_err());
    }
}
