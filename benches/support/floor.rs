//! The floor of the benchmarks: a bare tonic server (no attestation, no policy, no inventory)
//! streaming the same bytes the agent sends, so the agent's cost can be quoted as a ratio; and, for
//! a rotation's fan-out, sending that message again on every open stream when told to.

use std::pin::Pin;

use lanyard::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use lanyard::proto::*;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Serves `x509` (and `jwt`, when given) on `listener` until the process ends. Each change sent on
/// the sender of `pushes` sends `x509` again on every open FetchX509SVID stream (the floor of a
/// rotation's fan-out: one wake-up each, no attestation, no inventory record).
pub(crate) async fn serve(
    listener: tokio::net::UnixListener,
    x509: X509svidResponse,
    jwt: Option<JwtsvidResponse>,
    pushes: tokio::sync::watch::Receiver<u64>,
) {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(SpiffeWorkloadApiServer::new(Bare(x509, jwt, pushes)))
        .serve_with_incoming(incoming)
        .await
        .unwrap();
}

/// The floor: a bare tonic server answering with precomputed messages.
struct Bare(
    X509svidResponse,
    Option<JwtsvidResponse>,
    tokio::sync::watch::Receiver<u64>,
);

type BoxStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

#[tonic::async_trait]
impl SpiffeWorkloadApi for Bare {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = BoxStream<WitsvidResponse>;
    type FetchWITBundlesStream = BoxStream<WitBundlesResponse>;
    async fn fetch_x509svid(
        &self,
        _: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let msg = self.0.clone();
        // Like a real stream: first message, then the same again on each push, and stay open
        // (also once no more pushes can come).
        let again = msg.clone();
        let pushed = tokio_stream::wrappers::WatchStream::from_changes(self.2.clone())
            .map(move |_| Ok(again.clone()));
        let s = tokio_stream::once(Ok(msg))
            .chain(pushed)
            .chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(s)))
    }
    async fn fetch_x509_bundles(
        &self,
        _: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn fetch_jwtsvid(
        &self,
        _: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        match &self.1 {
            Some(m) => Ok(Response::new(m.clone())),
            None => Err(Status::unimplemented("")),
        }
    }
    async fn fetch_jwt_bundles(
        &self,
        _: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn validate_jwtsvid(
        &self,
        _: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn fetch_witsvid(
        &self,
        _: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented(""))
    }
    async fn fetch_wit_bundles(
        &self,
        _: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented(""))
    }
}
