//! Yamux for pacmesh's TCP connections, with data frames of one noise frame instead of 16 KiB.
//!
//! `libp2p::yamux::Config` wraps `yamux::Config` and exposes only the stream count, so the
//! frame size a sender splits its writes into stays at yamux's default of 16 KiB. Each frame
//! is then flushed through noise on its own (yamux flushes after every frame it sends), which
//! makes every 16 KiB of a blob segment its own noise frame, its own ChaCha20-Poly1305 call
//! set-up and its own `send`/`recv` pair on both sides. This module is the same thin adapter as
//! `libp2p-yamux` 0.48 (MIT; `Muxer` and `Stream` below follow it), over the same `yamux`
//! crate, with [`SPLIT_SEND_SIZE`] set so that one data frame fills one noise frame.
//!
//! Only the sending side changes: the wire protocol is `/yamux/1.0.0` as before, and any yamux
//! peer accepts frames of up to 1 MiB (its flow-control window still bounds what it buffers).
//! Measured together with [`crate::bufpool`] in alternating A/B runs (docs/benchmarks.md,
//! "Session 7"): about 6 % less CPU per GiB at the provider and 5 % more throughput from one
//! provider; the fetcher's CPU within the noise.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use futures::{AsyncRead, AsyncWrite, future};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// Largest noise payload (65535 bytes less the 16-byte tag) less the 12-byte yamux header: a
/// data frame of this size is exactly one noise frame.
pub const SPLIT_SEND_SIZE: usize = 65535 - 16 - 12;

/// Inbound streams buffered while the swarm is not asking for them (as in `libp2p-yamux`:
/// yamux's ACK backlog, so a well-behaved peer never reaches it); more are reset.
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// The yamux upgrade (`/yamux/1.0.0`) with pacmesh's frame size.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Default for Config {
    fn default() -> Self {
        let mut c = yamux::Config::default();
        c.set_split_send_size(SPLIT_SEND_SIZE);
        Config(c)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            io,
            self.0,
            yamux::Mode::Server,
        ))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(yamux::Connection::new(
            io,
            self.0,
            yamux::Mode::Client,
        ))))
    }
}

/// A yamux connection.
pub struct Muxer<C> {
    connection: yamux::Connection<C>,
    /// Inbound streams that arrived while [`StreamMuxer::poll`] drove the connection.
    inbound: VecDeque<Stream>,
    /// Who to wake when one arrives.
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(connection: yamux::Connection<C>) -> Self {
        Muxer {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        let stream = ready!(self.connection.poll_next_inbound(cx))
            .ok_or(Error(yamux::ConnectionError::Closed))?
            .map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = Stream;
    type Error = Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(r) = self.poll_inner(cx) {
            return Poll::Ready(r);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let stream = ready!(self.connection.poll_new_outbound(cx)).map_err(Error)?;
        Poll::Ready(Ok(Stream(stream)))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx).map_err(Error)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_inner(cx))?;
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!(stream = %stream.0, "dropping an inbound stream: buffer full");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(w) = this.inbound_waker.take() {
                w.wake();
            }
        }
        // Let other code run, then come back to drive the connection.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// A yamux stream.
#[derive(Debug)]
pub struct Stream(yamux::Stream);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read_vectored(cx, bufs)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

/// A yamux connection error.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Error(yamux::ConnectionError);

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        match e.0 {
            yamux::ConnectionError::Io(e) => e,
            e => io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncWriteExt, future::poll_fn};
    use tokio::io::AsyncReadExt;
    use tokio_util::compat::TokioAsyncReadCompatExt;

    /// Writes `n` bytes on one outbound stream of a yamux connection upgraded with `up` over
    /// TCP, and returns the body lengths of the data frames the other end received (parsed from
    /// the raw bytes: 12-byte headers, type 0 = data).
    async fn data_frames<U>(up: U, n: usize) -> Vec<usize>
    where
        U: OutboundConnectionUpgrade<
                tokio_util::compat::Compat<tokio::net::TcpStream>,
                Info = &'static str,
                Error = io::Error,
            >,
        U::Output: StreamMuxer + Unpin + Send + 'static,
        <U::Output as StreamMuxer>::Substream: AsyncWrite + Unpin,
        <U::Output as StreamMuxer>::Error: std::fmt::Debug,
    {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let mut muxer = up
            .upgrade_outbound(client.compat(), "/yamux/1.0.0")
            .await
            .unwrap();
        let mut stream = poll_fn(|cx| Pin::new(&mut muxer).poll_outbound(cx))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            while poll_fn(|cx| Pin::new(&mut muxer).poll(cx)).await.is_ok() {}
        });
        // Within the initial 256 KiB window: the peer need not answer.
        stream.write_all(&vec![7u8; n]).await.unwrap();
        stream.flush().await.unwrap();
        let (mut frames, mut got) = (Vec::new(), 0);
        while got < n {
            let mut h = [0u8; 12];
            server.read_exact(&mut h).await.unwrap();
            let len = u32::from_be_bytes(h[8..12].try_into().unwrap()) as usize;
            if h[1] == 0 {
                let mut body = vec![0u8; len];
                server.read_exact(&mut body).await.unwrap();
                assert!(body.iter().all(|b| *b == 7));
                frames.push(len);
                got += len;
            }
        }
        driver.abort();
        frames
    }

    #[tokio::test]
    async fn a_data_frame_fills_a_noise_frame() {
        let n = 3 * SPLIT_SEND_SIZE + 100;
        let ours = data_frames(Config::default(), n).await;
        assert_eq!(
            ours,
            vec![SPLIT_SEND_SIZE, SPLIT_SEND_SIZE, SPLIT_SEND_SIZE, 100]
        );
        // What libp2p's own yamux config sends, for comparison: 16 KiB frames.
        let theirs = data_frames(libp2p::yamux::Config::default(), n).await;
        assert_eq!(theirs.iter().max(), Some(&(16 * 1024)));
        assert!(theirs.len() > 3 * ours.len());
        // One data frame and its header are one noise frame's payload.
        assert_eq!(SPLIT_SEND_SIZE + 12 + 16, usize::from(u16::MAX));
    }
}
