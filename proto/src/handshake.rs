//! The data-connection handshake (DESIGN §3) as a sans-IO core plus two small
//! frame helpers. The client proves it holds `k` (so it got the capability
//! from the schedd), the starter proves it holds `k` too (so it knows the
//! starter key: a genuine starter) and binds its one-time host key to this
//! session. Neither `k` nor any private key crosses the network.
//!
//! hello mac     = HMAC(k, "stj-hello-v2" | len(capability) u32 | capability
//!                      | client_nonce)
//! transcript    = SHA-256("stj-handshake-v2" | len(hello) u32 | hello frame
//!                      | starter_nonce | host_pubkey)
//! starter proof = HMAC(k, "starter" | transcript)
//! client proof  = HMAC(k, "client" | transcript)
//! ready mac     = HMAC(k, "ready" | transcript | user)
//!
//! The hello mac lets the starter refuse a connection that holds no real
//! capability before it takes any handshake slot; the ready mac binds the
//! login name, the last field the client acts on, to the session. Only an
//! Error is unauthenticated, and all it can do is end the attempt.

use std::time::Duration;

use prost::Message;
use ring::{digest, hmac};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::capability::{derive_k, Capability};
use crate::session::{
    handshake_message::Msg, Challenge, ErrorCode, HandshakeMessage, Hello, Proof, Ready,
};

pub const VERSION: u32 = 2;
/// Largest handshake message; anything bigger is an attack or a bug.
pub const MAX_MESSAGE: usize = 4096;
/// The whole handshake must finish within this.
pub const DEADLINE: Duration = Duration::from_secs(10);
pub const NONCE_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("connection failed during the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("undecodable handshake message")]
    Decode,
    #[error("unexpected handshake message: expected {0}")]
    Unexpected(&'static str),
    #[error("handshake protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(u32),
    #[error("the capability is malformed")]
    Capability,
    #[error("the peer failed to prove it holds this session's key")]
    BadProof,
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

fn msg(m: Msg) -> HandshakeMessage {
    HandshakeMessage { msg: Some(m) }
}

pub fn error_message(code: ErrorCode, message: impl Into<String>) -> HandshakeMessage {
    msg(Msg::Error(crate::session::Error {
        code: code as i32,
        message: message.into(),
    }))
}

/// Writes one length-prefixed message; returns the body bytes sent.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &HandshakeMessage,
) -> Result<Vec<u8>, HandshakeError> {
    let body = m.encode_to_vec();
    if body.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLarge(body.len()));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(body)
}

/// Reads one length-prefixed message, never more bytes than it holds (the
/// SSH stream follows on the same socket). Returns the body too.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<(HandshakeMessage, Vec<u8>), HandshakeError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(HandshakeError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let m = decode_message(&body)?;
    Ok((m, body))
}

pub fn decode_message(body: &[u8]) -> Result<HandshakeMessage, HandshakeError> {
    if body.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLarge(body.len()));
    }
    HandshakeMessage::decode(body).map_err(|_| HandshakeError::Decode)
}

fn hello_mac_input(capability: &[u8], client_nonce: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + capability.len() + client_nonce.len());
    v.extend_from_slice(b"stj-hello-v2");
    v.extend_from_slice(&(capability.len() as u32).to_be_bytes());
    v.extend_from_slice(capability);
    v.extend_from_slice(client_nonce);
    v
}

fn ready_mac_input(t: &[u8; 32], user: &str) -> Vec<u8> {
    [b"ready".as_slice(), t.as_slice(), user.as_bytes()].concat()
}

fn transcript(hello: &[u8], starter_nonce: &[u8], host_pubkey: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"stj-handshake-v2");
    ctx.update(&(hello.len() as u32).to_be_bytes());
    ctx.update(hello);
    ctx.update(starter_nonce);
    ctx.update(host_pubkey);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn proof_input(role: &[u8], t: &[u8; 32]) -> Vec<u8> {
    [role, t.as_slice()].concat()
}

fn remote_error(m: HandshakeMessage, expected: &'static str) -> HandshakeError {
    match m.msg {
        Some(Msg::Error(e)) => HandshakeError::Remote {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
        },
        _ => HandshakeError::Unexpected(expected),
    }
}

