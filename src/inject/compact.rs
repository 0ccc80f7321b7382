//! A pod read compactly: only what [`super::inject`] reads and changes, so that memory follows
//! the size of that part, not the shape of the rest of the pod. The webhook reads a review's
//! pod this way, and `ksit-exporter inject` a manifest's pod template: a pod as sent, decoded
//! whole into typed structs, costs about 35 times its bytes when dense (many env entries or
//! volumes) and far more when it has many containers (each a typed struct of about 1.5 KiB).
//!
//! What is left out is the same before and after inject, so it adds nothing to a diff of the
//! two: the patch of the compact pod, its list indices mapped back ([`Layout::remap`]), is the
//! whole pod's (the webhook's tests compare them for thousands of random pods).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec, Probe, Volume};
use kube::core::ObjectMeta;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Elided, Traits};

/// The part of a pod that [`super::inject`] reads and changes, and nothing else: decoded
/// whole, a dense pod (92,000 env entries in 3 MB) costs about 35 times its bytes, twice. What
/// is left out is the same on both sides of the patch, so it adds no operation: the patch is
/// the one a diff of the whole pods gives (a test checks it).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPod {
    #[serde(default)]
    metadata: SlimMeta,
    spec: Option<SlimSpec>,
}

/// Labels and annotations keep only the keys inject reads or writes; the map itself is kept
/// (empty) when the pod has one, so that a key added to it is one `add` of that key.
#[derive(Deserialize, Default)]
struct SlimMeta {
    #[serde(default, deserialize_with = "relevant")]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "relevant")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimSpec {
    #[serde(default)]
    containers: Containers,
    init_containers: Option<Containers>,
    volumes: Option<Volumes>,
    host_network: Option<bool>,
    share_process_namespace: Option<bool>,
    restart_policy: Option<String>,
}

/// One container as inject reads it, for as long as it takes to see whether to keep it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SlimContainer {
    #[serde(default)]
    name: String,
    image: Option<String>,
    args: Option<Vec<String>>,
    command: Option<Vec<String>>,
    ports: Option<Vec<ContainerPort>>,
    liveness_probe: Option<Probe>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<Probe>,
}

impl From<SlimContainer> for Container {
    fn from(c: SlimContainer) -> Container {
        Container {
            name: c.name,
            image: c.image,
            args: c.args,
            command: c.command,
            ports: c.ports,
            liveness_probe: c.liveness_probe,
            readiness_probe: c.readiness_probe,
            startup_probe: c.startup_probe,
            ..Container::default()
        }
    }
}

/// Managers kept whole per list: two already refuse the pod (their metrics cannot both be
/// moved), and then only the names of the others are read ([`Elided::managers`]).
const KEPT_MANAGERS: usize = 2;

thread_local! {
    /// A name whose first container in each list [`Containers`] keeps whole: set by
    /// [`read_pod`] around its second reading, when the one manager's name is known.
    static KEEP_NAMED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// A list of containers read compactly: whole only the few containers inject's decision can
/// depend on (see [`Traits`]): the first one (kubectl's default container), the first named as
/// the sidecar, the managers (up to [`KEPT_MANAGERS`]), the first other one that would clash
/// with the sidecar, the first other one naming a health port, and the first of the name in
/// [`KEEP_NAMED`]. Of the others only the ports they use are kept. Decoded whole, each
/// container is a typed struct of about 1.5 KiB, so a 3 MB pod of 130,000 tiny containers cost
/// hundreds of MiB; this costs as much as the few kept containers.
#[derive(Default)]
struct Containers {
    kept: Vec<Container>,
    positions: Positions,
    /// The names of every manager of the list, in order.
    managers: Vec<String>,
    kept_managers: usize,
    /// The ports that the containers left out use.
    elided: Elided,
}

/// Where the kept entries of a list were in the list as sent.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Positions {
    /// Each kept entry's index in the list as sent.
    pub at: Vec<usize>,
    /// The length of the list as sent.
    pub len: usize,
}

