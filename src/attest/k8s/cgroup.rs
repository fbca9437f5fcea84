//! Finds a process's pod UID and container ID in its `/proc/<pid>/cgroup`.
//!
//! Only the kernel's cgroup file is read (never `mountinfo`, which a container can shape). Every line
//! is `hierarchy:controllers:path`; the path carries the names the kubelet and the runtime gave the
//! cgroups:
//!
//! | driver / runtime | path |
//! |---|---|
//! | cgroupfs, Docker or containerd | `/kubepods/burstable/pod<uid>/<64 hex>` |
//! | cgroupfs, CRI-O | `/kubepods/burstable/pod<uid>/crio-<64 hex>` |
//! | systemd, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<64 hex>.scope` |
//! | systemd, CRI-O / Docker | `.../crio-<64 hex>.scope`, `.../docker-<64 hex>.scope` |
//! | cgroup namespace (v2) | `0::/../crio-<64 hex>.scope` (the pod part is hidden: container only) |
//!
//! Guaranteed-QoS pods have no QoS level (`/kubepods/pod<uid>/...`, `kubepods-pod<uid>.slice`), and
//! nested setups (kind) put all of it under another container's cgroup (`/docker/<id>/kubepods/...`).

/// Where a process sits, as far as its cgroups say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The pod UID (dashed), when the path shows it.
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

/// Reads `text` (the contents of `/proc/<pid>/cgroup`). `Ok(None)`: not in a pod or container
/// managed by Kubernetes.
pub fn locate(text: &str) -> Result<Option<Location>, Error> {
    let mut found: Option<Location> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.splitn(3, ':');
        let (Some(hierarchy), Some(_controllers), Some(path)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed {
                line_no: i + 1,
                line: line.into(),
            });
        };
        if hierarchy.parse::<u32>().is_err() || !path.starts_with('/') {
            return Err(Error::Malformed {
                line_no: i + 1,
                line: line.into(),
            });
        }
        let Some(here) = locate_path(path)? else {
            continue;
        };
        found = Some(match found {
            None => here,
            Some(prev) => merge(prev, here)?,
        });
    }
    Ok(found)
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