/// The client's side.
pub struct ClientHandshake {
    k: hmac::Key,
    hello: Vec<u8>,
    /// Set once the starter's proof checked out.
    transcript: Option<[u8; 32]>,
}

/// What a client may ask of the starter in its Hello (session.proto); the
/// transcript binds them, so nobody on the way can change them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asks {
    /// The job's own host key instead of a one-time one.
    pub job_host_key: bool,
    /// The job's own namespaces instead of its innermost container.
    pub outer: bool,
    /// A step of a Slurm job other than its default (the batch step).
    pub step: Option<Step>,
}

/// A step of a Slurm job, as users name it (`srun --overlap` and
/// `scontrol` call them the same): `batch`, `extern`, or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Batch,
    Extern,
    Id(u32),
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Step, String> {
        match s {
            "batch" => Ok(Step::Batch),
            "extern" => Ok(Step::Extern),
            n => n.parse().map(Step::Id).map_err(|_| {
                format!("step {n:?}: name a step as batch, extern or its number (squeue -s lists a job's steps)")
            }),
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Batch => f.write_str("batch"),
            Step::Extern => f.write_str("extern"),
            Step::Id(n) => write!(f, "{n}"),
        }
    }
}

impl ClientHandshake {
    /// Returns the state and the Hello to send, asking nothing special.
    pub fn start(
        capability: Vec<u8>,
        k: &[u8; 32],
        client_nonce: [u8; NONCE_LEN],
    ) -> (Self, HandshakeMessage) {
        Self::start_asking(capability, k, client_nonce, Asks::default())
    }

    /// `start`, with `asks` in the Hello.
    pub fn start_asking(
        capability: Vec<u8>,
        k: &[u8; 32],
        client_nonce: [u8; NONCE_LEN],
        asks: Asks,
    ) -> (Self, HandshakeMessage) {
        let k = hmac::Key::new(hmac::HMAC_SHA256, k);
        let mac = hmac::sign(&k, &hello_mac_input(&capability, &client_nonce));
        let hello = msg(Msg::Hello(Hello {
            version: VERSION,
            capability,
            client_nonce: client_nonce.to_vec(),
            mac: mac.as_ref().to_vec(),
            job_host_key: asks.job_host_key,
            outer: asks.outer,
            step: asks.step.map(|s| s.to_string()).unwrap_or_default(),
        }));
        let state = ClientHandshake {
            k,
            hello: hello.encode_to_vec(),
            transcript: None,
        };
        (state, hello)
    }

    /// Adds a host certificate (of the key `on_challenge` returned) to the
    /// Proof it returned.
    pub fn with_host_certificate(mut proof: HandshakeMessage, cert: Vec<u8>) -> HandshakeMessage {
        if let Some(Msg::Proof(p)) = &mut proof.msg {
            p.host_certificate = cert;
        }
        proof
    }

    /// Checks the starter's proof. On success returns the Proof to send and
    /// the session's host key, now known to be the genuine starter's.
    pub fn on_challenge(
        &mut self,
        m: HandshakeMessage,
    ) -> Result<(HandshakeMessage, [u8; 32]), HandshakeError> {
        let Some(Msg::Challenge(c)) = m.msg else {
            return Err(remote_error(m, "challenge"));
        };
        let host: [u8; 32] = c
            .host_pubkey
            .as_slice()
            .try_into()
            .map_err(|_| HandshakeError::Decode)?;
        if c.starter_nonce.len() != NONCE_LEN {
            return Err(HandshakeError::Decode);
        }
        let t = transcript(&self.hello, &c.starter_nonce, &host);
        hmac::verify(&self.k, &proof_input(b"starter", &t), &c.proof)
            .map_err(|_| HandshakeError::BadProof)?;
        self.transcript = Some(t);
        let proof = hmac::sign(&self.k, &proof_input(b"client", &t));
        Ok((
            msg(Msg::Proof(Proof {
                proof: proof.as_ref().to_vec(),
                host_certificate: Vec::new(),
            })),
            host,
        ))
    }

    /// Returns the account to log in as, once the starter's MAC shows that
    /// the genuine starter sent it.
    pub fn on_ready(&self, m: HandshakeMessage) -> Result<String, HandshakeError> {
        let Some(t) = self.transcript else {
            return Err(HandshakeError::Unexpected("challenge first"));
        };
        match m.msg {
            Some(Msg::Ready(r)) => {
                hmac::verify(&self.k, &ready_mac_input(&t, &r.user), &r.mac)
                    .map_err(|_| HandshakeError::BadProof)?;
                Ok(r.user)
            }
            _ => Err(remote_error(m, "ready")),
        }
    }
}

