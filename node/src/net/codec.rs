//! Request-response framing for pacmesh's libp2p protocols: one CBOR message per stream, read
//! to the end with a byte cap **before** anything is parsed, then decoded and validated with
//! the protocol crate's limits ([`Message::decode`]). An oversized or malformed message fails
//! the stream with `InvalidData`; nothing is buffered beyond the cap.
//!
//! [`BlobCodec`] (`/pacmesh/blobs/2`) frames responses so that segment bytes are never CBOR:
//! `DATA_FRAME ‖ u32 BE n ‖ n raw bytes` (n at most one segment, checked before anything is
//! allocated; read straight into a buffer of exactly n bytes) or `CBOR_FRAME ‖ CBOR message`
//! (everything else, read with the cap as above).

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use pacmesh_protocol::{
    BLOBS_VERSION, BlobAnswer, BlobRequest, BlobResponse, CBOR_FRAME, DATA_FRAME, Limits, Message,
    SEGMENT_BYTES,
};

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

/// The codec of `/pacmesh/blobs/2`: requests are CBOR as in [`MsgCodec`]; responses carry a
/// frame tag (see the [module docs](self)).
#[derive(Clone)]
pub struct BlobCodec {
    limits: Limits,
}

impl BlobCodec {
    /// A codec checking messages against `limits`.
    pub fn new(limits: Limits) -> Self {
        BlobCodec { limits }
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a blob response (see the [module docs](self)).
pub async fn read_blob_response<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limits: &Limits,
) -> io::Result<BlobResponse> {
    let mut tag = [0u8; 1];
    io.read_exact(&mut tag).await?;
    match tag[0] {
        DATA_FRAME => {
            let mut len = [0u8; 4];
            io.read_exact(&mut len).await?;
            let n = u32::from_be_bytes(len) as usize;
            if n as u64 > SEGMENT_BYTES {
                return Err(invalid(format!(
                    "blob data of {n} bytes, more than one segment ({SEGMENT_BYTES})"
                )));
            }
            // Every byte is overwritten (or the buffer dropped): a pooled one will do.
            let mut bytes = crate::bufpool::SEGMENTS.take(n);
            io.read_exact(&mut bytes).await?;
            let mut extra = [0u8; 1];
            if io.read(&mut extra).await? != 0 {
                return Err(invalid("bytes after the blob data"));
            }
            Ok(BlobResponse {
                version: BLOBS_VERSION,
                answer: BlobAnswer::Data { bytes },
            })
        }
        CBOR_FRAME => {
            let bytes = read_capped(io, BlobResponse::max_bytes(limits)).await?;
            decode(&bytes, limits)
        }
        t => Err(invalid(format!("unknown blob response frame {t}"))),
    }
}

/// Writes a blob response (see the [module docs](self)); data is written as it is, no copy.
pub async fn write_blob_response<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    res: &BlobResponse,
) -> io::Result<()> {
    match &res.answer {
        BlobAnswer::Data { bytes } => {
            let n = u32::try_from(bytes.len())
                .ok()
                .filter(|n| u64::from(*n) <= SEGMENT_BYTES)
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "blob data over one segment")
                })?;
            let mut head = [0u8; 5];
            head[0] = DATA_FRAME;
            head[1..].copy_from_slice(&n.to_be_bytes());
            io.write_all(&head).await?;
            io.write_all(bytes).await?;
            io.close().await
        }
        _ => {
            let mut bytes = vec![CBOR_FRAME];
            bytes.extend(
                res.encode()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            );
            io.write_all(&bytes).await?;
            io.close().await
        }
    }
}

impl libp2p::request_response::Codec for BlobCodec {
    type Protocol = StreamProtocol;
    type Request = BlobRequest;
    type Response = BlobResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_capped(io, BlobRequest::max_bytes(&self.limits)).await?;
        decode(&bytes, &self.limits)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlobResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_blob_response(io, &self.limits).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: BlobRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: BlobResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let r = write_blob_response(io, &res).await;
        if let BlobAnswer::Data { bytes } = res.answer {
            crate::bufpool::SEGMENTS.give(bytes);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::Hash;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn round_trip(res: &BlobResponse) -> Vec<u8> {
        let mut wire = futures::io::Cursor::new(Vec::new());
        rt().block_on(write_blob_response(&mut wire, res)).unwrap();
        wire.into_inner()
    }

    fn read(bytes: &[u8]) -> io::Result<BlobResponse> {
        rt().block_on(read_blob_response(
            &mut futures::io::Cursor::new(bytes.to_vec()),
            &Limits::default(),
        ))
    }

    #[test]
    fn data_travels_raw_and_everything_else_as_cbor() {
        let data = BlobResponse {
            version: BLOBS_VERSION,
            answer: BlobAnswer::Data {
                bytes: vec![0xab; 1000],
            },
        };
        let wire = round_trip(&data);
        assert_eq!(&wire[..5], &[DATA_FRAME, 0, 0, 0x03, 0xe8]);
        assert_eq!(wire.len(), 1005);
        assert_eq!(read(&wire).unwrap(), data);
        for answer in [
            BlobAnswer::NotFound,
            BlobAnswer::Have {
                size: 5,
                keeps: true,
                proof: Hash::new(b"p"),
            },
            BlobAnswer::Refused {
                reason: "busy".into(),
            },
            BlobAnswer::Outboard {
                size: 3,
                segments: vec![Hash::new(b"abc")],
            },
        ] {
            let r = BlobResponse {
                version: BLOBS_VERSION,
                answer,
            };
            let wire = round_trip(&r);
            assert_eq!(wire[0], CBOR_FRAME);
            assert_eq!(read(&wire).unwrap(), r);
        }
    }

    #[test]
    fn hostile_frames_are_refused_before_allocating() {
        // A length over one segment: refused from the 5-byte header alone.
        let mut wire = vec![DATA_FRAME];
        wire.extend_from_slice(&((SEGMENT_BYTES as u32) + 1).to_be_bytes());
        let e = read(&wire).unwrap_err();
        assert!(e.to_string().contains("more than one segment"), "{e}");
        // Fewer bytes than announced, trailing bytes, an unknown tag, an empty stream.
        let mut short = vec![DATA_FRAME, 0, 0, 0, 10];
        short.extend_from_slice(&[1; 9]);
        assert!(read(&short).is_err());
        let mut long = vec![DATA_FRAME, 0, 0, 0, 2, 1, 2, 3];
        assert!(read(&long).unwrap_err().to_string().contains("after"));
        long[0] = 7;
        assert!(read(&long).unwrap_err().to_string().contains("frame 7"));
        assert!(read(&[]).is_err());
        // A CBOR frame over the message cap.
        let mut big = vec![CBOR_FRAME];
        big.resize(pacmesh_protocol::MAX_BLOB_MESSAGE_BYTES + 10, 0);
        assert!(read(&big).unwrap_err().to_string().contains("longer than"));
    }
}
