//! The component's leader Lease: `ksit_component_leader`, and the gate that lets only the
//! leader's sidecar export the series every replica's would see alike.
//!
//! A pod leads while it holds an unexpired Lease: the holder that stops renewing (its manager
//! died, nobody has taken over yet) no longer leads once `renewTime + leaseDurationSeconds` has
//! passed. The expiry is re-evaluated on a timer, with no API call of its own.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::watch::{self as watches, by_name};
use crate::metrics::{Family, Gauges, Registry};
use crate::status::Board;

pub const LEADER: Family = Family {
    name: "ksit_component_leader",
    help: "1 when this pod holds the component's leader Lease (KSIT_LEADER_LEASE).",
};

#[derive(Clone)]
pub struct Families {
    leader: Gauges<()>,
    board: Board,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        let leader = registry.gauges(LEADER);
        // Unknown until the Lease is read (never, outside a pod): absent rather than 0.
        leader.remove(&());
        Self {
            leader,
            board: registry.board().clone(),
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
    let mut changes = std::pin::pin!(watches::changes("lease", stream, watch_families));
    let mut expires_in: Option<Duration> = None;
    loop {
        let expiry = async {
            match expires_in {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.next() => if changed.is_none() { return },
            () = expiry => {}
        }
        let lease = store.state().first().cloned();
        let is_leader;
        (is_leader, expires_in) = leadership(lease.as_deref(), &pod, Timestamp::now());
        families.leader.set(&(), f64::from(u8::from(is_leader)));
        families.board.set_leader(Some(is_leader));
        leader.send_if_modified(|l| std::mem::replace(l, is_leader) != is_leader);
    }
}

/// Whether `pod` leads at `now`, and, if it does and the Lease says until when, how long until
/// that is to be looked at again. Without `renewTime` or `leaseDurationSeconds` the holder leads
/// until the Lease changes.
fn leadership(lease: Option<&Lease>, pod: &str, now: Timestamp) -> (bool, Option<Duration>) {
    let Some(lease) = lease.filter(|l| holds(l, pod)) else {
        return (false, None);
    };
    let spec = lease.spec.as_ref();
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let duration = spec.and_then(|s| s.lease_duration_seconds);
    let (Some(renewed), Some(duration)) = (renewed, duration) else {
        return (true, None);
    };
    let lasts = Duration::from_secs(u64::try_from(duration).unwrap_or(0));
    // A renewTime too late for the calendar is an expiry beyond any timer: held until it changes.
    let Ok(expires) = renewed.checked_add(lasts) else {
        return (true, None);
    };
    match Duration::try_from(expires.duration_since(now)) {
        // Checked again a little after the expiry, should the Lease not change before then.
        Ok(left) if !left.is_zero() => (true, Some(left + Duration::from_millis(10))),
        _ => (false, None),
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

    #[test]
    fn the_holder_leads_until_its_lease_expires() {
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ksit.io"},
            "spec": {"holderIdentity": "mgr-abc_1", "renewTime": "2026-11-27T10:00:00.000000Z",
                     "leaseDurationSeconds": 15}
        }))
        .expect("lease");
        let at = |t: &str| t.parse::<Timestamp>().expect("timestamp");
        assert_eq!(
            leadership(Some(&lease), "mgr-abc", at("2026-11-27T10:00:05Z")),
            (true, Some(Duration::from_millis(10_010)))
        );
        assert_eq!(
            leadership(Some(&lease), "mgr-abc", at("2026-11-27T10:00:15Z")),
            (false, None),
            "expired"
        );
        assert_eq!(
            leadership(Some(&lease), "mgr-other", at("2026-11-27T10:00:05Z")),
            (false, None)
        );
        assert_eq!(
            leadership(None, "mgr-abc", at("2026-11-27T10:00:05Z")),
            (false, None)
        );
        let unrenewed: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ksit.io"}, "spec": {"holderIdentity": "mgr-abc"}
        }))
        .expect("lease");
        assert_eq!(
            leadership(Some(&unrenewed), "mgr-abc", at("2030-01-01T00:00:00Z")),
            (true, None),
            "no renewTime: held until the Lease changes"
        );
    }
}
