//! The gRPC codec of every generated client and server: prost, with small per-call buffers.
//!
//! tonic's default codec allocates an 8 KiB encode and an 8 KiB decode buffer per call and
//! keeps them (and whatever a message made the decode buffer grow to, 32 KiB after one
//! seed report) for as long as the call lives. An agent session is one call that lives for
//! days and mostly carries heartbeats and acks of a few dozen bytes: ~41 KB of buffers per
//! idle session in the controller (heaptrack), ~400 MB with 10,000 agents. Buffers still
//! grow to fit a large message (a report, a node list); they just start small.

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::prost::Message;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial encode/decode buffer per call. A decode buffer grows to the next message's size
/// exactly (tonic reserves the announced length), so the smaller the start the less an idle
/// stream keeps.
const BUFFER: usize = 1024;
/// How many encoded bytes a streaming response batches before yielding (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

/// `tonic_prost::ProstCodec` with [`BUFFER`]-sized initial buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