/// The starter's side.
pub struct StarterHandshake {
    pub capability: Capability,
    /// What the client asked for in its Hello.
    pub asks: Asks,
    k: hmac::Key,
    hello: Vec<u8>,
    transcript: Option<[u8; 32]>,
}

impl StarterHandshake {
    /// Decodes the Hello (given as received bytes), derives `k` with this
    /// starter's key and checks the Hello's MAC: `BadProof` means the sender
    /// does not hold this capability's k (a forged or altered capability).
    /// The caller then checks policy (expiry, node, job, replay) on
    /// `capability` before calling `challenge`.
    pub fn on_hello(hello_body: &[u8], starter_key: &[u8]) -> Result<Self, HandshakeError> {
        let m = decode_message(hello_body)?;
        let Some(Msg::Hello(h)) = m.msg else {
            return Err(HandshakeError::Unexpected("hello"));
        };
        if h.version != VERSION {
            return Err(HandshakeError::Version(h.version));
        }
        if h.client_nonce.len() != NONCE_LEN {
            return Err(HandshakeError::Decode);
        }
        let capability =
            Capability::decode(&h.capability).map_err(|_| HandshakeError::Capability)?;
        let k = hmac::Key::new(hmac::HMAC_SHA256, &derive_k(starter_key, &h.capability));
        hmac::verify(&k, &hello_mac_input(&h.capability, &h.client_nonce), &h.mac)
            .map_err(|_| HandshakeError::BadProof)?;
        let step = match h.step.as_str() {
            "" => None,
            s => Some(s.parse::<Step>().map_err(|_| HandshakeError::Decode)?),
        };
        Ok(StarterHandshake {
            capability,
            asks: Asks {
                job_host_key: h.job_host_key,
                outer: h.outer,
                step,
            },
            k,
            hello: hello_body.to_vec(),
            transcript: None,
        })
    }

    pub fn challenge(
        &mut self,
        starter_nonce: [u8; NONCE_LEN],
        host_pubkey: [u8; 32],
    ) -> HandshakeMessage {
        let t = transcript(&self.hello, &starter_nonce, &host_pubkey);
        self.transcript = Some(t);
        let proof = hmac::sign(&self.k, &proof_input(b"starter", &t));
        msg(Msg::Challenge(Challenge {
            starter_nonce: starter_nonce.to_vec(),
            host_pubkey: host_pubkey.to_vec(),
            proof: proof.as_ref().to_vec(),
        }))
    }

    /// Checks the client's proof (constant time).
    /// Checks the client's proof; returns the host certificate it sent
    /// (empty if none; its contents are for the caller to check).
    pub fn on_proof(&self, m: HandshakeMessage) -> Result<Vec<u8>, HandshakeError> {
        let Some(t) = self.transcript else {
            return Err(HandshakeError::Unexpected("challenge first"));
        };
        let Some(Msg::Proof(p)) = m.msg else {
            return Err(HandshakeError::Unexpected("proof"));
        };
        hmac::verify(&self.k, &proof_input(b"client", &t), &p.proof)
            .map_err(|_| HandshakeError::BadProof)?;
        Ok(p.host_certificate)
    }

