//! Sharded export (`KSIT_CR_METRICS=sharded`): each replica's sidecar exports its share of the
//! Integrations, IntegrationTargets and ManagedClusters, and the shares together cover every
//! object once.
//!
//! An object belongs to the member that scores highest for its UID (rendezvous hashing): a
//! member that comes moves to it only the objects it now wins, and one that goes moves only its
//! own, spread over the others, where `hash mod n` would move most of them. The members are the
//! shards `0`..`TOTAL` of `KSIT_SHARD`, or else the Running pods of the component's workload
//! (a terminating pod is no longer one, so its sidecar stops exporting as the others start).
//! The API server cannot filter by hash, so each sidecar still reads every object's events, but
//! renders and keeps only its own.

use std::borrow::Cow;
use std::hash::Hasher;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::Selector;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use siphasher::sip::SipHasher13;
use tokio::sync::watch;

use super::watch as watches;
use crate::config::Shard;
use crate::labels;
use crate::metrics::{Family, Gauges, Key, Registry};
use crate::status::Board;

labels! {
    /// How the shards are known (`static`: KSIT_SHARD; `pods`: the workload's Running pods),
    /// this sidecar's place among them (`-1` while it is not one) and how many there are.
    pub struct Info { source, shard, shards }
}

pub const INFO: Family = Family {
    name: "ksit_exporter_shard_info",
    help: "The shard this sidecar exports with KSIT_CR_METRICS=sharded: its index among the members (sorted by name; -1 while it is not one) and their number; always 1.",
};
pub const MEMBERS: Family = Family {
    name: "ksit_exporter_shard_members",
    help: "Members the objects are sharded over (KSIT_SHARD's TOTAL, or the workload's Running pods).",
};

#[derive(Clone)]
pub struct Families {
    info: Gauges<Info>,
    members: Gauges<()>,
    board: Board,
}

impl Families {
    pub fn register(registry: &Registry) -> Self {
        let members = registry.gauges(MEMBERS);
        // Absent unless sharded.
        members.remove(&());
        Self {
            info: registry.gauges(INFO),
            members,
            board: registry.board().clone(),
        }
    }

    fn show(&self, source: &str, a: &Assignment) {
        self.info.clear();
        self.info.set(
            &Info {
                source: source.to_string(),
                shard: a.me.map_or("-1".to_string(), |i| i.to_string()),
                shards: a.members.len().to_string(),
            },
            1.0,
        );
        self.members.set(&(), a.members.len() as f64);
        self.board.set_shard(Some(a.describe()));
    }
}

/// The members the objects are spread over, and which of them this sidecar is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Sorted, each once.
    members: Arc<[Box<str>]>,
    me: Option<usize>,
}

impl Assignment {
    pub fn new(mut members: Vec<Box<str>>, me: &str) -> Self {
        members.sort();
        members.dedup();
        let me = members.iter().position(|m| &**m == me);
        Self {
            members: members.into(),
            me,
        }
    }

    /// The shards of `KSIT_SHARD`: members named by their index.
    pub fn fixed(shard: Shard) -> Self {
        let members = (0..shard.total).map(|i| i.to_string().into()).collect();
        Self::new(members, &shard.index.to_string())
    }

    /// Whether this sidecar is one of the members (else it exports nothing).
    pub fn is_member(&self) -> bool {
        self.me.is_some()
    }

    /// Whether the object `key` (of its UID) is this sidecar's to export.
    pub fn owns(&self, key: Key) -> bool {
        self.me.is_some() && self.winner(key) == self.me
    }

