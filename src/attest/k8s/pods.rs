//! The kubelet's `/pods` answer (a v1 `PodList`), reduced to what attestation needs, and the lookup
//! of a container in it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::cgroup::Location;
use crate::selector::Selector;

/// A `v1.PodList`; fields lanyard does not use are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct PodList {
    #[serde(default)]
    pub items: Vec<Pod>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default)]
    pub status: Status,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Default, Deserialize)]
pub struct OwnerReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default)]
    pub containers: Vec<SpecContainer>,
    #[serde(default)]
    pub init_containers: Vec<SpecContainer>,
    #[serde(default)]
    pub ephemeral_containers: Vec<SpecContainer>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SpecContainer {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    pub ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    #[serde(default)]
    pub name: String,
    /// `<runtime>://<id>`; empty until the container is created.
    #[serde(rename = "containerID", default)]
    pub container_id: String,
    #[serde(default)]
    pub image: String,
    #[serde(rename = "imageID", default)]
    pub image_id: String,
}

/// What a lookup found.
#[derive(Debug)]
pub enum Found<'a> {
    Container(&'a Pod, &'a ContainerStatus),
    /// Not (yet) in any pod's status.
    Missing,
    /// The container ID is in more than one pod and the cgroup path did not say which.
    Ambiguous(Vec<String>),
}

impl PodList {
    /// Finds the container of `location` (restricted to its pod when the pod UID is known).
    pub fn find(&self, location: &Location) -> Found<'_> {
        let mut hits = Vec::new();
        for pod in &self.items {
            if let Some(uid) = &location.pod_uid
                && &pod.metadata.uid != uid
            {
                continue;
            }
            let statuses = pod
                .status
                .container_statuses
                .iter()
                .chain(&pod.status.init_container_statuses)
                .chain(&pod.status.ephemeral_container_statuses);
            for status in statuses {
                if bare_id(&status.container_id) == Some(location.container_id.as_str()) {
                    hits.push((pod, status));
                }
            }
        }
        match hits.as_slice() {
            [] => Found::Missing,
            [(pod, status)] => Found::Container(pod, status),
            many => Found::Ambiguous(
                many.iter()
                    .map(|(p, _)| {
                        format!(
                            "{}/{} ({})",
                            p.metadata.namespace, p.metadata.name, p.metadata.uid
                        )
                    })
                    .collect(),
            ),
        }
    }
}

/// `containerd://<id>` → `<id>`.
fn bare_id(container_id: &str) -> Option<&str> {
    let (_, id) = container_id.split_once("://")?;
    (!id.is_empty()).then_some(id)
}

/// The `k8s:*` selectors of a container in a pod.
pub fn selectors(pod: &Pod, status: &ContainerStatus) -> Vec<Selector> {
    let m = &pod.metadata;
    let mut out = vec![
        Selector::K8sNs(m.namespace.clone()),
        Selector::K8sSa(pod.spec.service_account_name.clone()),
        Selector::K8sPodUid(m.uid.clone()),
        Selector::K8sPodName(m.name.clone()),
        Selector::K8sContainerName(status.name.clone()),
        Selector::K8sNodeName(pod.spec.node_name.clone()),
    ];
    for (k, v) in &m.labels {
        out.push(Selector::K8sPodLabel(k.clone(), v.clone()));
    }
    for owner in &m.owner_references {
        out.push(Selector::K8sPodOwner(
            owner.kind.clone(),
            owner.name.clone(),
        ));
    }
    // The image as the pod spec names it, as the kubelet reports it, and as the digest the runtime
    // pulled (`repo@sha256:...`, without Docker's `docker-pullable://`).
    let spec_image = pod
        .spec
        .containers
        .iter()
        .chain(&pod.spec.init_containers)
        .chain(&pod.spec.ephemeral_containers)
        .find(|c| c.name == status.name)
        .map(|c| c.image.clone());
    let digest = status
        .image_id
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&status.image_id)
        .to_owned();
    for image in [spec_image.unwrap_or_default(), status.image.clone(), digest] {
        out.push(Selector::K8sContainerImage(image));
    }
    // Kubernetes never leaves these empty for a running pod; an empty one matches nothing.
    out.retain(|s| !s.value().is_empty() || matches!(s, Selector::K8sPodLabel(..)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = include_str!("../../../tests/fixtures/k8s/pods.json");

    fn list() -> PodList {
        serde_json::from_str(LIST).unwrap()
    }

    fn loc(pod: Option<&str>, id: &str) -> Location {
        Location {
            pod_uid: pod.map(str::to_owned),
            container_id: id.into(),
        }
    }

    const SHOP_UID: &str = "6c1b8a52-3d6e-4f0a-9a41-0c7e5b2d9f13";
    const CART: &str = "1f3e5d7c9b2a4c6e8f0a1b3c5d7e9f2a4b6c8d0e1f3a5b7c9d2e4f6a8b0c1d3e";
    const MIGRATE: &str = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d";

    #[test]
    fn regular_container_selectors() {
        let list = list();
        let Found::Container(pod, status) = list.find(&loc(Some(SHOP_UID), CART)) else {
            panic!("cart not found");
        };
        let text: Vec<String> = selectors(pod, status)
            .iter()
            .map(std::string::ToString::to_string)
            .collect();
        for want in [
            "k8s:ns:shop",
            "k8s:sa:cart",
            &format!("k8s:pod-uid:{SHOP_UID}"),
            "k8s:pod-name:cart-7d4b9c6f5-x2x7q",
            "k8s:pod-label:app:cart",
            "k8s:pod-label:app.kubernetes.io/part-of:shop",
            "k8s:pod-owner:ReplicaSet:cart-7d4b9c6f5",
            "k8s:container-name:server",
            "k8s:container-image:registry.example/shop/cart:2.4",
            "k8s:container-image:registry.example/shop/cart@sha256:5e1f0c3b7a9d2e4f6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1f",
            "k8s:node-name:node-a",
        ] {
            assert!(text.iter().any(|t| t == want), "missing {want} in {text:?}");
        }
    }

    #[test]
    fn init_container_and_namespaced_lookup() {
        let list = list();
        let Found::Container(pod, status) = list.find(&loc(None, MIGRATE)) else {
            panic!("init container not found");
        };
        assert_eq!(status.name, "migrate");
        assert_eq!(pod.metadata.uid, SHOP_UID);
        // Docker's `docker-pullable://` prefix is dropped from the digest.
        assert!(selectors(pod, status).contains(&Selector::K8sContainerImage(
            "registry.example/tools/migrate@sha256:0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9".into()
        )));
    }

    #[test]
    fn wrong_pod_uid_missing_and_ambiguous() {
        let list = list();
        assert!(matches!(
            list.find(&loc(Some("00000000-0000-0000-0000-000000000000"), CART)),
            Found::Missing
        ));
        // The late container has a spec but no containerID yet.
        assert!(matches!(
            list.find(&loc(None, &"ab".repeat(32))),
            Found::Missing
        ));
        let dup = "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
        match list.find(&loc(None, dup)) {
            Found::Ambiguous(pods) => assert_eq!(pods.len(), 2, "{pods:?}"),
            other => panic!("{other:?}"),
        }
    }
}
