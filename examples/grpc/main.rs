//! gRPC with tonic, served through risefront by `GracefulServer`.
//!
//! ```text
//! grpc [ADDR]...              serve (default 127.0.0.1:8080); the first run becomes the front
//! grpc --upgrade [ADDR]...    ask the running front to start a new generation
//! ```
//!
//! gRPC over HTTP/2 without TLS (h2c), the service in `hello.proto`:
//! - `risefront.hello.Greeter/SayHello` answers `hello from generation <N> pid <PID>`;
//! - `risefront.hello.Greeter/Ticks` streams a numbered tick every `interval_ms` until the
//!   generation drains, then ends with `UNAVAILABLE`: a client calls again with `from` set to
//!   the next number and resumes on the generation that took over;
//! - `grpc.health.v1.Health` (tonic-health), which Kubernetes and load balancers probe:
//!   `SERVING`, also from a generation draining during an upgrade (the service goes on, and a
//!   load balancer must not mark the host down at every deploy), and `NOT_SERVING` from the
//!   moment the service is told to stop ([`risefront::stopping`]), through its stop delay.
//!
//! The same port answers plain HTTP as the `hello` example does (`GET /`, `GET /slow?ms=N`):
//! tonic's routes are an axum router, merged with the app's.
//!
//! Why `GracefulServer` and not tonic's `serve_with_incoming_shutdown`: at a takeover it lets
//! the idle grace pass before telling HTTP/2 clients to go away (GOAWAY), so that a call already
//! on the wire is answered, and it bounds the drain; tonic's server would need a wrapper type
//! for risefront's connections (its `Connected` trait) and gives neither.

#[path = "../support/mod.rs"]
mod support;

mod proto;

use std::process::ExitCode;
use std::time::Duration;

use axum::extract::RawQuery;
use axum::{Router, routing::get};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

use proto::{Greeter, GreeterServer, HelloReply, HelloRequest, Tick, TickStream, TicksRequest};

#[tokio::main]
async fn main() -> ExitCode {
    match support::command_line().await {
        Ok(addrs) => support::exit(serve(&addrs).await),
        Err(code) => code,
    }
}

async fn serve(addrs: &[String]) -> std::io::Result<()> {
    let listener = risefront::bind(addrs).await?;
    support::failure_hook();

    let greeter = Hello {
        generation: listener.generation(),
        message: support::greeting(&listener).trim_end().to_owned(),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GreeterServer<Hello>>().await;
    tokio::spawn(async move {
        risefront::stopping().await;
        health.set_not_serving::<GreeterServer<Hello>>().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
    });
    let grpc = tonic::service::Routes::new(GreeterServer::new(greeter))
        .add_service(health_service)
        .into_axum_router();

    let body = support::greeting(&listener);
    let slow_body = body.clone();
    let app = Router::new()
        .route("/", get(move || async move { body }))
        .route(
            "/slow",
            get(move |RawQuery(query): RawQuery| async move {
                tokio::time::sleep(support::slow_delay(query.as_deref())).await;
                slow_body
            }),
        )
        .merge(grpc);

    // Returns once drained; the summary is logged by risefront.
    risefront::GracefulServer::new().serve(listener, app).await;
    Ok(())
}

struct Hello {
    generation: u64,
    message: String,
}

impl Greeter for Hello {
    async fn say_hello(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: self.message.clone(),
            generation: self.generation,
            pid: std::process::id(),
        }))
    }

    async fn ticks(&self, request: Request<TicksRequest>) -> Result<Response<TickStream>, Status> {
        let TicksRequest { interval_ms, from } = request.into_inner();
        let interval = Duration::from_millis(u64::from(interval_ms.clamp(1, 60_000)));
        let generation = self.generation;
        struct State {
            next: u64,
            draining: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
            done: bool,
        }
        let start = State {
            next: from,
            // Fires at once if this generation is already draining: the caller is sent on.
            draining: Box::pin(risefront::draining()),
            done: false,
        };
        let ticks = futures_util::stream::unfold(start, move |mut state| async move {
            if state.done {
                return None;
            }
            tokio::select! {
                () = &mut state.draining => {
                    state.done = true;
                    let resume = Status::unavailable(format!(
                        "generation {generation} is draining: call again with from={} to resume",
                        state.next
                    ));
                    Some((Err(resume), state))
                }
                () = tokio::time::sleep(interval) => {
                    let tick = Tick { n: state.next, generation };
                    state.next += 1;
                    Some((Ok(tick), state))
                }
            }
        });
        Ok(Response::new(Box::pin(ticks)))
    }
}
