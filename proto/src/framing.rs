//! Frames on the starter link: a 4-byte big-endian length, then one protobuf
//! message. The limit keeps a broken or hostile peer from making us buffer
//! unbounded input.

use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame on the starter link. A RunJob carries the job's env and
/// args; 1 MiB is far above any real one and far below a memory problem.
pub const MAX_LINK_FRAME: usize = 1024 * 1024;

pub fn link_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(MAX_LINK_FRAME)
        .new_codec()
}

pub fn encode<M: Message>(msg: &M) -> Bytes {
    Bytes::from(msg.encode_to_vec())
}

pub fn decode<M: Message + Default>(frame: BytesMut) -> Result<M, prost::DecodeError> {
    M::decode(frame.freeze())
}
