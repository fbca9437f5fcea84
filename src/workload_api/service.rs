//! The `SpiffeWorkloadAPI` service: header check, caller attestation, then a stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::listener::PeerInfo;
use super::status::to_status;
use super::stream::{Attested, Following, Watcher, render_bundles, render_svids};
use super::{Context, Error, header};
use crate::proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use crate::proto::*;

pub(super) type BoxStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send + 'static>>;

/// The Workload API service.
#[derive(Clone)]
pub(crate) struct WorkloadApi {
    /// Shared with every stream's watcher: a stream holds one reference, not a copy of each part
    /// (a copy was about twenty reference counts taken and given back per stream).
    ctx: Arc<Context>,
}

/// The service wrapped in the EP-2 header check, ready to add to a tonic server.
pub(crate) type Server = InterceptedService<
    SpiffeWorkloadApiServer<WorkloadApi>,
    fn(Request<()>) -> Result<Request<()>, Status>,
>;

impl WorkloadApi {
    /// A service over `ctx`.
    pub(crate) fn new(ctx: Context) -> Self {
        Self { ctx: Arc::new(ctx) }
    }

    /// The service behind the security-header check (which runs first on every RPC).
    pub(crate) fn into_server(self) -> Server {
        SpiffeWorkloadApiServer::with_interceptor(
            self,
            header::check as fn(Request<()>) -> Result<Request<()>, Status>,
        )
    }

    /// Pins and attests the caller of `req` (counted by outcome).
    async fn attest<T>(&self, req: &Request<T>) -> Result<Attested, Error> {
        let result = self.attest_caller(req).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::Limit(_)) => "over_limit",
            Err(Error::NoPeer(_)) => "no_peer",
            Err(Error::Attestation { source, .. }) => match source {
                crate::attest::Error::Exited { .. } => "exited",
                crate::attest::Error::Changed { .. } => "changed",
                crate::attest::Error::Kubernetes { .. } => "kubernetes",
                _ => "error",
            },
            Err(_) => "error",
        };
        crate::metrics::metrics().attestation(outcome);
        result
    }

    /// Pins and attests the caller of `req` on the blocking pool.
    async fn attest_caller<T>(&self, req: &Request<T>) -> Result<Attested, Error> {
        let peer = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Error::NoPeer("the connection carries no peer information".into()))?;
        if let Some(refusal) = &peer.refused {
            return Err(Error::Limit((**refusal).clone()));
        }
        let peer = peer.caller.clone();
        let pid = match &*peer {
            Ok(caller) => caller.cred.pid,
            Err(why) => return Err(Error::NoPeer(why.clone())),
        };
        let attestors = self.ctx.attestors.clone();
        // Cached facts are read inline; anything that may block goes to the blocking pool.
        if let Ok(caller) = &*peer {
            match crate::attest::attest_fast(caller, &attestors) {
                Ok(Some((pinned, selectors))) => return Ok(Attested::new(pinned, selectors)),
                Ok(None) => {}
                Err(source) => return Err(Error::Attestation { pid, source }),
            }
        }
        let caller = match &*peer {
            Ok(caller) => caller,
            Err(why) => return Err(Error::NoPeer(why.clone())),
        };
        let pinned = crate::attest::PinnedProcess::pin(caller)
            .map_err(|source| Error::Attestation { pid, source })?;
        // Network waits (the kubelet) are awaited here, not on a blocking thread.
        crate::attest::prefetch(&pinned, &attestors)
            .await
            .map_err(|source| Error::Attestation { pid, source })?;
        let result = tokio::task::spawn_blocking(move || {
            crate::attest::reattest_blocking(&pinned, &attestors).map(|s| (pinned, s))
        })
        .await
        .map_err(|e| Error::Attestation {
            pid,
            source: crate::attest::Error::Task(e.to_string()),
        })?;
        let (pinned, selectors) = result.map_err(|source| Error::Attestation { pid, source })?;
        tracing::debug!(pid, %selectors, "caller attested");
        Ok(Attested::new(pinned, selectors))
    }

    /// Opens a stream rendering messages with `render`.
    async fn open_stream<M, T>(
        &self,
        req: &Request<T>,
        render: super::stream::Render<M>,
        with_svids: bool,
    ) -> Result<Response<BoxStream<M>>, Status>
    where
        M: Clone + PartialEq + Send + 'static,
    {
        let act = with_svids.then_some(super::gate::Act::X509);
        let watch = self.open_watch(req, render, with_svids, act).await?;
        Ok(Response::new(Box::pin(watch)))
    }

    /// Attests the caller of `req` and starts watching what it is entitled to: the returned stream
    /// yields the first message at once, then one per change, and an error status when the stream
    /// must end. Limits, the inventory record before delivery and the cut-off on exec apply as for
    /// every stream.
    pub(super) async fn open_watch<M, T>(
        &self,
        req: &Request<T>,
        render: super::stream::Render<M>,
        with_svids: bool,
        act: Option<super::gate::Act>,
    ) -> Result<Watch<M>, Status>
    where
        M: Clone + PartialEq + Send + 'static,
    {
        if *self.ctx.shutdown.borrow() {
            return Err(to_status(&Error::ShuttingDown));
        }
        // Exec events for the caller are collected from before it is attested: an exec right after
        // the attestation wakes the stream at once (it is re-attested and cut off) instead of
        // waiting for the next push.
        let exec = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.caller.as_ref().as_ref().ok())
            .map(|caller| self.ctx.exec.register(caller.cred.pid));
        let attested = self.attest(req).await.map_err(|e| to_status(&e))?;
        // The agent-wide cap first (EP-5: Unavailable), then the caller's own share.
        let permit = self
            .ctx
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| to_status(&Error::Overloaded))?;
        let share = self
            .ctx
            .shares
            .stream(attested.share_uid())
            .map_err(|r| to_status(&Error::Limit(r)))?;
        let permit = (permit, share);
        let (watcher, first) = Watcher::open(self.ctx.clone(), attested, render, with_svids, act)
            .await
            .map_err(|e| to_status(&e))?;
        Ok(Watch {
            first: Some(first),
            step: None,
            following: Some(Box::new(watcher.follow(permit, exec))),
        })
    }
}

