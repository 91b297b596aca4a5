//! The connection a link runs over, split into a reading and a writing half for its two tasks:
//! a TCP stream splits with no lock between them; a TLS stream shares its session between
//! the halves (encrypting and decrypting take turns on it).

use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A connection that splits into halves that move to tasks of their own.
pub(crate) trait Duplex: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Reader: AsyncRead + Unpin + Send + 'static;
    type Writer: AsyncWrite + Unpin + Send + 'static;
    fn halves(self) -> (Self::Reader, Self::Writer);
}

impl Duplex for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;
    fn halves(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Duplex
    for tokio_rustls::server::TlsStream<S>
{
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;
    fn halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Duplex
    for tokio_rustls::client::TlsStream<S>
{
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;
    fn halves(self) -> (Self::Reader, Self::Writer) {
        tokio::io::split(self)
    }
}
