//! EP-2: every call carries `workload.spiffe.io: true`, exactly once, or it is refused before anything
//! else happens.

use std::sync::LazyLock;

use tonic::metadata::{Ascii, MetadataKey};
use tonic::{Request, Status};

/// The security header's name.
pub(crate) const HEADER: &str = "workload.spiffe.io";

/// Request metadata by which a client says the JWT-SVIDs it fetches are handed on to someone else
/// (not revoked when the fetching process exits).
pub(crate) const HANDED_ON: &str = "lanyard-jwt-handed-on";

/// [`HEADER`] and [`HANDED_ON`] as keys, made once: a lookup by `&str` parses the name on every call.
static HEADER_KEY: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static(HEADER));
pub(crate) static HANDED_ON_KEY: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static(HANDED_ON));

/// A tonic interceptor enforcing EP-2 on every RPC of the service.
pub(crate) fn check(req: Request<()>) -> Result<Request<()>, Status> {
    let mut values = req.metadata().get_all(&*HEADER_KEY).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if v.as_bytes() == b"true" => Ok(req),
        (None, _) => Err(Status::invalid_argument(
            "security header missing: every Workload API call must carry the metadata \"workload.spiffe.io: true\"",
        )),
        (Some(_), Some(_)) => Err(Status::invalid_argument(
            "security header \"workload.spiffe.io\" sent more than once; send it once, as \"true\"",
        )),
        (Some(_), None) => Err(Status::invalid_argument(
            "security header \"workload.spiffe.io\" must be exactly \"true\"",
        )),
    }
}
