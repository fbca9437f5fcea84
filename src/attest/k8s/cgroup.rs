//! Finds a process's pod UID and container ID in its `/proc/<pid>/cgroup`, anchored at the kubelet's
//! cgroup roots.
//!
//! Only the kernel's cgroup file is read (never the caller's `mountinfo`, which a container can
//! shape). Every line is `hierarchy:controllers:path`; the path carries the names the kubelet and the
//! runtime gave the cgroups:
//!
//! | driver / runtime | path |
//! |---|---|
//! | cgroupfs, Docker or containerd | `/kubepods/burstable/pod<uid>/<64 hex>` |
//! | cgroupfs, CRI-O | `/kubepods/burstable/pod<uid>/crio-<64 hex>` |
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<64 hex>.scope` |
//! | systemd, CRI-O / Docker | `.../crio-<64 hex>.scope`, `.../docker-<64 hex>.scope` |
//! | kind (kubelet `cgroupRoot: /kubelet`) | `/kubelet/kubepods/...`, `/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/...` |
//!
//! Guaranteed-QoS pods have no QoS level (`/kubepods/pod<uid>/...`, `kubepods-pod<uid>.slice`).
//!
//! **Anchoring** (the threat: any user with a delegated cgroup subtree — a systemd user slice, a
//! rootless or nested container — can name cgroups like a pod's). A path is a pod's only when:
//! - it starts with one of the kubelet's cgroup roots ([`Root`], configurable), and below it comes
//!   exactly `[QoS level /] pod / container`, each named after its parent as the kubelet names them;
//! - the path is absolute: paths the kernel shows relative to the agent's cgroup namespace (`/..`)
//!   are resolved against the agent's position in the host's namespace ([`View`]), or refused;
//! - the leaf (container) and pod directories, looked up in the agent's own cgroup mounts, are
//!   directories owned by root (a delegated subtree is owned by its delegatee, and nobody else can
//!   move a process into a root-owned cgroup), in every mounted hierarchy that shows the path.
//!
//! Anything else is "not in a pod": the caller keeps its unix selectors and gets no `k8s:*` ones.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where a process sits, as far as its cgroups say.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The pod UID (dashed).
    pub pod_uid: Option<String>,
    /// The container ID (64 lowercase hex digits), without the runtime prefix.
    pub container_id: String,
}

/// Why a cgroup file could not be read as a location. Any of these means no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("cgroup line {line_no} is malformed: {line:?} (expected hierarchy:controllers:path)")]
    Malformed { line_no: usize, line: String },
    #[error("cgroup lines disagree on the {what}: {first} vs {second}")]
    Conflict {
        what: &'static str,
        first: String,
        second: String,
    },
    #[error("the process is in pod {pod_uid} but in no container's cgroup (path {path:?})")]
    NoContainer { pod_uid: String, path: String },
}

/// One kubelet cgroup root: absolute, its components literal or `*` (any one component).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(Vec<String>);

impl Root {
    /// Parses `/kubepods`, `/kubelet.slice/kubelet-kubepods.slice`, `/docker/*/kubepods` ...
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} is not an absolute cgroup path; such as \"/kubepods.slice\""
            ));
        }
        let parts: Vec<String> = components(text).map(str::to_owned).collect();
        if parts.is_empty() {
            return Err(format!(
                "{text:?} is the whole hierarchy; name the kubelet's root, such as \"/kubepods\""
            ));
        }
        if let Some(bad) = parts.iter().find(|p| *p == "." || *p == "..") {
            return Err(format!("{text:?} has a {bad:?} component"));
        }
        if parts.last().is_some_and(|p| p == "*") {
            return Err(format!(
                "{text:?} ends in \"*\"; the last component must be the kubelet's own cgroup"
            ));
        }
        Ok(Self(parts))
    }

    /// The rest of `path` below this root, and the root's last component, if `path` is under it.
    fn strip<'a>(&'a self, path: &'a [String]) -> Option<(&'a str, &'a [String])> {
        if path.len() <= self.0.len() {
            return None;
        }
        let matches = self
            .0
            .iter()
            .zip(path)
            .all(|(want, got)| want == "*" || want == got);
        matches.then(|| (path[self.0.len() - 1].as_str(), &path[self.0.len()..]))
    }
}

impl std::fmt::Display for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.0 {
            write!(f, "/{p}")?;
        }
        Ok(())
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|p| !p.is_empty())
}

/// A hierarchy as `/proc/<pid>/cgroup` names it: the unified one (`0::`), or a v1 one by its
/// controllers (`cpu,cpuacct`, `name=systemd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hierarchy {
    Unified,
    V1(BTreeSet<String>),
}

impl Hierarchy {
    fn of(id: &str, controllers: &str) -> Self {
        if id == "0" && controllers.is_empty() {
            Self::Unified
        } else {
            Self::V1(
                controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
            )
        }
    }
}

/// A cgroup filesystem mounted in the agent's mount namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub hierarchy: Hierarchy,
    /// The cgroup the mount shows at its mount point, as the agent's namespace renders it (may
    /// start with `/..`).
    pub root: String,
    pub at: PathBuf,
}

/// What the agent knows about its own place among cgroups: where its cgroup namespace's root sits in
/// the host's (to make relative paths absolute) and where each hierarchy is mounted (to check owners).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Per hierarchy: the absolute path of the agent's cgroup namespace root. Empty when the agent
    /// could not see the host's namespace: then paths count as absolute as shown, and `..` paths as
    /// unresolvable.
    pub ns_roots: HashMap<Hierarchy, Vec<String>>,
    pub mounts: Vec<Mount>,
}

/// Why [`View::load`] could not see the host's cgroup namespace (the view still works for an agent
/// in that namespace).
#[derive(Debug, thiserror::Error)]
#[error("cannot enter the cgroup namespace {path}: {message}")]
pub struct ViewError {
    pub path: PathBuf,
    pub message: String,
}

impl View {
    /// Reads the agent's own cgroups and mounts; when `host_ns` names another cgroup namespace than
    /// the agent's, a short-lived thread enters it to learn the agent's absolute position. The
    /// second value says why that failed, if it did (the view is then the agent's own).
    pub fn load(host_ns: Option<&Path>) -> (Self, Option<ViewError>) {
        let own = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
        let mut view = Self {
            ns_roots: HashMap::new(),
            mounts: parse_mounts(&mountinfo),
        };
        let Some(host_ns) = host_ns else {
            return (view, None);
        };
        let fail = |message: String| ViewError {
            path: host_ns.to_owned(),
            message,
        };
        let same = match (
            std::fs::metadata(host_ns),
            std::fs::metadata("/proc/thread-self/ns/cgroup"),
        ) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            (Err(e), _) | (_, Err(e)) => return (view, Some(fail(e.to_string()))),
        };
        if same {
            view.ns_roots = lines(&own)
                .map(|(h, _)| (h, Vec::new()))
                .collect::<HashMap<_, _>>();
            return (view, None);
        }
        let path = host_ns.to_owned();
        let seen = std::thread::Builder::new()
            .name("cgroup-ns".into())
            .spawn(move || -> Result<String, String> {
                let ns = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                crate::sys::enter_cgroup_ns(&ns).map_err(|e| e.to_string())?;
                std::fs::read_to_string("/proc/thread-self/cgroup").map_err(|e| e.to_string())
            })
            .map_err(|e| e.to_string())
            .and_then(|t| t.join().unwrap_or_else(|_| Err("the thread failed".into())));
        let absolute = match seen {
            Ok(text) => text,
            Err(e) => return (view, Some(fail(e))),
        };
        let absolute: HashMap<Hierarchy, String> = lines(&absolute).collect();
        for (hierarchy, relative) in lines(&own) {
            let Some(abs) = absolute.get(&hierarchy) else {
                continue;
            };
            let abs: Vec<&str> = components(abs).collect();
            let rel: Vec<&str> = components(&relative).collect();
            // The agent's path inside its namespace is the tail of its absolute path; what comes
            // before is the namespace root. (A `..` here: the agent left its namespace's subtree.)
            if rel.contains(&"..") || !abs.ends_with(&rel) {
                continue;
            }
            let root = abs[..abs.len() - rel.len()]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            view.ns_roots.insert(hierarchy, root);
        }
        (view, None)
    }

    /// `path` as the agent reads it, made absolute. `None`: cannot be.
    fn absolute(&self, hierarchy: &Hierarchy, path: &str) -> Option<Vec<String>> {
        let mut out: Vec<String> = match self.ns_roots.get(hierarchy) {
            Some(root) => root.clone(),
            None if self.ns_roots.is_empty() => Vec::new(),
            None => return None,
        };
        for p in components(path) {
            if p == ".." {
                out.pop()?;
            } else {
                out.push(p.to_owned());
            }
        }
        Some(out)
    }

    /// The directory of cgroup `path` (as the agent reads it) in a mount of `hierarchy`. Both the
    /// path and each mount's root are made absolute first (a mount root shows relative to the
    /// agent's namespace too); the part below the mount's root never climbs (`..`).
    fn directory(&self, hierarchy: &Hierarchy, path: &str) -> Option<PathBuf> {
        let path = self.absolute(hierarchy, path)?;
        self.mounts.iter().find_map(|m| {
            let covers = match (&m.hierarchy, hierarchy) {
                (Hierarchy::Unified, Hierarchy::Unified) => true,
                (Hierarchy::V1(have), Hierarchy::V1(want)) => want.is_subset(have),
                _ => false,
            };
            if !covers {
                return None;
            }
            let root = self.absolute(hierarchy, &m.root)?;
            let below = path.strip_prefix(root.as_slice())?;
            let mut dir = m.at.clone();
            dir.extend(below);
            Some(dir)
        })
    }
}

/// `hierarchy:controllers:path` lines, skipping malformed ones (the agent's own files).
fn lines(text: &str) -> impl Iterator<Item = (Hierarchy, String)> + '_ {
    text.lines().filter_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        Some((Hierarchy::of(id, controllers), path.to_owned()))
    })
}

/// cgroup mounts from a `mountinfo` text: `id parent dev root mountpoint opts [tags] - fstype src super`.
fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 5 || right.len() < 3 {
            continue;
        }
        let hierarchy = match right[0] {
            "cgroup2" => Hierarchy::Unified,
            "cgroup" => Hierarchy::V1(
                right[2]
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro"))
                    .map(str::to_owned)
                    .collect(),
            ),
            _ => continue,
        };
        out.push(Mount {
            hierarchy,
            root: unescape(left[3]),
            at: PathBuf::from(unescape(left[4])),
        });
    }
    out
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `text` (the contents of `/proc/<pid>/cgroup`) against the kubelet `roots`, as the agent
/// sees cgroups (`view`). `Ok(None)`: not in a pod (including: a pod-like path outside the roots, or
/// one whose directories are not root's).
pub fn locate(text: &str, roots: &[Root], view: &View) -> Result<Option<Location>, Error> {
    let mut found: Option<Location> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed {
                line_no: i + 1,
                line: line.into(),
            });
        };
        if id.parse::<u32>().is_err() || !path.starts_with('/') {
            return Err(Error::Malformed {
                line_no: i + 1,
                line: line.into(),
            });
        }
        let hierarchy = Hierarchy::of(id, controllers);
        let Some(absolute) = view.absolute(&hierarchy, path) else {
            continue;
        };
        let Some(here) = locate_path(&absolute, roots)? else {
            continue;
        };
        // The directories must be root's wherever the agent can look; a hierarchy it has not
        // mounted shows nothing either way, so at least one must have been looked at.
        let Some(leaf) = view.directory(&hierarchy, path) else {
            continue;
        };
        if !root_owned_dir(&leaf) || leaf.parent().is_none_or(|pod| !root_owned_dir(pod)) {
            tracing::warn!(
                cgroup = %leaf.display(),
                "a pod-like cgroup not owned by root: not treated as a pod"
            );
            return Ok(None);
        }
        found = Some(match found {
            None => here,
            Some(prev) => merge(prev, here)?,
        });
    }
    Ok(found)
}

fn root_owned_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == 0)
}

fn merge(a: Location, b: Location) -> Result<Location, Error> {
    if a.container_id != b.container_id {
        return Err(Error::Conflict {
            what: "container ID",
            first: a.container_id,
            second: b.container_id,
        });
    }
    let pod_uid = match (a.pod_uid, b.pod_uid) {
        (Some(x), Some(y)) if x != y => {
            return Err(Error::Conflict {
                what: "pod UID",
                first: x,
                second: y,
            });
        }
        (x, y) => x.or(y),
    };
    Ok(Location {
        pod_uid,
        container_id: a.container_id,
    })
}

/// One absolute cgroup path: below a kubelet root, `[QoS /] pod / container`.
fn locate_path(path: &[String], roots: &[Root]) -> Result<Option<Location>, Error> {
    let Some((parent, rest)) = roots.iter().find_map(|r| r.strip(path)) else {
        return Ok(None);
    };
    let (parent, rest) = match rest.split_first() {
        Some((qos, below)) if is_qos(qos, parent) => (qos.as_str(), below),
        _ => (parent, rest),
    };
    let Some((pod, rest)) = rest.split_first() else {
        return Ok(None);
    };
    let Some(pod_uid) = pod_uid_of(pod, parent) else {
        return Ok(None);
    };
    match rest {
        [container] => match container_id_of(container) {
            Some(container_id) => Ok(Some(Location {
                pod_uid: Some(pod_uid),
                container_id,
            })),
            None => Err(no_container(pod_uid, path)),
        },
        _ => Err(no_container(pod_uid, path)),
    }
}

fn no_container(pod_uid: String, path: &[String]) -> Error {
    Error::NoContainer {
        pod_uid,
        path: format!("/{}", path.join("/")),
    }
}

/// A QoS level below `parent`: `burstable` (cgroupfs) or `<parent>-burstable.slice` (systemd).
fn is_qos(name: &str, parent: &str) -> bool {
    match parent.strip_suffix(".slice") {
        Some(stem) => name
            .strip_prefix(stem)
            .is_some_and(|n| n == "-burstable.slice" || n == "-besteffort.slice"),
        None => name == "burstable" || name == "besteffort",
    }
}

/// A pod below `parent`: `pod<uid>` (cgroupfs) or `<parent>-pod<uid_with_underscores>.slice`.
fn pod_uid_of(name: &str, parent: &str) -> Option<String> {
    let raw = match parent.strip_suffix(".slice") {
        Some(stem) => name
            .strip_prefix(stem)?
            .strip_prefix("-pod")?
            .strip_suffix(".slice")
            // systemd writes the UID's dashes as `_` (a dash would start another slice level).
            .filter(|raw| !raw.contains('-'))?,
        None => name.strip_prefix("pod").filter(|raw| !raw.contains('_'))?,
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

/// A container ID: 64 lowercase hex digits, bare or named by a runtime (`cri-containerd-`, `crio-`,
/// `docker-`, with `.scope` under systemd).
fn container_id_of(component: &str) -> Option<String> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    let hex = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| id.to_owned())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0e27c1-8a8d-4e55-9d0b-2f1f61a4c7d2";
    const UID_US: &str = "5f0e27c1_8a8d_4e55_9d0b_2f1f61a4c7d2";
    const CID: &str = "3b5c1f0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";
    const OTHER: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";

    fn at(pod: Option<&str>) -> Option<Location> {
        Some(Location {
            pod_uid: pod.map(str::to_owned),
            container_id: CID.into(),
        })
    }

    /// The agent's default roots (as config's `DEFAULT_CGROUP_ROOTS`).
    fn defaults() -> Vec<Root> {
        [
            "/kubepods",
            "/kubepods.slice",
            "/kubelet/kubepods",
            "/kubelet.slice/kubelet-kubepods.slice",
        ]
        .iter()
        .map(|r| Root::parse(r).unwrap())
        .collect()
    }

    fn path(p: &str) -> Result<Option<Location>, Error> {
        let parts: Vec<String> = components(p).map(str::to_owned).collect();
        locate_path(&parts, &defaults())
    }

    #[test]
    fn every_driver_runtime_and_layout_under_the_default_roots() {
        let burst_sys = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );
        let cases: Vec<(&str, String)> = vec![
            (
                "cgroupfs containerd",
                format!("/kubepods/burstable/pod{UID}/{CID}"),
            ),
            ("cgroupfs guaranteed", format!("/kubepods/pod{UID}/{CID}")),
            (
                "cgroupfs crio",
                format!("/kubepods/besteffort/pod{UID}/crio-{CID}"),
            ),
            (
                "systemd containerd",
                format!("{burst_sys}/cri-containerd-{CID}.scope"),
            ),
            ("systemd crio", format!("{burst_sys}/crio-{CID}.scope")),
            ("systemd docker", format!("{burst_sys}/docker-{CID}.scope")),
            (
                "systemd guaranteed",
                format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
            ),
            (
                "kind cgroupfs",
                format!("/kubelet/kubepods/besteffort/pod{UID}/{CID}"),
            ),
            (
                "kind systemd",
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
                ),
            ),
        ];
        for (name, p) in cases {
            assert_eq!(path(&p), Ok(at(Some(UID))), "{name}: {p}");
        }
    }

    #[test]
    fn pod_names_outside_the_kubelet_roots_are_not_pods() {
        for p in [
            // A delegated user subtree, a rootless container, a nested tree under a service.
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{CID}"),
            format!(
                "/user.slice/user-65534.slice/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/system.slice/evil.service/kubepods/burstable/pod{UID}/{CID}"),
            format!("/docker/{OTHER}/kubepods/besteffort/pod{UID}/{CID}"),
            // Under a root, but not laid out as the kubelet lays it out.
            format!("/kubepods/extra/pod{UID}/{CID}"),
            format!("/kubepods/burstable/burstable/pod{UID}/{CID}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/kubepods.slice/other-pod{UID_US}.slice/cri-containerd-{CID}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/x"),
            // Not pods at all.
            "/user.slice/user-1000.slice/session-2.scope".into(),
            "/".into(),
            format!("/docker/{CID}"),
            "/system.slice/lanyard.service".into(),
            "/kubepods.slice/kubepods-burstable.slice".into(),
            format!("/kubepods/pod{}/{CID}", &UID[..20]),
        ] {
            assert_eq!(path(&p), Ok(None), "{p}");
        }
    }

    #[test]
    fn a_configured_root_with_a_wildcard_component() {
        let roots = vec![Root::parse("/docker/*/kubepods").unwrap()];
        let p = format!("/docker/{OTHER}/kubepods/besteffort/pod{UID}/{CID}");
        let parts: Vec<String> = components(&p).map(str::to_owned).collect();
        assert_eq!(locate_path(&parts, &roots), Ok(at(Some(UID))));
        let p = format!("/docker/{OTHER}/x/kubepods/besteffort/pod{UID}/{CID}");
        let parts: Vec<String> = components(&p).map(str::to_owned).collect();
        assert_eq!(locate_path(&parts, &roots), Ok(None));
        for bad in ["kubepods", "/", "/a/../b", "/kubepods/*", ""] {
            assert!(Root::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pod_without_container_is_an_error() {
        let err = path(&format!("/kubepods/burstable/pod{UID}")).unwrap_err();
        assert!(matches!(err, Error::NoContainer { .. }), "{err}");
        assert!(err.to_string().contains(UID));
        // A non-container directory below the pod is not a container either.
        let err = path(&format!("/kubepods/pod{UID}/{CID}/extra")).unwrap_err();
        assert!(matches!(err, Error::NoContainer { .. }), "{err}");
    }

    #[test]
    fn relative_paths_resolve_against_the_namespace_root_or_not_at_all() {
        let ns_root: Vec<String> = ["kubepods.slice", "kubepods-besteffort.slice", "agent.scope"]
            .map(str::to_owned)
            .to_vec();
        let view = View {
            ns_roots: HashMap::from([(Hierarchy::Unified, ns_root)]),
            mounts: Vec::new(),
        };
        let p = format!("/../../kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope");
        let abs = view.absolute(&Hierarchy::Unified, &p).unwrap();
        assert_eq!(
            abs.join("/"),
            format!("kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope")
        );
        assert_eq!(locate_path(&abs, &defaults()), Ok(at(Some(UID))));
        // Above the host's root, or a hierarchy the view does not know: unresolvable.
        assert_eq!(view.absolute(&Hierarchy::Unified, "/../../../../x"), None);
        assert_eq!(
            view.absolute(&Hierarchy::V1(["pids".into()].into()), "/x"),
            None
        );
        // No host view: paths count as shown, and `..` cannot be resolved.
        let own = View::default();
        assert_eq!(
            own.absolute(&Hierarchy::Unified, &format!("/../crio-{CID}.scope")),
            None
        );
        assert_eq!(
            own.absolute(&Hierarchy::Unified, "/kubepods/x"),
            Some(vec!["kubepods".to_owned(), "x".to_owned()])
        );
    }

    #[test]
    fn mounts_map_cgroup_paths_to_directories() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 /.. /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:38 /../.. /host\\040cgroup rw,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
";
        let mounts = parse_mounts(mountinfo);
        assert_eq!(mounts.len(), 4);
        // No host view: paths and roots as shown; nothing climbs.
        let own = View {
            ns_roots: HashMap::new(),
            mounts: mounts.clone(),
        };
        assert_eq!(
            own.directory(&Hierarchy::of("4", "cpuacct,cpu"), "/kubepods/x"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/x"))
        );
        assert_eq!(
            own.directory(&Hierarchy::of("1", "name=systemd"), "/a"),
            Some(PathBuf::from("/sys/fs/cgroup/systemd/a"))
        );
        assert_eq!(own.directory(&Hierarchy::Unified, "/../k/c"), None);
        assert_eq!(own.directory(&Hierarchy::of("9", "pids"), "/k"), None);
        // The agent's namespace root is /a/b: its own mount shows /a, the host's mount all of it.
        let view = View {
            ns_roots: HashMap::from([(Hierarchy::Unified, vec!["a".into(), "b".into()])]),
            mounts,
        };
        assert_eq!(
            view.directory(&Hierarchy::Unified, "/../c/d"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/c/d"))
        );
        assert_eq!(
            view.directory(&Hierarchy::Unified, "/../../k/c"),
            Some(PathBuf::from("/host cgroup/k/c"))
        );
    }

    #[test]
    fn hybrid_lines_merge_and_conflicts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Both lines' directories exist (owned by whoever runs the test; root in CI).
        let mounts = vec![
            Mount {
                hierarchy: Hierarchy::of("4", "pids"),
                root: "/".into(),
                at: dir.path().join("pids"),
            },
            Mount {
                hierarchy: Hierarchy::of("3", "memory"),
                root: "/".into(),
                at: dir.path().join("memory"),
            },
        ];
        for sub in [
            format!("pids/kubepods/pod{UID}/{CID}"),
            format!("memory/kubepods/pod{UID}/{OTHER}"),
        ] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let view = View {
            ns_roots: HashMap::new(),
            mounts,
        };
        let roots = defaults();
        let text = format!("4:pids:/kubepods/pod{UID}/{CID}\n3:memory:/\n0::/\n");
        let got = locate(&text, &roots, &view).unwrap();
        if crate::sys::euid() != 0 {
            // Directories not owned by root are never a pod's.
            assert_eq!(got, None);
            return;
        }
        assert_eq!(got, at(Some(UID)));
        let text =
            format!("4:pids:/kubepods/pod{UID}/{CID}\n3:memory:/kubepods/pod{UID}/{OTHER}\n");
        let err = locate(&text, &roots, &view).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Conflict {
                    what: "container ID",
                    ..
                }
            ),
            "{err}"
        );
        // A hierarchy the agent has not mounted cannot vouch for anything.
        let text = format!("9:rdma:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(locate(&text, &roots, &view), Ok(None));
        // A leaf handed to another user is not a pod's.
        let leaf = dir.path().join(format!("pids/kubepods/pod{UID}/{CID}"));
        std::os::unix::fs::chown(&leaf, Some(65534), None).unwrap();
        let text = format!("4:pids:/kubepods/pod{UID}/{CID}\n");
        assert_eq!(locate(&text, &roots, &view), Ok(None));
    }

    #[test]
    fn malformed_lines_give_a_clear_error_not_a_panic() {
        let view = View::default();
        for text in [
            "garbage",
            "1:cpu",
            "x:cpu:/kubepods",
            "1:cpu:relative/path",
            "\u{0}:\u{0}:\u{0}",
            "::",
        ] {
            let err = locate(text, &defaults(), &view).unwrap_err();
            assert!(
                matches!(err, Error::Malformed { line_no: 1, .. }),
                "{text:?}: {err}"
            );
        }
        assert_eq!(locate("", &defaults(), &view), Ok(None));
    }
}
