//! The component's leader Lease: `ksit_component_leader`, and the gate that lets only the
//! leader's sidecar export the series every replica's would see alike.

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::watch::{self as watches, by_name};
use crate::metrics::{Family, Gauges, Registry};

pub const LEADER: Family = Family {
    name: "ksit_component_leader",
    help: "1 when this pod holds the component's leader Lease (KSIT_LEADER_LEASE).",
};

#[derive(Clone)]
pub struct Families {
    leader: Gauges<()>,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        Self {
            leader: registry.gauges(LEADER),
        }
    }
}

/// Follows the Lease `name` in `namespace`, telling `leader` whether `pod` holds it.
pub async fn run(
    client: Client,
    namespace: String,
    name: String,
    pod: String,
    leader: watch::Sender<bool>,
    families: Families,
    watch_families: watches::Families,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, by_name(&name)).default_backoff());
    let mut changes = std::pin::pin!(watches::changes("lease", stream, None, watch_families));
    while changes.next().await.is_some() {
        let is_leader = store.state().first().is_some_and(|l| holds(l, &pod));
        families.leader.set(&(), f64::from(u8::from(is_leader)));
        leader.send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader);
    }
}

/// controller-runtime's leader identity is `<hostname>_<uuid>`, and a pod's hostname is its name.
fn holds(lease: &Lease, pod: &str) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .is_some_and(|h| {
            h == pod
                || h.strip_prefix(pod)
                    .is_some_and(|rest| rest.starts_with('_'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn lease_holder_is_matched_by_pod_name_prefix() {
        let lease = |h: &str| Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(h.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(holds(&lease("mgr-abc_0d2c5e4e-1111"), "mgr-abc"));
        assert!(holds(&lease("mgr-abc"), "mgr-abc"));
        assert!(!holds(&lease("mgr-abcd_0d2c"), "mgr-abc"));
        assert!(!holds(&Lease::default(), "mgr-abc"));
    }
}