impl Positions {
    /// The position in the list as sent of the compact list's entry `i`: past the kept ones,
    /// the entries inject appended.
    pub fn original(&self, i: usize) -> usize {
        match self.at.get(i) {
            Some(at) => *at,
            None => self.len + (i - self.at.len()),
        }
    }
}

impl<'de> Deserialize<'de> for Containers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Containers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of containers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Containers, A::Error> {
                let named = KEEP_NAMED.with(|k| k.borrow().clone());
                let mut list = Containers::default();
                // Whether the first container of each kind was seen.
                let (mut sidecar, mut conflict, mut health, mut of_name) =
                    (false, false, false, false);
                while let Some(slim) = seq.next_element::<SlimContainer>()? {
                    let index = list.positions.len;
                    list.positions.len += 1;
                    let c = Container::from(slim);
                    let t = Traits::of(&c);
                    // The first of the manager's name is the one inject changes: what it
                    // clashes with or names before does not tell whether it does after.
                    let changed = named.as_deref() == Some(c.name.as_str()) && !of_name;
                    let settled = !t.manager && !changed;
                    let keep = index == 0
                        || changed
                        || (t.sidecar_named && !sidecar)
                        || (t.manager && list.kept_managers < KEPT_MANAGERS)
                        || (settled && t.conflict && !conflict)
                        || (settled && t.health && !health);
                    sidecar |= t.sidecar_named;
                    conflict |= settled && t.conflict;
                    health |= settled && t.health;
                    of_name |= changed;
                    if t.manager {
                        list.managers.push(c.name.clone());
                        list.kept_managers += usize::from(keep);
                    }
                    if keep {
                        list.positions.at.push(index);
                        list.kept.push(c);
                    } else {
                        list.elided.add_ports(&c);
                    }
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(List)
    }
}

/// The pod's volumes as inject reads them: whether one has the name the sidecar's own
/// volume needs (the first such is kept, by name), and how many there are.
#[derive(Default)]
struct Volumes {
    kept: Vec<Volume>,
    positions: Positions,
}

impl<'de> Deserialize<'de> for Volumes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Named {
            #[serde(default)]
            name: String,
        }
        struct List;
        impl<'de> Visitor<'de> for List {
            type Value = Volumes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of volumes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Volumes, A::Error> {
                let mut list = Volumes::default();
                while let Some(volume) = seq.next_element::<Named>()? {
                    if volume.name == super::ITS_VOLUME && list.kept.is_empty() {
                        list.positions.at.push(list.positions.len);
                        list.kept.push(Volume {
                            name: volume.name,
                            ..Volume::default()
                        });
                    }
                    list.positions.len += 1;
                }
                Ok(list)
            }
        }
        deserializer.deserialize_seq(List)
    }
}

/// Where the lists of a pod read compactly were in the pod as sent: the patch of the compact
/// pod, its list indices mapped back ([`Layout::remap`]), is the patch of the whole pod.
#[derive(Debug, Default)]
pub struct Layout {
    pub containers: Positions,
    pub init_containers: Option<Positions>,
    pub volumes: Option<Positions>,
}

impl Layout {
    /// The positions of the pod spec's list `key`, if it is one read compactly.
    pub fn list(&self, key: &str) -> Option<&Positions> {
        match key {
            "containers" => Some(&self.containers),
            "initContainers" => self.init_containers.as_ref(),
            "volumes" => self.volumes.as_ref(),
            _ => None,
        }
    }

    /// Maps the compact pod's list indices in `patch` to the pod's as sent. A diff compares
    /// arrays index by index and inject only appends to them, so the left-out entries, equal
    /// on both sides, would have added no operation and the kept ones keep their order.
    pub fn remap(&self, mut patch: Patch) -> Patch {
        for op in &mut patch.0 {
            let path = match op {
                PatchOperation::Add(op) => &mut op.path,
                PatchOperation::Remove(op) => &mut op.path,
                PatchOperation::Replace(op) => &mut op.path,
                PatchOperation::Move(op) => &mut op.path,
                PatchOperation::Copy(op) => &mut op.path,
                PatchOperation::Test(op) => &mut op.path,
            };
            let mut tokens: Vec<Token> = path.tokens().collect();
            let list = match tokens.get(..2).map(|t| (t[0].decoded(), t[1].decoded())) {
                Some((spec, list)) if spec == "spec" => self.list(&list),
                _ => None,
            };
            let index = tokens
                .get(2)
                .and_then(|t| t.decoded().parse::<usize>().ok());
            if let (Some(list), Some(index)) = (list, index) {
                tokens[2] = Token::new(list.original(index).to_string());
                *path = PointerBuf::from_tokens(tokens);
            }
        }
        patch
    }
}

