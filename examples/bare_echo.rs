//! Run with: cargo run --release --example bare_echo -- 127.0.0.1:8090
//!
//! The benchmark's baseline: the same JSON echo as `meshage node --echo`, on the same HTTP stack
//! (hyper 1, HTTP/1.1 keep-alive, tokio), with no mesh. Any POST answers `{"echoed": <body>}`.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, out) = match serde_json::from_slice::<Value>(&body) {
        Ok(data) => (StatusCode::OK, json!({ "echoed": data })),
        Err(e) => (StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
    };
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&out).unwrap_or_default(),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare echo on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(echo))
                .await;
        });
    }
}
