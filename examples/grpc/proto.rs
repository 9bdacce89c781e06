//! What tonic-build generates for `hello.proto` (messages, server, client), written out by hand
//! and trimmed, so that the example builds with a plain `cargo build --example grpc`: no
//! protoc, no build script. A real service would `tonic::include_proto!` the generated file.
//! The end-to-end tests use the client half (`tests/grpc.rs`).

#![allow(dead_code)] // The example uses the server half, the tests the client half.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::http;
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TicksRequest {
    #[prost(uint32, tag = "1")]
    pub interval_ms: u32,
    #[prost(uint64, tag = "2")]
    pub from: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tick {
    #[prost(uint64, tag = "1")]
    pub n: u64,
    #[prost(uint64, tag = "2")]
    pub generation: u64,
}

const SAY_HELLO: &str = "/risefront.hello.Greeter/SayHello";
const TICKS: &str = "/risefront.hello.Greeter/Ticks";

/// The stream `Ticks` answers with.
pub type TickStream = Pin<Box<dyn futures_util::Stream<Item = Result<Tick, Status>> + Send>>;

/// The service, as the app implements it.
pub trait Greeter: Send + Sync + 'static {
    fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;

    fn ticks(
        &self,
        request: Request<TicksRequest>,
    ) -> impl Future<Output = Result<Response<TickStream>, Status>> + Send;
}

/// The tower service that routes `risefront.hello.Greeter`'s methods to a [`Greeter`].
pub struct GreeterServer<T> {
    inner: Arc<T>,
}

impl<T> GreeterServer<T> {
    pub fn new(inner: T) -> Self {
        GreeterServer {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for GreeterServer<T> {
    fn clone(&self) -> Self {
        GreeterServer {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> NamedService for GreeterServer<T> {
    const NAME: &'static str = "risefront.hello.Greeter";
}

struct SayHelloMethod<T>(Arc<T>);

impl<T: Greeter> tonic::server::UnaryService<HelloRequest> for SayHelloMethod<T> {
    type Response = HelloReply;
    type Future = BoxFuture<Response<HelloReply>, Status>;

    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.say_hello(request).await })
    }
}

struct TicksMethod<T>(Arc<T>);

impl<T: Greeter> tonic::server::ServerStreamingService<TicksRequest> for TicksMethod<T> {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = BoxFuture<Response<TickStream>, Status>;

    fn call(&mut self, request: Request<TicksRequest>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        Box::pin(async move { inner.ticks(request).await })
    }
}

impl<T, B> tower::Service<http::Request<B>> for GreeterServer<T>
where
    T: Greeter,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        match request.uri().path() {
            SAY_HELLO => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.unary(SayHelloMethod(inner), request).await)
            }),
            TICKS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
                Ok(grpc.server_streaming(TicksMethod(inner), request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// A client of `risefront.hello.Greeter` over any tonic transport (a `Channel`, say).
#[derive(Clone)]
pub struct GreeterClient<C> {
    grpc: tonic::client::Grpc<C>,
}

impl<C> GreeterClient<C>
where
    C: tonic::client::GrpcService<tonic::body::Body>,
    C::Error: Into<StdError>,
    C::ResponseBody: Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <C::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    pub fn new(transport: C) -> Self {
        GreeterClient {
            grpc: tonic::client::Grpc::new(transport),
        }
    }

    pub async fn say_hello(&mut self, request: HelloRequest) -> Result<HelloReply, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(SAY_HELLO);
        let response = self
            .grpc
            .unary(Request::new(request), path, ProstCodec::default())
            .await?;
        Ok(response.into_inner())
    }

    pub async fn ticks(&mut self, request: TicksRequest) -> Result<tonic::Streaming<Tick>, Status> {
        self.ready().await?;
        let path = http::uri::PathAndQuery::from_static(TICKS);
        let response = self
            .grpc
            .server_streaming(Request::new(request), path, ProstCodec::default())
            .await?;
        Ok(response.into_inner())
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("not ready: {}", e.into())))
    }
}