    fn winner(&self, key: Key) -> Option<usize> {
        // Ties (a 64-bit collision) go to the member first in name order, alike everywhere.
        let mut best: Option<(u64, usize)> = None;
        for (i, member) in self.members.iter().enumerate() {
            let s = score(member, key);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether moving from `old` to this may give this sidecar objects it did not own (then
    /// they must be read again): it has just become a member, or a member went away. A member
    /// that comes only takes objects away.
    pub fn gains_from(&self, old: &Assignment) -> bool {
        match (old.me, self.me) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(_), Some(_)) => old.members.iter().any(|m| !self.members.contains(m)),
        }
    }

    fn describe(&self) -> String {
        match self.me {
            Some(i) => format!(
                "shard {i} of {} ({})",
                self.members.len(),
                self.members.join(", ")
            ),
            None => format!(
                "not a member yet, so none of the objects (members: {})",
                if self.members.is_empty() {
                    "none".to_string()
                } else {
                    self.members.join(", ")
                }
            ),
        }
    }
}

/// A member's score for an object. SipHash-1-3 with fixed keys is specified (as is the key,
/// a SipHash of the UID), so sidecars of different builds (a rolling upgrade) agree on it.
fn score(member: &str, key: Key) -> u64 {
    let mut h = SipHasher13::new_with_keys(0x6b73_6974, 0x7368_6172_6473);
    h.write(member.as_bytes());
    h.write_u8(0xff);
    h.write(&key.to_le_bytes());
    h.finish()
}

/// The objects' sharding, for the collectors that export them: `None` when not sharded.
pub type Shards = Option<watch::Receiver<Assignment>>;

/// The shards of `KSIT_SHARD`: they never change.
pub fn fixed(shard: Shard, families: &Families) -> watch::Receiver<Assignment> {
    let a = Assignment::fixed(shard);
    families.show("static", &a);
    // The sender goes: receivers keep the value, and never see a change.
    watch::channel(a).1
}

/// Who the component's replicas are, as the component collector finds them: the label
/// selector of the pod's workload, or, for a pod no workload owns, none but itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Peers {
    #[default]
    Unknown,
    Alone,
    Selected(Selector),
}

/// A pod as membership reads it: its name, whether it is going, and its phase.
#[derive(Clone, Debug, Default)]
struct Member {
    metadata: ObjectMeta,
    running: bool,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Meta {
            name: Option<String>,
            namespace: Option<String>,
            resource_version: Option<String>,
            deletion_timestamp: Option<serde::de::IgnoredAny>,
        }
        #[derive(Deserialize)]
        struct Status {
            phase: Option<String>,
        }
        #[derive(Deserialize)]
        struct Wire {
            metadata: Option<Meta>,
            status: Option<Status>,
        }
        let wire = Wire::deserialize(d)?;
        let meta = wire.metadata;
        let going = meta
            .as_ref()
            .is_some_and(|m| m.deletion_timestamp.is_some());
        let running = wire.status.and_then(|s| s.phase).as_deref() == Some("Running");
        Ok(Member {
            metadata: meta.map_or_else(ObjectMeta::default, |m| ObjectMeta {
                name: m.name,
                namespace: m.namespace,
                resource_version: m.resource_version,
                ..ObjectMeta::default()
            }),
            running: running && !going,
        })
    }
}

