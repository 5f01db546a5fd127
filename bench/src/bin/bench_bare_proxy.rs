//! The floor of apgate's stack, for `scripts/bench`: a reverse proxy with nothing of apgate's in it
//! (no authentication, decision, signing, access log, metrics, timeouts or limits), built the way
//! apgate's data plane is: one single-threaded event loop per core, each accepting on its own
//! `SO_REUSEPORT` socket, hyper 1's HTTP/1 server for clients and its connection API with a
//! per-thread pool of kept-alive connections for the upstream.
//!
//! `bench_bare_proxy LISTEN UPSTREAM [THREADS]` forwards every request to UPSTREAM (`IP:PORT`) as
//! it came (origin-form target, headers and body untouched) and streams the answer back. What
//! apgate costs per request above this figure is apgate's own work; what this costs above nginx is
//! the stack's.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Kept-alive upstream connections of one thread, ready for a request.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench_bare_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN is IP:PORT");
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is IP:PORT");
    let threads = args
        .get(3)
        .map(|t| t.parse().expect("THREADS is a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let shards: Vec<_> = (0..threads)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("bare-{i}"))
                .spawn(move || shard(listen, upstream))
                .expect("a thread")
        })
        .collect();
    for s in shards {
        s.join().expect("a shard ran");
    }
}

/// One event loop: accept, serve, forward through this thread's pool.
fn shard(listen: SocketAddr, upstream: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.set_reuseport(true).expect("SO_REUSEPORT");
        socket.bind(listen).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let pool: Pool = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |req| forward(req, pool.clone(), upstream));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn forward(req: Request<Incoming>, pool: Pool, upstream: SocketAddr) -> Result<Response<Pooled>, BoxError> {
    let mut sender = loop {
        let pooled = pool.borrow_mut().pop();
        match pooled {
            // Its last answer's body has ended; the connection is ready at once, unless it closed.
            Some(mut s) => match s.ready().await {
                Ok(()) => break s,
                Err(_) => continue,
            },
            None => break connect(upstream).await?,
        }
    };
    let answer = sender.send_request(req).await?;
    let (parts, body) = answer.into_parts();
    let mut body = Pooled {
        body,
        sender: Some(sender),
        pool,
    };
    body.give_back_if_done();
    Ok(Response::from_parts(parts, body))
}

async fn connect(upstream: SocketAddr) -> Result<SendRequest<Incoming>, BoxError> {
    let tcp = TcpStream::connect(upstream).await?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::task::spawn_local(conn);
    Ok(sender)
}

/// The upstream's answer body; its connection goes back to the pool once the body has ended.
struct Pooled {
    body: Incoming,
    sender: Option<SendRequest<Incoming>>,
    pool: Pool,
}

impl Pooled {
    fn give_back_if_done(&mut self) {
        if self.body.is_end_stream() {
            if let Some(sender) = self.sender.take() {
                self.pool.borrow_mut().push(sender);
            }
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(frame, Poll::Ready(None | Some(Ok(_)))) {
            this.give_back_if_done();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
