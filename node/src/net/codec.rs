//! Request-response framing for pacmesh's libp2p protocols: one CBOR message per stream, read
//! to the end with a byte cap **before** anything is parsed, then decoded and validated with
//! the protocol crate's limits ([`Message::decode`]). An oversized or malformed message fails
//! the stream with `InvalidData`; nothing is buffered beyond the cap.

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use pacmesh_protocol::{Limits, Message};

/// A codec for requests `Req` and responses `Resp`.
pub struct MsgCodec<Req, Resp> {
    limits: Limits,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> MsgCodec<Req, Resp> {
    /// A codec checking messages against `limits`.
    pub fn new(limits: Limits) -> Self {
        MsgCodec {
            limits,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for MsgCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.limits.clone())
    }
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than {max} bytes"),
        ));
    }
    Ok(buf)
}

fn decode<M: Message>(bytes: &[u8], limits: &Limits) -> io::Result<M> {
    M::decode(bytes, limits).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

async fn write<T: AsyncWrite + Unpin + Send, M: Message>(io: &mut T, m: &M) -> io::Result<()> {
    let bytes = m
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl<Req, Resp> libp2p::request_response::Codec for MsgCodec<Req, Resp>
where
    Req: Message + Send + Sync + 'static,
    Resp: Message + Send + Sync + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_capped(io, Req::max_bytes(&self.limits)).await?;
        decode(&bytes, &self.limits)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_capped(io, Resp::max_bytes(&self.limits)).await?;
        decode(&bytes, &self.limits)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, &res).await
    }
}