/// One call of [`Following::next`], holding the stream's state until it completes.
type Step<M> = Pin<Box<dyn Future<Output = (Box<Following<M>>, Option<Result<M, Status>>)> + Send>>;

/// An open stream: the watcher runs inside whatever polls the stream (the response body's task),
/// so a stream costs no task or channel of its own, and dropping the stream (the caller cancelled
/// or went away) drops the watcher with it.
pub(super) struct Watch<M> {
    /// The first message, made when the stream was opened.
    first: Option<M>,
    /// The call making the next message, while one is under way.
    step: Option<Step<M>>,
    /// The stream's state between calls; `None` once it has ended.
    following: Option<Box<Following<M>>>,
}

// Nothing in it is pinned in place (the step is boxed).
impl<M> Unpin for Watch<M> {}

impl<M: Clone + PartialEq + Send + 'static> Stream for Watch<M> {
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        if self.step.is_none() {
            let Some(mut following) = self.following.take() else {
                return Poll::Ready(None);
            };
            self.step = Some(Box::pin(async move {
                let item = following.next().await;
                (following, item)
            }));
        }
        let Some(step) = self.step.as_mut() else {
            return Poll::Ready(None);
        };
        let (following, item) = std::task::ready!(step.as_mut().poll(cx));
        self.step = None;
        // After anything but a message the stream has ended: its permits go with it.
        if matches!(item, Some(Ok(_))) {
            self.following = Some(following);
        }
        Poll::Ready(item)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;
    type FetchWITSVIDStream = BoxStream<WitsvidResponse>;
    type FetchWITBundlesStream = BoxStream<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let start = std::time::Instant::now();
        let result = async move { self.open_stream(&request, render_svids, true).await }.await;
        observed("FetchX509SVID", start, result)
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let start = std::time::Instant::now();
        let result = async move { self.open_stream(&request, render_bundles, false).await }.await;
        observed("FetchX509Bundles", start, result)
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let start = std::time::Instant::now();
        let result = async move {
            let ask = super::jwt::check_request(request.get_ref()).map_err(|e| to_status(&e))?;
            let attested = self.attest(&request).await.map_err(|e| to_status(&e))?;
            let handed_on = request
                .metadata()
                .get(&*super::header::HANDED_ON_KEY)
                .is_some_and(|v| v == "true");
            let svids = super::jwt::fetch(&self.ctx, &attested, ask, handed_on)
                .await
                .map_err(|e| to_status(&e))?;
            Ok(Response::new(JwtsvidResponse { svids }))
        }
        .await;
        observed("FetchJWTSVID", start, result)
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let start = std::time::Instant::now();
        let result = async move {
            self.open_stream(&request, super::jwt::render_bundles, false)
                .await
        }
        .await;
        observed("FetchJWTBundles", start, result)
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let start = std::time::Instant::now();
        let result = async move {
            let req = request.get_ref();
            if req.audience.is_empty() || req.svid.is_empty() {
                return Err(to_status(&Error::InvalidArgument(
                    "audience and svid are both required (EP-6)".into(),
                )));
            }
            super::jwt::check_audiences(std::slice::from_ref(&req.audience))
                .map_err(|e| to_status(&e))?;
            if req.svid.len() > crate::limits::MAX_JWT_BYTES {
                return Err(to_status(&Error::InvalidArgument(format!(
                    "a JWT of {} bytes; JWT-SVIDs are at most {} bytes",
                    req.svid.len(),
                    crate::limits::MAX_JWT_BYTES
                ))));
            }
            let attested = self.attest(&request).await.map_err(|e| to_status(&e))?;
            let policy = self.ctx.policy.borrow().clone();
            let identities = crate::registry::match_identities(&attested.selectors, &policy);
            if identities.is_empty() {
                return Err(to_status(&Error::NoIdentity {
                    pid: attested.pinned.pid(),
                    selectors: attested.selectors,
                }));
            }
            // Policy: the caller validates for this audience under one of its identities.
            let mut refusal = None;
            let may_validate =
                identities.iter().any(|identity| {
                    match super::gate::permits_audiences(
                        &self.ctx,
                        &attested.selectors,
                        identity,
                        std::slice::from_ref(&req.audience),
                        super::gate::Act::Validate,
                    ) {
                        Ok(_) => true,
                        Err(why) => {
                            refusal.get_or_insert(why);
                            false
                        }
                    }
                });
            if !may_validate {
                return Err(to_status(&Error::PolicyDenied(refusal.unwrap_or_default())));
            }
            let bundles = super::jwt::validation_bundles(&self.ctx, &identities);
            let now = self.ctx.clock.now();
            let (spiffe_id, claims) =
                crate::ca::jwt::validate(&req.svid, &req.audience, &bundles, now).map_err(|e| {
                    tracing::debug!(reason = %e, "jwt-svid rejected");
                    to_status(&Error::InvalidJwt(e))
                })?;
            // Revocation at validation: a token whose last holder exited or lost its entitlement.
            if self.ctx.jwt_revocation
                && let Some(reason) = claims
                    .get("jti")
                    .and_then(|j| j.as_str())
                    .and_then(|jti| self.ctx.inventory.revoked_jwt(jti))
            {
                tracing::debug!(%spiffe_id, reason, "withdrawn jwt-svid rejected");
                return Err(to_status(&Error::InvalidJwt(
                    crate::ca::jwt::Invalid::Withdrawn(reason),
                )));
            }
            Ok(Response::new(ValidateJwtsvidResponse {
                spiffe_id: spiffe_id.to_string(),
                claims: Some(super::jwt::to_struct(claims)),
            }))
        }
        .await;
        observed("ValidateJWTSVID", start, result)
    }

    async fn fetch_witsvid(
        &self,
        _request: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        let start = std::time::Instant::now();
        let result = async move {
            Err(to_status(&Error::Unimplemented(
                "FetchWITSVID (WIT-SVID profile)",
            )))
        }
        .await;
        observed("FetchWITSVID", start, result)
    }

    async fn fetch_wit_bundles(
        &self,
        _request: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        let start = std::time::Instant::now();
        let result = async move {
            Err(to_status(&Error::Unimplemented(
                "FetchWITBundles (WIT-SVID profile)",
            )))
        }
        .await;
        observed("FetchWITBundles", start, result)
    }
}

/// Counts one call (method, gRPC code) and its latency.
pub(super) fn observed<T>(
    method: &'static str,
    start: std::time::Instant,
    result: Result<T, Status>,
) -> Result<T, Status> {
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    crate::metrics::metrics().rpc(method, code, start.elapsed());
    result
}