    /// The Ready for `user`; only after `on_proof` succeeded.
    pub fn ready(&self, user: &str) -> Result<HandshakeMessage, HandshakeError> {
        let Some(t) = self.transcript else {
            return Err(HandshakeError::Unexpected("challenge first"));
        };
        let mac = hmac::sign(&self.k, &ready_mac_input(&t, user));
        Ok(msg(Msg::Ready(Ready {
            user: user.to_string(),
            mac: mac.as_ref().to_vec(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cap() -> Capability {
        Capability {
            session_id: crate::session_id::SessionId([3; 16]),
            job_id: 7,
            owner_uid: 1000,
            expiry: u64::MAX,
            client_pubkey: [4; 32],
            starter_id: "n".into(),
        }
    }

    const KEY: [u8; 32] = [5; 32];

    fn run(client_k: [u8; 32], starter_key: [u8; 32]) -> Result<[u8; 32], HandshakeError> {
        let enc = cap().encode().unwrap();
        let (mut client, hello) = ClientHandshake::start(enc, &client_k, [1; 32]);
        let mut starter = StarterHandshake::on_hello(&hello.encode_to_vec(), &starter_key)?;
        assert_eq!(starter.capability, cap());
        let ch = starter.challenge([2; 32], [8; 32]);
        let (proof, host) = client.on_challenge(ch)?;
        starter.on_proof(proof)?;
        assert_eq!(client.on_ready(starter.ready("alice")?)?, "alice");
        Ok(host)
    }

    fn k() -> [u8; 32] {
        derive_k(&KEY, &cap().encode().unwrap())
    }

    #[test]
    fn genuine_parties_agree_on_the_host_key() {
        assert_eq!(run(k(), KEY).unwrap(), [8; 32]);
    }

    #[test]
    fn a_hello_without_k_is_refused_before_anything_else() {
        // A forged capability (or a real one without its k) fails the
        // Hello's MAC: the starter learns it before giving it any slot.
        assert!(matches!(run([0; 32], KEY), Err(HandshakeError::BadProof)));
        // So does a starter with another key (it cannot derive this k).
        assert!(matches!(run(k(), [6; 32]), Err(HandshakeError::BadProof)));
    }

    #[test]
    fn a_fake_starter_without_the_key_is_caught_by_the_client() {
        let (mut client, _) = ClientHandshake::start(cap().encode().unwrap(), &k(), [1; 32]);
        let fake = msg(Msg::Challenge(Challenge {
            starter_nonce: vec![2; 32],
            host_pubkey: vec![8; 32],
            proof: vec![0; 32],
        }));
        assert!(matches!(
            client.on_challenge(fake),
            Err(HandshakeError::BadProof)
        ));
        // A Ready before a verified challenge is refused too.
        assert!(client
            .on_ready(msg(Msg::Ready(Ready {
                user: "root".into(),
                mac: vec![0; 32]
            })))
            .is_err());
    }

    #[test]
    fn a_client_proof_without_k_is_caught_by_the_starter() {
        let (_, hello) = ClientHandshake::start(cap().encode().unwrap(), &k(), [1; 32]);
        let mut starter = StarterHandshake::on_hello(&hello.encode_to_vec(), &KEY).unwrap();
        let _ = starter.challenge([2; 32], [8; 32]);
        let forged = msg(Msg::Proof(Proof {
            proof: vec![0; 32],
            ..Default::default()
        }));
        assert!(matches!(
            starter.on_proof(forged),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn a_rewritten_login_name_in_ready_is_caught() {
        let (mut client, hello) = ClientHandshake::start(cap().encode().unwrap(), &k(), [1; 32]);
        let mut starter = StarterHandshake::on_hello(&hello.encode_to_vec(), &KEY).unwrap();
        let (proof, _) = client
            .on_challenge(starter.challenge([2; 32], [8; 32]))
            .unwrap();
        starter.on_proof(proof).unwrap();
        let Some(Msg::Ready(mut r)) = starter.ready("alice").unwrap().msg else {
            panic!("ready")
        };
        r.user = "bob".into();
        assert!(matches!(
            client.on_ready(msg(Msg::Ready(r))),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn a_flipped_job_host_key_request_breaks_the_proofs() {
        let (mut client, hello) =
            ClientHandshake::start_asking(cap().encode().unwrap(), &k(), [1; 32], Asks::default());
        let Some(Msg::Hello(mut h)) = hello.msg else {
            panic!("hello")
        };
        h.job_host_key = true;
        let flipped = msg(Msg::Hello(h)).encode_to_vec();
        let mut starter = StarterHandshake::on_hello(&flipped, &KEY).unwrap();
        assert!(starter.asks.job_host_key);
        assert!(matches!(
            client.on_challenge(starter.challenge([2; 32], [8; 32])),
            Err(HandshakeError::BadProof)
        ));
    }

    #[test]
    fn a_changed_step_breaks_the_proofs_and_bad_steps_are_refused() {
        let asks = Asks {
            step: Some(Step::Extern),
            ..Asks::default()
        };
        let (mut client, hello) =
            ClientHandshake::start_asking(cap().encode().unwrap(), &k(), [1; 32], asks);
        let Some(Msg::Hello(mut h)) = hello.msg else {
            panic!("hello")
        };
        assert_eq!(h.step, "extern");
        h.step = "0".into();
        let changed = msg(Msg::Hello(h.clone())).encode_to_vec();
        let mut starter = StarterHandshake::on_hello(&changed, &KEY).unwrap();
        assert_eq!(starter.asks.step, Some(Step::Id(0)));
        assert!(matches!(
            client.on_challenge(starter.challenge([2; 32], [8; 32])),
            Err(HandshakeError::BadProof)
        ));
        h.step = "../../etc".into();
        let bad = msg(Msg::Hello(h)).encode_to_vec();
        assert!(matches!(
            StarterHandshake::on_hello(&bad, &KEY),
            Err(HandshakeError::Decode)
        ));
        for (s, want) in [
            ("batch", Step::Batch),
            ("extern", Step::Extern),
            ("12", Step::Id(12)),
        ] {
            assert_eq!(s.parse::<Step>().unwrap(), want);
            assert_eq!(want.to_string(), s);
        }
        assert!("-1".parse::<Step>().is_err());
    }

    #[test]
    fn a_host_certificate_rides_with_the_proof() {
        let (mut client, hello) = ClientHandshake::start(cap().encode().unwrap(), &k(), [1; 32]);
        let mut starter = StarterHandshake::on_hello(&hello.encode_to_vec(), &KEY).unwrap();
        let (proof, _) = client
            .on_challenge(starter.challenge([2; 32], [8; 32]))
            .unwrap();
        let proof = ClientHandshake::with_host_certificate(proof, b"cert".to_vec());
        assert_eq!(starter.on_proof(proof).unwrap(), b"cert");
    }

    #[test]
    fn proof_before_challenge_is_refused() {
        let (_, hello) = ClientHandshake::start(cap().encode().unwrap(), &k(), [1; 32]);
        let starter = StarterHandshake::on_hello(&hello.encode_to_vec(), &KEY).unwrap();
        assert!(starter.on_proof(msg(Msg::Proof(Proof::default()))).is_err());
        assert!(starter.ready("alice").is_err(), "no Ready before the proof");
    }

    #[test]
    fn remote_errors_reach_the_client() {
        let (mut client, _) = ClientHandshake::start(vec![], &[0; 32], [1; 32]);
        match client.on_challenge(error_message(ErrorCode::Expired, "capability expired")) {
            Err(HandshakeError::Remote { code, message }) => {
                assert_eq!(code, ErrorCode::Expired);
                assert_eq!(message, "capability expired");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn oversize_frames_are_refused_before_reading_them() {
        let mut input: &[u8] = &((MAX_MESSAGE as u32 + 1).to_be_bytes());
        assert!(matches!(
            read_message(&mut input).await,
            Err(HandshakeError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn frames_round_trip_and_leave_following_bytes_unread() {
        let mut buf = Vec::new();
        write_message(&mut buf, &error_message(ErrorCode::Busy, "u"))
            .await
            .unwrap();
        buf.extend_from_slice(b"SSH-2.0-");
        let mut r: &[u8] = &buf;
        let (m, _) = read_message(&mut r).await.unwrap();
        assert!(matches!(m.msg, Some(Msg::Error(_))));
        assert_eq!(r, b"SSH-2.0-");
    }

    proptest! {
        /// Flipping any bit of the Hello the starter receives makes the
        /// handshake fail (or the message undecodable), never succeed.
        #[test]
        fn tampered_hello_never_completes(bit in 0usize..(120 * 8)) {
            let enc = cap().encode().unwrap();
            let k = derive_k(&KEY, &enc);
            let (mut client, hello) = ClientHandshake::start(enc, &k, [1; 32]);
            let mut body = hello.encode_to_vec();
            prop_assume!(bit / 8 < body.len());
            body[bit / 8] ^= 1 << (bit % 8);
            if let Ok(mut starter) = StarterHandshake::on_hello(&body, &KEY) {
                let ch = starter.challenge([2; 32], [8; 32]);
                prop_assert!(client.on_challenge(ch).is_err());
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = StarterHandshake::on_hello(&bytes, &KEY);
        }
    }
}
