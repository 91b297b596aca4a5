//! Run with: cargo run --release --example min_proxy -- LISTEN UPSTREAM
//! (say `127.0.0.1:8091 127.0.0.1:8090`, with `bare_echo` on 8090)
//!
//! The least work one forwarding hop can do, for `benches/hop_bound.sh`: what a request that
//! crosses a second process costs on this machine, whatever the forwarder. Each client
//! connection gets a thread of its own and a keep-alive connection of its own to UPSTREAM, with
//! blocking I/O: a request is read (its head up to the blank line, then `Content-Length` bytes),
//! written to the upstream as it came, the answer read the same way and written back. No event
//! loop, no parsing beyond the two lengths, no routing, no copies but the kernel's: two reads
//! and two writes per request, and each hop wakes exactly one sleeping thread.
//!
//! Not a server for anything else: it trusts its client and its upstream (HTTP/1.1 keep-alive,
//! bodies with `Content-Length`) and drops the connection on anything it does not expect.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};

/// Reads one HTTP/1.1 message (head and `Content-Length` body) into `buf` from `stream`, where
/// `buf` may already hold the start of it; returns the message's length. Bytes after it (a
/// pipelined next message) stay in `buf`.
fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head_len = head + 4;
            let length = content_length(&buf[..head_len])
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Content-Length"))?;
            let total = head_len + length;
            while buf.len() < total {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(total);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn serve(mut client: TcpStream, upstream: &str) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut from_client, mut from_server) = (Vec::new(), Vec::new());
    loop {
        let n = read_message(&mut client, &mut from_client)?;
        server.write_all(&from_client[..n])?;
        from_client.drain(..n);
        let n = read_message(&mut server, &mut from_server)?;
        client.write_all(&from_server[..n])?;
        from_server.drain(..n);
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (listen, upstream) = match (args.next(), args.next()) {
        (Some(l), Some(u)) => (l, u),
        _ => {
            eprintln!("usage: min_proxy LISTEN UPSTREAM");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(&listen)?;
    println!("min proxy on {} -> {upstream}", listener.local_addr()?);
    for client in listener.incoming() {
        let (client, upstream) = (client?, upstream.clone());
        std::thread::spawn(move || serve(client, &upstream));
    }
    Ok(())
}