impl Resource for Member {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("Pod")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("pods")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Follows the Running pods `peers` selects in `namespace` and tells `shards` what they are,
/// `pod` being this sidecar's.
pub async fn run(
    client: Client,
    namespace: String,
    pod: String,
    mut peers: watch::Receiver<Peers>,
    shards: watch::Sender<Assignment>,
    families: Families,
    watch_families: watches::Families,
) {
    let publish = |a: Assignment| {
        families.show("pods", &a);
        shards.send_if_modified(|old| {
            if *old == a {
                return false;
            }
            tracing::info!(from = %old.describe(), to = %a.describe(), "shard members changed");
            *old = a;
            true
        });
    };
    loop {
        let current = peers.borrow_and_update().clone();
        let following = async {
            match &current {
                Peers::Unknown => std::future::pending::<()>().await,
                Peers::Alone => {
                    tracing::info!(
                        pod,
                        "no Deployment or StatefulSet owns this pod: it is the only shard"
                    );
                    publish(Assignment::new(vec![pod.as_str().into()], &pod));
                    std::future::pending::<()>().await
                }
                Peers::Selected(selector) => {
                    let api: Api<Member> = Api::namespaced(client.clone(), &namespace);
                    let config = watcher::Config::default().labels_from(selector);
                    let (store, writer) = reflector::store();
                    let stream = reflector(writer, watcher(api, config).default_backoff());
                    let mut changes =
                        std::pin::pin!(watches::changes("shard", stream, watch_families.clone()));
                    while changes.next().await.is_some() {
                        let members = store
                            .state()
                            .iter()
                            .filter(|m| m.running)
                            .filter_map(|m| m.metadata.name.as_deref().map(Into::into))
                            .collect();
                        publish(Assignment::new(members, &pod));
                    }
                }
            }
        };
        tokio::select! {
            () = following => {}
            changed = peers.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Key> {
        (0..n)
            .map(|i| crate::metrics::key(&format!("0b8e{i:04x}-6f1c-4e2a-9d1b-{i:012x}")))
            .collect()
    }

    fn members(names: &[&str], me: &str) -> Assignment {
        Assignment::new(names.iter().map(|&n| n.into()).collect(), me)
    }

    /// Every object is exported by exactly one member, and the shares are about even.
    #[test]
    fn the_shards_cover_every_object_once() {
        let names = ["mgr-a", "mgr-b", "mgr-c"];
        let all = keys(30_000);
        let mut shares = [0usize; 3];
        for key in &all {
            let owners: Vec<usize> = (0..3)
                .filter(|&i| members(&names, names[i]).owns(*key))
                .collect();
            assert_eq!(owners.len(), 1, "{key:x}: {owners:?}");
            shares[owners[0]] += 1;
        }
        for s in shares {
            assert!((9_000..=11_000).contains(&s), "uneven: {shares:?}");
        }
    }

    /// A member that goes moves only its own objects, and one that comes takes only the objects
    /// it now wins; `hash mod n` would move about two thirds of them.
    #[test]
    fn a_member_coming_or_going_moves_only_its_share() {
        let all = keys(20_000);
        let owner = |names: &[&str], key: Key| {
            names
                .iter()
                .position(|&n| members(names, n).owns(key))
                .map(|i| names[i].to_string())
        };
        let three = ["a", "b", "c"];
        let two = ["a", "c"];
        let four = ["a", "b", "c", "d"];
        let mut moved_going = 0usize;
        let mut moved_coming = 0usize;
        for key in &all {
            let before = owner(&three, *key);
            let after = owner(&two, *key);
            if before != after {
                assert_eq!(before.as_deref(), Some("b"), "only b's objects move");
                moved_going += 1;
            }
            let after = owner(&four, *key);
            if before != after {
                assert_eq!(after.as_deref(), Some("d"), "only to the new member");
                moved_coming += 1;
            }
        }
        let third = all.len() / 3;
        assert!(
            moved_going.abs_diff(third) < all.len() / 50,
            "{moved_going}"
        );
        assert!(
            moved_coming.abs_diff(all.len() / 4) < all.len() / 50,
            "{moved_coming}"
        );
    }

    #[test]
    fn fixed_shards_are_named_by_index_and_agree_with_each_other() {
        let all = keys(3_000);
        for key in &all {
            let owners = (0..4)
                .filter(|&index| Assignment::fixed(Shard { index, total: 4 }).owns(*key))
                .count();
            assert_eq!(owners, 1);
        }
        let one = Assignment::fixed(Shard { index: 0, total: 1 });
        assert!(
            all.iter().all(|&k| one.owns(k)),
            "one shard owns everything"
        );
    }

    #[test]
    fn a_sidecar_that_is_not_a_member_owns_nothing() {
        let a = members(&["a", "b"], "c");
        assert!(keys(100).iter().all(|&k| !a.owns(k)));
        assert!(!Assignment::default().owns(crate::metrics::key("x")));
    }

    #[test]
    fn objects_are_read_again_only_when_this_sidecar_may_gain_some() {
        let abc = members(&["a", "b", "c"], "a");
        assert!(
            !members(&["a", "b", "c", "d"], "a").gains_from(&abc),
            "d only takes"
        );
        assert!(
            members(&["a", "c"], "a").gains_from(&abc),
            "b's objects are shared out"
        );
        assert!(abc.gains_from(&members(&["b", "c"], "a")), "a joins");
        assert!(
            !members(&["b", "c"], "a").gains_from(&abc),
            "a leaves: nothing to read"
        );
    }

    #[test]
    fn membership_reads_running_pods_that_are_not_going() {
        let pod = |phase: &str, deleting: bool| -> Member {
            let mut meta = serde_json::json!({"name": "p"});
            if deleting {
                meta["deletionTimestamp"] = "2026-12-07T10:00:00Z".into();
            }
            serde_json::from_value(
                serde_json::json!({"metadata": meta, "status": {"phase": phase}}),
            )
            .expect("a pod")
        };
        assert!(pod("Running", false).running);
        assert!(!pod("Running", true).running);
        assert!(!pod("Pending", false).running);
        let bare: Member = serde_json::from_value(serde_json::json!({})).expect("no fields");
        assert!(!bare.running);
    }
}
