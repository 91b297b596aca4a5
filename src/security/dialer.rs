//! The connector that dials a server for hyper-util's HTTP client over TCP, or TLS verified
//! against a [`ClientTls`] when the URL is `https`: what the Consul backend and the `meshage`
//! command's client use.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::ReadBufCursor;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::trust::{ClientTls, MaybeTls};

/// Dials a server for hyper-util's HTTP client: TCP, then TLS (verified against `tls`, the name
/// against the host dialed) when the URL is `https`.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) tls: Option<ClientTls>,
    pub(crate) connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Dialer {
    type Response = Dialed;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Dialed>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Dialer {
            tls,
            connect_timeout,
        } = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let dial = async {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                let _ = tcp.set_nodelay(true);
                match (https, &tls) {
                    (true, Some(tls)) => {
                        Ok(MaybeTls::Tls(Box::new(tls.connect(&host, tcp).await?)))
                    }
                    (true, None) => Err(io::Error::other("https without TLS settings")),
                    (false, _) => Ok(MaybeTls::Plain(tcp)),
                }
            };
            let stream = tokio::time::timeout(connect_timeout, dial)
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {connect_timeout:?}"),
                    )
                })??;
            Ok(Dialed(TokioIo::new(stream)))
        })
    }
}

/// A connection to the server, as the HTTP client takes it.
pub(crate) struct Dialed(TokioIo<MaybeTls>);

impl Connection for Dialed {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
