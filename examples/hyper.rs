//! A plain hyper `service_fn`, served by `risefront::GracefulServer`: HTTP/1 and HTTP/2 on one
//! port, draining wired to the takeover, no shutdown code here.
//!
//! Same command line and answers as the `hello` example; also `GET /peer` (the client's
//! address, from the request's extensions) and `GET /big?kb=<n>` (`n` KiB of `x`).

mod support;

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

#[tokio::main]
async fn main() -> ExitCode {
    match support::command_line().await {
        Ok(addrs) => support::exit(serve(&addrs).await),
        Err(code) => code,
    }
}

async fn serve(addrs: &[String]) -> std::io::Result<()> {
    // `risefront::bind(addrs)`, plus a readiness hook for the tests.
    let listener = support::bind(addrs).await?;
    support::failure_hook();

    let body: Arc<str> = support::greeting(&listener).into();
    let service = hyper::service::service_fn(move |request| handle(request, Arc::clone(&body)));
    // Returns once drained; the summary is logged by risefront.
    risefront::GracefulServer::new()
        .serve_hyper(listener, service)
        .await;
    Ok(())
}

async fn handle(
    request: Request<Incoming>,
    body: Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let ok = || Response::new(Full::new(Bytes::from(body.to_string())));
    Ok(match request.uri().path() {
        "/" => ok(),
        "/slow" => {
            tokio::time::sleep(support::slow_delay(request.uri().query())).await;
            ok()
        }
        "/peer" => match request.extensions().get::<risefront::Addr>() {
            Some(client) => Response::new(Full::new(Bytes::from(format!("{client}\n")))),
            None => {
                let mut response = Response::new(Full::new(Bytes::from_static(b"no address\n")));
                *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                response
            }
        },
        "/big" => {
            let kb: usize = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("kb="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1)
                .min(64 * 1024);
            Response::new(Full::new(Bytes::from(vec![b'x'; kb * 1024])))
        }
        _ => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    })
}