/// One cgroup path: the pod UID from the last component that names a pod, and the container ID from
/// the component after it (the last one).
fn locate_path(path: &str) -> Result<Option<Location>, Error> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let pod_at = parts.iter().rposition(|p| pod_uid_of(p).is_some());
    let container = parts.last().and_then(|last| container_id_of(last));
    match pod_at {
        Some(at) => {
            let pod_uid = pod_uid_of(parts[at]);
            // The container's cgroup is the pod's child; anything else is not a container.
            match (at + 2 == parts.len(), container) {
                (true, Some((id, _))) => Ok(Some(Location {
                    pod_uid,
                    container_id: id,
                })),
                _ => Err(Error::NoContainer {
                    pod_uid: pod_uid.unwrap_or_default(),
                    path: path.into(),
                }),
            }
        }
        None => {
            // No pod in sight: only a runtime-named scope seen through a cgroup namespace (`..`) or
            // under `kubepods` is a Kubernetes container; a bare `/docker/<id>` is not a pod.
            let k8s_context = parts
                .iter()
                .any(|p| *p == ".." || p.starts_with("kubepods"));
            match container {
                Some((id, true)) if k8s_context => Ok(Some(Location {
                    pod_uid: None,
                    container_id: id,
                })),
                _ => Ok(None),
            }
        }
    }
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(component: &str) -> Option<String> {
    let raw = if let Some(slice) = component.strip_suffix(".slice") {
        if !slice.starts_with("kubepods") {
            return None;
        }
        let at = slice.rfind("-pod")?;
        &slice[at + 4..]
    } else {
        component.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_uuid(&uid).then_some(uid)
}

/// A container ID and whether a runtime prefix named it (`cri-containerd-`, `crio-`, `docker-`).
fn container_id_of(component: &str) -> Option<(String, bool)> {
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let (id, prefixed) = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| name.strip_prefix(p).map(|id| (id, true)))
        .unwrap_or((name, false));
    let hex = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| (id.to_owned(), prefixed))
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

    fn v1(path: &str) -> String {
        // A cgroup v1 file as the kernel writes it: every controller, the same path.
        [
            "12:hugetlb",
            "11:devices",
            "10:pids",
            "9:perf_event",
            "8:net_cls,net_prio",
            "7:cpuset",
            "6:memory",
            "5:cpu,cpuacct",
            "4:freezer",
            "3:blkio",
            "2:rdma",
            "1:name=systemd",
        ]
        .iter()
        .map(|c| format!("{c}:{path}\n"))
        .collect::<String>()
            + "0::/\n"
    }

    fn v2(path: &str) -> String {
        format!("0::{path}\n")
    }

    fn at(pod: Option<&str>) -> Option<Location> {
        Some(Location {
            pod_uid: pod.map(str::to_owned),
            container_id: CID.into(),
        })
    }

    #[test]
    fn every_driver_runtime_and_version() {
        let burst_sys = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );
        let cases: Vec<(&str, String, Option<Location>)> = vec![
            // cgroupfs driver
            (
                "v1 cgroupfs docker/containerd",
                v1(&format!("/kubepods/burstable/pod{UID}/{CID}")),
                at(Some(UID)),
            ),
            (
                "v1 cgroupfs guaranteed",
                v1(&format!("/kubepods/pod{UID}/{CID}")),
                at(Some(UID)),
            ),
            (
                "v1 cgroupfs besteffort crio",
                v1(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}")),
                at(Some(UID)),
            ),
            (
                "v2 cgroupfs containerd",
                v2(&format!("/kubepods/burstable/pod{UID}/{CID}")),
                at(Some(UID)),
            ),
            (
                "v2 cgroupfs crio",
                v2(&format!("/kubepods/burstable/pod{UID}/crio-{CID}")),
                at(Some(UID)),
            ),
            // systemd driver
            (
                "v1 systemd containerd",
                v1(&format!("{burst_sys}/cri-containerd-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v1 systemd crio",
                v1(&format!("{burst_sys}/crio-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v1 systemd docker",
                v1(&format!("{burst_sys}/docker-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v2 systemd containerd",
                v2(&format!("{burst_sys}/cri-containerd-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v2 systemd crio",
                v2(&format!("{burst_sys}/crio-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v2 systemd docker",
                v2(&format!("{burst_sys}/docker-{CID}.scope")),
                at(Some(UID)),
            ),
            (
                "v2 systemd guaranteed",
                v2(&format!(
                    "/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
                )),
                at(Some(UID)),
            ),
            // nested (kind: the node is itself a docker container)
            (
                "v1 kind",
                v1(&format!(
                    "/docker/{OTHER}/kubepods/besteffort/pod{UID}/{CID}"
                )),
                at(Some(UID)),
            ),
            // cgroup namespace: the pod part is hidden
            (
                "v2 namespaced crio",
                v2(&format!("/../crio-{CID}.scope")),
                at(None),
            ),
            (
                "v2 namespaced containerd",
                v2(&format!("/../cri-containerd-{CID}.scope")),
                at(None),
            ),
            // not pods
            (
                "host session",
                v1("/user.slice/user-1000.slice/session-2.scope"),
                None,
            ),
            ("root", v2("/"), None),
            ("plain docker", v1(&format!("/docker/{CID}")), None),
            ("systemd service", v2("/system.slice/lanyard.service"), None),
            (
                "podman is not a pod",
                v2("/user.slice/podman-1234.scope"),
                None,
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(locate(&text), Ok(want), "{name}: {text}");
        }
    }

    #[test]
    fn hybrid_v1_and_v2_lines_merge() {
        // Some controllers show the pod, the unified line shows "/" (hybrid mode).
        let text = format!("4:pids:/kubepods/pod{UID}/{CID}\n3:memory:/\n0::/\n");
        assert_eq!(locate(&text).unwrap(), at(Some(UID)));
    }

    #[test]
    fn conflicting_ids_are_an_error() {
        let text =
            format!("4:pids:/kubepods/pod{UID}/{CID}\n3:memory:/kubepods/pod{UID}/{OTHER}\n");
        let err = locate(&text).unwrap_err();
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
        let other_uid = "11111111-2222-3333-4444-555555555555";
        let text =
            format!("4:pids:/kubepods/pod{UID}/{CID}\n3:memory:/kubepods/pod{other_uid}/{CID}\n");
        let err = locate(&text).unwrap_err();
        assert!(err.to_string().contains(other_uid), "{err}");
    }

    #[test]
    fn pod_without_container_is_an_error() {
        let err = locate(&v2(&format!("/kubepods/burstable/pod{UID}"))).unwrap_err();
        assert!(matches!(err, Error::NoContainer { .. }), "{err}");
        assert!(err.to_string().contains(UID));
        // A non-container directory below the pod is not a container either.
        let err = locate(&v2(&format!("/kubepods/pod{UID}/{CID}/extra"))).unwrap_err();
        assert!(matches!(err, Error::NoContainer { .. }), "{err}");
    }

    #[test]
    fn malformed_lines_give_a_clear_error_not_a_panic() {
        for text in [
            "garbage",
            "1:cpu",
            "x:cpu:/kubepods",
            "1:cpu:relative/path",
            "\u{0}:\u{0}:\u{0}",
            "::",
        ] {
            let err = locate(text).unwrap_err();
            assert!(
                matches!(err, Error::Malformed { line_no: 1, .. }),
                "{text:?}: {err}"
            );
        }
        // Truncated IDs and near misses are simply not pods.
        for path in [
            format!("/kubepods/pod{}/{CID}", &UID[..20]),
            format!("/kubepods/pod{UID}/{}", &CID[..40]).replace(&format!("pod{UID}/"), "x/"),
            "/kubepods.slice/kubepods-burstable.slice".to_owned(),
            "/kubepods-podzzz.slice".to_owned(),
        ] {
            assert_eq!(locate(&v2(&path)), Ok(None), "{path}");
        }
        assert_eq!(locate(""), Ok(None));
    }
}