/// A pod read compactly by `decode` (which reads a [`SlimPod`] from wherever the pod is): the
/// pod inject is given, what was left out of it, and where its lists' entries were. A pod with
/// one manager is read again to keep the first container of the manager's name too, the one
/// inject moves the metrics of.
pub fn read<E>(decode: impl Fn() -> Result<SlimPod, E>) -> Result<Compact, E> {
    let read = |named: Option<String>| {
        KEEP_NAMED.with(|k| *k.borrow_mut() = named);
        let slim = decode();
        KEEP_NAMED.with(|k| k.borrow_mut().take());
        slim
    };
    let mut slim = read(None)?;
    if let Some(spec) = &slim.spec {
        let lists = || std::iter::once(&spec.containers).chain(spec.init_containers.iter());
        let mut managers = lists().flat_map(|l| &l.managers);
        let elided = lists().any(|l| l.kept.len() < l.positions.len);
        if let (Some(name), None, true) = (managers.next(), managers.next(), elided) {
            let name = name.clone();
            slim = read(Some(name))?;
        }
    }
    Ok(slim.into_parts())
}

/// A pod read compactly: see [`read`].
#[derive(Debug)]
pub struct Compact {
    /// What inject is given: only the containers and volumes it can depend on.
    pub pod: Pod,
    /// What inject is told of the containers left out.
    pub elided: Elided,
    /// Where the kept entries were in the pod as sent.
    pub layout: Layout,
}

impl SlimPod {
    fn into_parts(self) -> Compact {
        let mut elided = Elided::default();
        let mut layout = Layout::default();
        let metadata = ObjectMeta {
            labels: self.metadata.labels,
            annotations: self.metadata.annotations,
            ..ObjectMeta::default()
        };
        let spec = self.spec.map(|s| {
            let (mut managers, mut kept_managers) = (Vec::new(), 0);
            let mut take = |list: Containers| {
                elided.ports.extend(list.elided.ports);
                kept_managers += list.kept_managers;
                managers.extend(list.managers);
                (list.kept, list.positions)
            };
            let (containers, positions) = take(s.containers);
            layout.containers = positions;
            let init_containers = s.init_containers.map(|list| {
                let (kept, positions) = take(list);
                layout.init_containers = Some(positions);
                kept
            });
            if managers.len() > kept_managers {
                elided.managers = Some(managers);
            }
            let volumes = s.volumes.map(|list| {
                layout.volumes = Some(list.positions);
                list.kept
            });
            PodSpec {
                containers,
                init_containers,
                volumes,
                host_network: s.host_network,
                share_process_namespace: s.share_process_namespace,
                restart_policy: s.restart_policy,
                ..PodSpec::default()
            }
        });
        let pod = Pod {
            metadata,
            spec,
            status: None,
        };
        Compact {
            pod,
            elided,
            layout,
        }
    }
}

/// Whether inject reads or writes this label or annotation: its own `ksit.io/` keys and the
/// one kubectl reads for the default container.
fn is_relevant(key: &str) -> bool {
    key.starts_with("ksit.io/") || key == super::DEFAULT_CONTAINER_ANNOTATION
}

/// A string map with only its [`is_relevant`] entries; the others are skipped, allocating
/// nothing that outlives the key.
fn relevant<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Keep;
    impl<'de> Visitor<'de> for Keep {
        type Value = Option<BTreeMap<String, String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of strings")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if is_relevant(&key) {
                    kept.insert(key.into_owned(), map.next_value::<String>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    deserializer.deserialize_option(Keep)
}
