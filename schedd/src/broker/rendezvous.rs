//! Sessions the broker may connect: made when a capability is granted, gone
//! when it expires. Tokens are compared in constant time (HMAC tags under a
//! per-process key), never logged.

use std::sync::Mutex;
use stj_proto::session_id::SessionId;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use stj_cli::expiring::ExpiringMap;
use stj_proto::preamble::TOKEN_LEN;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::now;

pub struct Pending {
    pub node: String,
    /// The uid that was granted the capability.
    pub uid: u32,
    client_tag: hmac::Tag,
    starter_tag: hmac::Tag,
    /// The starter's relay token, sent to it over its link on demand.
    pub starter_token: [u8; TOKEN_LEN],
    /// A client half waiting at the relay for its starter half.
    waiting: Option<oneshot::Sender<TcpStream>>,
    client_arrived: bool,
    /// A reverse connection was asked for: each session gets one dial-back.
    dialed_back: bool,
}

pub struct Route {
    pub session_id: SessionId,
    pub uid: u32,
    /// Tag of the token the starter must present with the name.
    token_tag: hmac::Tag,
}

pub struct Rendezvous {
    key: hmac::Key,
    sessions: Mutex<ExpiringMap<SessionId, Pending>>,
    routes: Mutex<ExpiringMap<String, Route>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RendezvousError {
    #[error("no pending session with this id (expired, or never granted)")]
    Unknown,
    #[error("wrong relay token")]
    BadToken,
    #[error("this session's client half is already at the relay")]
    Taken,
    #[error("wrong route token")]
    BadRouteToken,
    #[error("a reverse connection was already requested for this session; each ssh-to-job run gets one (run ssh-to-job again for another)")]
    DialedBack,
}

pub fn random_token() -> [u8; TOKEN_LEN] {
    let mut t = [0u8; TOKEN_LEN];
    // A failing system RNG leaves zeros; the grant path checks its own RNG
    // first, so this cannot silently produce guessable tokens.
    let _ = SystemRandom::new().fill(&mut t);
    t
}

impl Default for Rendezvous {
    fn default() -> Self {
        let mut k = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut k);
        Rendezvous {
            key: hmac::Key::new(hmac::HMAC_SHA256, &k),
            sessions: Mutex::default(),
            routes: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rendezvous {
    /// Records a granted session; returns the client's relay token.
    pub fn grant(
        &self,
        session_id: SessionId,
        node: &str,
        uid: u32,
        expiry: u64,
    ) -> [u8; TOKEN_LEN] {
        let client = random_token();
        let starter = random_token();
        lock(&self.sessions).insert(
            session_id,
            expiry,
            Pending {
                node: node.to_string(),
                uid,
                client_tag: hmac::sign(&self.key, &client),
                starter_tag: hmac::sign(&self.key, &starter),
                starter_token: starter,
                waiting: None,
                client_arrived: false,
                dialed_back: false,
            },
            now(),
        );
        client
    }

    /// (node, uid) of a live pending session.
    pub fn lookup(&self, session_id: &SessionId) -> Option<(String, u32)> {
        lock(&self.sessions)
            .get(session_id, now())
            .map(|p| (p.node.clone(), p.uid))
    }

    /// Marks that `session_id`'s node is asked to dial back, once: a
    /// capability buys one dial-back, however often ConnectBack is called.
    pub fn dial_back_once(&self, session_id: &SessionId) -> Result<(), RendezvousError> {
        let mut s = lock(&self.sessions);
        let p = s
            .get_mut(session_id, now())
            .ok_or(RendezvousError::Unknown)?;
        if p.dialed_back {
            return Err(RendezvousError::DialedBack);
        }
        p.dialed_back = true;
        Ok(())
    }

    /// A client half arrived at the relay: checks its token and parks a
    /// slot for the starter half. Returns the node to ask and the token it
    /// must present.
    pub fn client_arrives(
        &self,
        session_id: &SessionId,
        token: &[u8],
    ) -> Result<(String, [u8; TOKEN_LEN], oneshot::Receiver<TcpStream>), RendezvousError> {
        let mut s = lock(&self.sessions);
        let p = s
            .get_mut(session_id, now())
            .ok_or(RendezvousError::Unknown)?;
        hmac::verify(&self.key, token, p.client_tag.as_ref())
            .map_err(|_| RendezvousError::BadToken)?;
        if p.client_arrived {
            return Err(RendezvousError::Taken);
        }
        let (tx, rx) = oneshot::channel();
        p.waiting = Some(tx);
        p.client_arrived = true;
        Ok((p.node.clone(), p.starter_token, rx))
    }

    /// A starter half arrived: checks its token and hands it to the waiting
    /// client half. Gives the stream back if nobody waits for it.
    pub fn starter_arrives(
        &self,
        session_id: &SessionId,
        token: &[u8],
        stream: TcpStream,
    ) -> Result<(), (RendezvousError, TcpStream)> {
        let mut s = lock(&self.sessions);
        let Some(p) = s.get_mut(session_id, now()) else {
            return Err((RendezvousError::Unknown, stream));
        };
        if hmac::verify(&self.key, token, p.starter_tag.as_ref()).is_err() {
            return Err((RendezvousError::BadToken, stream));
        }
        match p.waiting.take() {
            Some(tx) => tx.send(stream).map_err(|s| (RendezvousError::Unknown, s)),
            None => Err((RendezvousError::Unknown, stream)),
        }
    }

    /// Records a reverse route to the client socket `name`; returns the
    /// token the starter must present to be routed there.
    pub fn add_route(
        &self,
        name: &str,
        session_id: SessionId,
        uid: u32,
        expiry: u64,
    ) -> [u8; TOKEN_LEN] {
        let token = random_token();
        let route = Route {
            session_id,
            uid,
            token_tag: hmac::sign(&self.key, &token),
        };
        lock(&self.routes).insert(name.to_string(), expiry, route, now());
        token
    }

    /// Takes the route for `name` if `token` is its token: each route is
    /// used once, and a wrong token leaves it for the genuine starter.
    pub fn take_route(&self, name: &str, token: &[u8]) -> Result<Route, RendezvousError> {
        let mut routes = lock(&self.routes);
        let key = name.to_string();
        let r = routes.get(&key, now()).ok_or(RendezvousError::Unknown)?;
        hmac::verify(&self.key, token, r.token_tag.as_ref())
            .map_err(|_| RendezvousError::BadRouteToken)?;
        routes.remove(&key, now()).ok_or(RendezvousError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_tokens_are_checked_and_client_halves_are_single() {
        let r = Rendezvous::default();
        let sid = SessionId([1; 16]);
        let token = r.grant(sid, "n1", 1000, now() + 60);
        assert_eq!(
            r.client_arrives(&sid, &[0; 32]).err(),
            Some(RendezvousError::BadToken)
        );
        assert_eq!(
            r.client_arrives(&SessionId([2; 16]), &token).err(),
            Some(RendezvousError::Unknown)
        );
        let (node, _, _rx) = r.client_arrives(&sid, &token).unwrap();
        assert_eq!(node, "n1");
        assert_eq!(
            r.client_arrives(&sid, &token).err(),
            Some(RendezvousError::Taken)
        );
    }

    #[test]
    fn a_route_is_taken_only_with_its_token_and_once() {
        let r = Rendezvous::default();
        let token = r.add_route("stj-1", SessionId([1; 16]), 1000, now() + 60);
        assert_eq!(
            r.take_route("stj-1", &[0; 32]).err(),
            Some(RendezvousError::BadRouteToken)
        );
        assert_eq!(
            r.take_route("stj-2", &token).err(),
            Some(RendezvousError::Unknown)
        );
        // The impostor's attempt left the route for the genuine starter.
        assert_eq!(r.take_route("stj-1", &token).unwrap().uid, 1000);
        assert_eq!(
            r.take_route("stj-1", &token).err(),
            Some(RendezvousError::Unknown)
        );
    }

    #[test]
    fn a_session_gets_one_dial_back() {
        let r = Rendezvous::default();
        let sid = SessionId([1; 16]);
        r.grant(sid, "n1", 1000, now() + 60);
        r.dial_back_once(&sid).unwrap();
        assert_eq!(r.dial_back_once(&sid), Err(RendezvousError::DialedBack));
        assert_eq!(
            r.dial_back_once(&SessionId([9; 16])),
            Err(RendezvousError::Unknown)
        );
    }

    #[test]
    fn expired_sessions_are_unknown() {
        let r = Rendezvous::default();
        let sid = SessionId([1; 16]);
        let token = r.grant(sid, "n1", 1000, now().saturating_sub(1));
        assert_eq!(
            r.client_arrives(&sid, &token).err(),
            Some(RendezvousError::Unknown)
        );
        assert!(r.lookup(&sid).is_none());
    }
}
