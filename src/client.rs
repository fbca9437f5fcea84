//! A Workload API client over a Unix socket, for the CLI and the helper. It sends the EP-2 security
//! header on every call.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;

/// The environment variable naming the Workload API endpoint.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// A connected Workload API client.
pub type WorkloadClient = SpiffeWorkloadApiClient<
    InterceptedService<Channel, fn(Request<()>) -> Result<Request<()>, Status>>,
>;

/// Why the client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "invalid endpoint {0:?}: use unix:///absolute/path (as in SPIFFE_ENDPOINT_SOCKET) or an absolute socket path"
    )]
    BadEndpoint(String),
    #[error("cannot connect to the agent at {path}: {source}; is `lanyard agent` running there?")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// The socket path of an endpoint: `unix:///path`, `unix:/path` or `/path`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, Error> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err(Error::BadEndpoint(endpoint.into()))
    }
}

/// The endpoint to use: `explicit`, else `SPIFFE_ENDPOINT_SOCKET`, else the default socket if it
/// exists, else this user's `lanyard agent --dev` socket if that exists, else the default socket.
pub fn resolve_endpoint(explicit: Option<&str>) -> String {
    if let Some(e) = explicit {
        return e.to_owned();
    }
    if let Some(e) = std::env::var(ENDPOINT_ENV).ok().filter(|v| !v.is_empty()) {
        return e;
    }
    let default = PathBuf::from(crate::config::DEFAULT_SOCKET_PATH);
    let dev = crate::config::DevMode::for_current_user()
        .runtime_dir
        .join("workload.sock");
    let path = if !default.exists() && dev.exists() {
        dev
    } else {
        default
    };
    format!("unix://{}", path.display())
}

/// Connects to the agent at `endpoint`.
pub async fn connect(endpoint: &str) -> Result<WorkloadClient, Error> {
    let path = socket_path(endpoint)?;
    let channel = unix_channel(&path).await?;
    Ok(SpiffeWorkloadApiClient::with_interceptor(
        channel,
        add_header as fn(Request<()>) -> Result<Request<()>, Status>,
    ))
}

fn add_header(mut req: Request<()>) -> Result<Request<()>, Status> {
    req.metadata_mut().insert(
        crate::workload_api::header::HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

/// A connected admin API client.
pub type AdminClient = crate::proto::admin::admin_client::AdminClient<Channel>;

/// The admin socket to use: `explicit`, else the default if it exists, else this user's `--dev` admin
/// socket if that exists, else the default.
pub fn resolve_admin_socket(explicit: Option<&std::path::Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_owned();
    }
    let default = PathBuf::from(crate::config::DEFAULT_ADMIN_SOCKET_PATH);
    let dev = crate::config::DevMode::for_current_user()
        .runtime_dir
        .join("admin")
        .join("admin.sock");
    if !default.exists() && dev.exists() {
        dev
    } else {
        default
    }
}

/// Connects to the admin API at `path`.
pub async fn connect_admin(path: &std::path::Path) -> Result<AdminClient, Error> {
    let channel = unix_channel(path).await?;
    Ok(crate::proto::admin::admin_client::AdminClient::new(channel))
}

/// How long a connect waits, at most, for room in the agent's listen queue.
const QUEUE_FULL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects the Unix socket at `path`. A full listen queue (`EAGAIN`: the agent is busy accepting,
/// perhaps because a local user floods it with connections) is waited out for up to
/// [`QUEUE_FULL_WAIT`] in the kernel's own queue of connectors, which the agent's every `accept`
/// wakes (a blocking `connect`, on a blocking thread); polling again after a pause lost the race to
/// a flood that never pauses. Any other error is returned at once.
async fn dial(path: &std::path::Path) -> std::io::Result<UnixStream> {
    match UnixStream::connect(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => return other,
    }
    let owned = path.to_owned();
    let waited = tokio::task::spawn_blocking(move || {
        crate::sys::socket::connect_waiting(&owned, QUEUE_FULL_WAIT)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    match waited {
        Ok(stream) => {
            stream.set_nonblocking(true)?;
            UnixStream::from_std(stream)
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(std::io::Error::new(
            e.kind(),
            format!(
                "the agent's listen queue stayed full for {}s (the agent is overloaded, or a local user floods it with connections); try again",
                QUEUE_FULL_WAIT.as_secs()
            ),
        )),
        Err(e) => Err(e),
    }
}

/// A gRPC channel over the Unix socket at `path`.
async fn unix_channel(path: &std::path::Path) -> Result<Channel, Error> {
    let connector_path = path.to_owned();
    // The URI is required by tonic but unused: the connector dials the Unix socket.
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = connector_path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(dial(&path).await?)) }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
}

/// A FetchJWTSVID request marked as handed on (`lanyard-jwt-handed-on: true`): the tokens are for
/// someone else (the CLI prints them, the helper writes them to files), so they are not revoked when
/// this process exits (they still are when the identity's entitlement is removed or a policy denies
/// it).
pub fn handed_on<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        crate::workload_api::header::HANDED_ON,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("unix:/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert_eq!(
            socket_path("/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert!(socket_path("unix://relative").is_err());
    }
}
