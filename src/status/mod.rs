//! The status page at `/`: what the sidecar knows, at a glance, for a person with a
//! port-forward. Server-rendered HTML, inline CSS, no script and no external asset.
//!
//! Nothing is fetched to render it: each object's row is written by its collector beside its
//! series and kept with them (a [`Note`] in [`crate::metrics::Objects`]); the rest comes from the
//! [`Board`] and is at most a few hundred bytes per collector or probe. The page is rendered
//! on a request at most once per change of the registry's state, the counter /metrics' cache
//! is keyed by, and never grows past [`MAX_ROWS`] rows a table: failing and unknown objects
//! first, then a line saying how many more /metrics holds.

mod board;
pub mod html;
pub mod rows;

use std::fmt::Write;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

pub use board::{Board, CollectorNote, Component, Notes, Probe};

use crate::metrics::{Note, Objects, Registry};
use html::{attr, cell, text};

/// Rows shown per table; the rest are counted.
pub const MAX_ROWS: usize = 200;

/// Content type of the page.
pub const HTML: &str = "text/html; charset=utf-8";

/// Shared by the exporter's and the webhook's pages: small, readable, light or dark.
pub const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;margin:.3em 0}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.ready,td.up,td.ok{color:#0a6b0a;font-weight:600}td.failing,td.down,td.bad{color:#b00020;font-weight:600}\
td.unknown,td.pending{color:#8a6d00;font-weight:600}.muted{color:#666}code{font-size:.95em}\
@media(prefers-color-scheme:dark){body{color:#ddd;background:#161616}th{background:#262626}th,td{border-color:#444}\
td.ready,td.up,td.ok{color:#6c6}td.failing,td.down,td.bad{color:#f66}td.unknown,td.pending{color:#db3}.muted{color:#999}}";

/// The exporter's page and its cache.
pub struct Page {
    registry: Arc<Registry>,
    clusters: Objects,
    integrations: Objects,
    cache: Cache,
}

impl Page {
    pub fn new(registry: Arc<Registry>, clusters: Objects, integrations: Objects) -> Self {
        Self {
            registry,
            clusters,
            integrations,
            cache: Cache::default(),
        }
    }

    /// The page of the current state, rendered at most once per change.
    pub fn body(&self) -> Bytes {
        self.cache.get(&self.registry, || {
            render(
                &self.registry.board().notes(),
                &Group::of(&self.clusters, rows::CLUSTER_RANKS),
                &Group::of(&self.integrations, rows::INTEGRATION_RANKS),
            )
        })
    }
}

/// A page's last rendering, keyed by the registry's change counter: the exporter's and the
/// webhook's pages render at most once per change of state.
#[derive(Default)]
pub struct Cache(Mutex<Option<(u64, Bytes)>>);

impl Cache {
    /// The page for the registry's current state: the cached one, or `render`'s.
    pub fn get(&self, registry: &Registry, render: impl FnOnce() -> String) -> Bytes {
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Read before rendering: a change during the render makes the next request render again.
        let version = registry.version();
        if let Some((seen, body)) = cache.as_ref()
            && *seen == version
        {
            return body.clone();
        }
        let body = Bytes::from(render());
        *cache = Some((version, body.clone()));
        body
    }
}

/// A table's rows as the page needs them: the first [`MAX_ROWS`] by rank, and counts per rank.
pub struct Group {
    pub rows: Vec<Box<str>>,
    pub counts: Vec<usize>,
    pub exported: bool,
}

impl Group {
    /// Collects from `objects`: ranks are indexes into `ranks`, the names counted.
    pub fn of(objects: &Objects, ranks: &[&str]) -> Self {
        let exported = objects.exported();
        objects.with_notes(|notes| Self::from_notes(notes, ranks.len(), exported))
    }

    pub fn from_notes(
        notes: &mut dyn Iterator<Item = &Note>,
        ranks: usize,
        exported: bool,
    ) -> Self {
        let mut counts = vec![0; ranks];
        let mut shown: Vec<&Note> = Vec::new();
        for note in notes {
            if let Some(c) = counts.get_mut(usize::from(note.rank)) {
                *c += 1;
            }
            shown.push(note);
        }
        // Rows start with their kind, namespace and name, so this orders those within a rank.
        shown.sort_unstable_by(|a, b| (a.rank, a.key()).cmp(&(b.rank, b.key())));
        Self {
            rows: shown
                .iter()
                .take(MAX_ROWS)
                .map(|n| n.row().into())
                .collect(),
            counts,
            exported,
        }
    }

    fn total(&self) -> usize {
        self.counts.iter().sum()
    }
}

/// The whole page.
pub fn render(notes: &Notes, clusters: &Group, integrations: &Group) -> String {
    let mut out =
        String::with_capacity(8 * 1024 + 300 * (clusters.rows.len() + integrations.rows.len()));
    head(&mut out, "ksit-exporter");
    let _ = write!(
        out,
        "<h1>ksit-exporter <span class=\"muted\">{} ({})</span></h1>",
        env!("CARGO_PKG_VERSION"),
        env!("KSIT_GIT_REVISION"),
    );
    out.push_str(
        "<p><a href=\"metrics\">/metrics</a> · <a href=\"healthz\">/healthz</a> · <a href=\"readyz\">/readyz</a></p>",
    );
    let c = &clusters.counts;
    let _ = write!(
        out,
        "<p id=\"summary\">{} clusters: {} ready, {} failing, {} unknown</p>",
        clusters.total(),
        c[rows::READY],
        c[rows::FAILING],
        c[rows::UNKNOWN],
    );
    let _ = write!(
        out,
        "<p id=\"integrations-summary\">{} integrations",
        integrations.total()
    );
    let mut sep = ": ";
    for (name, n) in rows::INTEGRATION_RANKS.iter().zip(&integrations.counts) {
        if *n > 0 {
            let _ = write!(out, "{sep}{n} {name}");
            sep = ", ";
        }
    }
    out.push_str("</p>");

    component(&mut out, notes);

    out.push_str("<h2>Clusters</h2>");
    if let Some(from) = &notes.managed_clusters_from {
        out.push_str("<p id=\"clusters-from\">ManagedClusters read from ");
        html::escape_into(&mut out, from);
        out.push_str("</p>");
    }
    not_exported(&mut out, clusters);
    out.push_str(
        "<table id=\"clusters\"><thead><tr><th>state</th><th>kind</th><th>namespace</th><th>name</th>\
         <th>cluster</th><th>reason</th><th>message</th><th>last sync</th></tr></thead><tbody>",
    );
    rows_of(&mut out, clusters, "clusters", notes.kubernetes);

    out.push_str("<h2>Integrations</h2>");
    not_exported(&mut out, integrations);
    out.push_str(
        "<table id=\"integrations\"><thead><tr><th>namespace</th><th>name</th><th>type</th><th>phase</th>\
         <th>conditions</th><th>message</th><th>last reconcile</th></tr></thead><tbody>",
    );
    rows_of(&mut out, integrations, "integrations", notes.kubernetes);

    collectors(&mut out, notes);
    probes(&mut out, notes);
    out.push_str(
        "<p class=\"muted\">Rendered once per change of state, from what the collectors last saw; reload for the current one.</p></body></html>\n",
    );
    out
}

/// The document's start, up to and including `<body>`.
pub fn head(out: &mut String, title: &str) {
    out.push_str("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">");
    let _ = write!(
        out,
        "<title>{title}</title><style>{STYLE}</style></head><body>"
    );
}

fn component(out: &mut String, notes: &Notes) {
    out.push_str("<h2>Component</h2><table id=\"component\">");
    let row = |out: &mut String, name: &str, value: &str| {
        let _ = write!(out, "<tr><th>{name}</th>");
        cell(out, value);
        out.push_str("</tr>");
    };
    let unset = "(not set: POD_NAME, POD_NAMESPACE)";
    row(out, "pod", notes.pod.as_deref().unwrap_or(unset));
    row(
        out,
        "namespace",
        notes.namespace.as_deref().unwrap_or(unset),
    );
    let (name, node, workload) = match &notes.component {
        Some(c) => (c.name.as_str(), c.node.as_str(), c.workload.as_str()),
        None => ("(pod not read)", "", ""),
    };
    row(out, "component", name);
    row(out, "node", node);
    row(
        out,
        "workload",
        if workload.is_empty() {
            "(none followed)"
        } else {
            workload
        },
    );
    let leader = match notes.leader {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown (Lease not read)",
    };
    row(out, "leader", leader);
    if let Some(shard) = &notes.shard {
        row(out, "shard", shard);
    }
    out.push_str("</table>");
}

fn not_exported(out: &mut String, group: &Group) {
    if !group.exported {
        out.push_str(
            "<p class=\"muted\">Not exported on /metrics: this sidecar does not lead (KSIT_CR_METRICS=leader); the leader's does.</p>",
        );
    }
}

fn rows_of(out: &mut String, group: &Group, what: &str, kubernetes: bool) {
    for row in &group.rows {
        out.push_str(row);
    }
    out.push_str("</tbody></table>");
    let total = group.total();
    if total == 0 && !kubernetes {
        let _ = write!(
            out,
            "<p class=\"muted\">No {what}: the Kubernetes collectors are off (KSIT_KUBERNETES, KUBECONFIG).</p>"
        );
    } else if total == 0 {
        let _ = write!(out, "<p class=\"muted\">No {what} seen.</p>");
    } else if total > group.rows.len() {
        let _ = write!(
            out,
            "<p class=\"more\">and {} more (see <a href=\"metrics\">/metrics</a>)</p>",
            total - group.rows.len()
        );
    }
}

fn collectors(out: &mut String, notes: &Notes) {
    out.push_str(
        "<h2>Collectors</h2><table id=\"collectors\"><thead><tr><th>collector</th><th>state</th><th>last error</th></tr></thead><tbody>",
    );
    for (name, c) in &notes.collectors {
        out.push_str("<tr");
        attr(out, "data-collector", name);
        let (up, state) = if c.up { ("1", "up") } else { ("0", "down") };
        let _ = write!(out, " data-up=\"{up}\">");
        cell(out, name);
        let _ = write!(out, "<td class=\"{state}\">{state}</td>");
        match (&c.last_error, c.up) {
            (None, _) => out.push_str("<td class=\"muted\">none</td>"),
            (Some(e), true) => {
                out.push_str("<td class=\"muted\">(recovered) ");
                text(out, e);
                out.push_str("</td>");
            }
            (Some(e), false) => cell(out, e),
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
}

fn probes(out: &mut String, notes: &Notes) {
    out.push_str(
        "<h2>Health probes</h2><table id=\"probes\"><thead><tr><th>probe</th><th>URL</th><th>state</th><th>last result</th><th>last success</th></tr></thead><tbody>",
    );
    for p in &notes.probes {
        out.push_str("<tr");
        attr(out, "data-probe", &p.name);
        let (up, state, result) = match &p.last {
            Some((true, r)) => ("1", "up", r.as_ref()),
            Some((false, r)) => ("0", "down", r.as_ref()),
            None => ("", "unknown", "not probed yet"),
        };
        let _ = write!(out, " data-up=\"{up}\">");
        cell(out, &p.name);
        cell(out, &p.url);
        let _ = write!(out, "<td class=\"{state}\">{state}</td>");
        cell(out, result);
        cell(out, &p.last_success.map(rows::time).unwrap_or_default());
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if notes.probes.is_empty() {
        out.push_str("<p class=\"muted\">No probes configured (KSIT_HEALTH_URLS).</p>");
    }
}

#[cfg(test)]
mod tests {
    use super::rows::{Cluster, Integration, State};
    use super::*;
    use crate::metrics::Render;

    fn target<'a>(name: &'a str, state: State, message: &'a str) -> Cluster<'a> {
        Cluster {
            kind: "IntegrationTarget",
            namespace: "ksit-system",
            name,
            cluster_name: name,
            state,
            reason: "",
            message,
            last_sync: None,
        }
    }

    /// A registry with the two groups the page lists, and a way to put a note in each.
    struct Fixture {
        registry: Arc<Registry>,
        clusters: Objects,
        integrations: Objects,
        page: Page,
    }

    impl Fixture {
        fn new() -> Self {
            let registry = Arc::new(Registry::new());
            let clusters = registry.objects();
            let integrations = registry.objects();
            let page = Page::new(registry.clone(), clusters.clone(), integrations.clone());
            Self {
                registry,
                clusters,
                integrations,
                page,
            }
        }

        fn put(&self, objects: &Objects, key: &str, note: Note) {
            let mut render = Render::default();
            render.note(note);
            objects.put(key, render);
        }

        fn text(&self) -> String {
            String::from_utf8(self.page.body().to_vec()).expect("UTF-8")
        }
    }

    #[test]
    fn shows_counts_rows_and_component() {
        let f = Fixture::new();
        f.registry
            .board()
            .set_pod(Some("ksit-manager-0"), Some("ksit-system"));
        f.registry.board().set_leader(Some(true));
        f.registry.board().set_component(Some(Component {
            name: "manager".into(),
            node: "node-1".into(),
            workload: "Deployment/ksit-manager".into(),
        }));
        f.put(
            &f.clusters,
            "a",
            target("edge-1", State::Ready, "connected").note(),
        );
        f.put(
            &f.clusters,
            "b",
            target("edge-2", State::Failing, "secret not found").note(),
        );
        f.put(
            &f.integrations,
            "i",
            Integration {
                namespace: "ksit-system",
                name: "argocd",
                type_: "argocd",
                enabled: true,
                phase: Some("Failed"),
                conditions: vec![("Ready", "False", "SyncFailed")],
                message: "boom",
                last_reconcile: None,
            }
            .note(),
        );
        let page = f.text();
        for fragment in [
            "<title>ksit-exporter</title>",
            "<p id=\"summary\">2 clusters: 1 ready, 1 failing, 0 unknown</p>",
            "<p id=\"integrations-summary\">1 integrations: 1 Failed</p>",
            "<tr><th>pod</th><td>ksit-manager-0</td></tr>",
            "<tr><th>workload</th><td>Deployment/ksit-manager</td></tr>",
            "<tr><th>leader</th><td>yes</td></tr>",
            "<a href=\"metrics\">/metrics</a>",
            "<a href=\"healthz\">/healthz</a>",
            "<a href=\"readyz\">/readyz</a>",
            "<table id=\"clusters\">",
            "<table id=\"integrations\">",
            "<table id=\"collectors\">",
            "<table id=\"probes\">",
            "data-name=\"argocd\" data-phase=\"Failed\">",
        ] {
            assert!(page.contains(fragment), "no {fragment:?} in\n{page}");
        }
        let failing = page.find("data-name=\"edge-2\"").expect("edge-2 listed");
        let ready = page.find("data-name=\"edge-1\"").expect("edge-1 listed");
        assert!(failing < ready, "failing clusters come first");
        assert!(page.len() < 8 * 1024, "a few KiB: {}", page.len());
    }

    #[test]
    fn collectors_and_probes_show_state_and_last_error() {
        let f = Fixture::new();
        let board = f.registry.board();
        board.collected("upstream", Err("request failed: connection refused"));
        board.collected("health", Ok(()));
        let probe = board.add_probe("ready", "http://***@127.0.0.1:8081/readyz");
        board.probed(
            probe,
            Err("answered 500 Internal Server Error: not ready"),
            0,
        );
        let page = f.text();
        for fragment in [
            "<tr data-collector=\"health\" data-up=\"1\"><td>health</td><td class=\"up\">up</td><td class=\"muted\">none</td></tr>",
            "<tr data-collector=\"upstream\" data-up=\"0\"><td>upstream</td><td class=\"down\">down</td><td>request failed: connection refused</td></tr>",
            "<tr data-probe=\"ready\" data-up=\"0\"><td>ready</td><td>http://***@127.0.0.1:8081/readyz</td><td class=\"down\">down</td>\
             <td>answered 500 Internal Server Error: not ready</td><td></td></tr>",
        ] {
            assert!(page.contains(fragment), "no {fragment:?} in\n{page}");
        }
        assert!(page.contains("No clusters: the Kubernetes collectors are off"));
        board.set_kubernetes(true);
        assert!(f.text().contains("No clusters seen."));
        board.collected("upstream", Ok(()));
        assert!(
            f.text().contains(
                "<td class=\"muted\">(recovered) request failed: connection refused</td>"
            ),
            "the last error stays, marked past"
        );
    }

    #[test]
    fn credentials_in_an_error_are_masked() {
        let f = Fixture::new();
        f.registry.board().collected(
            "upstream",
            Err("GET http://admin:hunter2@10.0.0.1/metrics failed"),
        );
        let page = f.text();
        assert!(!page.contains("hunter2"), "{page}");
        assert!(page.contains("http://***@10.0.0.1/metrics"), "{page}");
    }

    /// Names, messages, errors and URLs from the API, the upstream or the configuration never
    /// reach the page as markup.
    #[test]
    fn hostile_text_is_escaped_everywhere() {
        const HOSTILE: &str = "<script>alert(\"x&'y\")</script>\u{7}\u{1b}";
        let f = Fixture::new();
        let board = f.registry.board();
        board.set_pod(Some(HOSTILE), Some(HOSTILE));
        board.set_component(Some(Component {
            name: HOSTILE.into(),
            node: HOSTILE.into(),
            workload: HOSTILE.into(),
        }));
        board.collected(HOSTILE, Err(HOSTILE));
        let probe = board.add_probe(HOSTILE, HOSTILE);
        board.probed(probe, Err(HOSTILE), 0);
        f.put(
            &f.clusters,
            "a",
            Cluster {
                kind: "IntegrationTarget",
                namespace: HOSTILE,
                name: HOSTILE,
                cluster_name: HOSTILE,
                state: State::Unknown,
                reason: HOSTILE,
                message: HOSTILE,
                last_sync: None,
            }
            .note(),
        );
        f.put(
            &f.integrations,
            "i",
            Integration {
                namespace: HOSTILE,
                name: HOSTILE,
                type_: HOSTILE,
                enabled: false,
                phase: Some(HOSTILE),
                conditions: vec![(HOSTILE, HOSTILE, HOSTILE)],
                message: HOSTILE,
                last_reconcile: None,
            }
            .note(),
        );
        let page = f.text();
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains('\u{1b}') && !page.contains('\u{7}'));
        assert!(page.contains("&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"));
        // Every `<` left is one of the page's own tags.
        for (i, _) in page.match_indices('<') {
            let tag = &page[i + 1..];
            let name: String = tag
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '!')
                .collect();
            assert!(
                [
                    "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "h2",
                    "span", "p", "a", "table", "thead", "tbody", "tr", "th", "td", "code",
                ]
                .contains(&name.as_str()),
                "unexpected tag {name:?} at {}",
                &page[i..(i + 40).min(page.len())]
            );
        }
    }

    /// A big fleet gives a capped page: failing and unknown first, and a count of the rest.
    #[test]
    fn a_big_fleet_is_capped_failing_first() {
        let f = Fixture::new();
        for i in 0..5000 {
            let state = match i % 1000 {
                0 => State::Failing,
                1 => State::Unknown,
                _ => State::Ready,
            };
            let name = format!("t-{i:05}");
            f.put(&f.clusters, &name, target(&name, state, "").note());
        }
        let page = f.text();
        assert!(
            page.contains("<p id=\"summary\">5000 clusters: 4990 ready, 5 failing, 5 unknown</p>")
        );
        assert_eq!(page.matches("<tr data-kind=").count(), MAX_ROWS);
        assert!(page.contains("and 4800 more (see <a href=\"metrics\">/metrics</a>)"));
        let states: Vec<&str> = page
            .match_indices("data-state=\"")
            .map(|(i, m)| page[i + m.len()..].split('"').next().expect("a value"))
            .collect();
        assert_eq!(&states[..5], ["failing"; 5]);
        assert_eq!(&states[5..10], ["unknown"; 5]);
        assert!(page.len() < 100 * 1024, "{} bytes", page.len());
    }

    #[test]
    fn rendered_once_per_change() {
        let f = Fixture::new();
        let first = f.page.body();
        assert_eq!(
            first.as_ptr(),
            f.page.body().as_ptr(),
            "no change, same body"
        );
        f.put(&f.clusters, "a", target("a", State::Ready, "").note());
        let second = f.page.body();
        assert_ne!(first.as_ptr(), second.as_ptr());
        // The same note again is no change; a new message is, though the series are the same.
        f.put(&f.clusters, "a", target("a", State::Ready, "").note());
        assert_eq!(second.as_ptr(), f.page.body().as_ptr());
        f.put(
            &f.clusters,
            "a",
            target("a", State::Ready, "new message").note(),
        );
        assert!(f.text().contains("new message"));
        f.registry.board().set_leader(Some(false));
        assert!(f.text().contains("<tr><th>leader</th><td>no</td></tr>"));
        assert!(!f.text().contains("<th>shard</th>"), "not sharded");
        f.registry
            .board()
            .set_shard(Some("shard 1 of 3 (a, b, c)".into()));
        assert!(
            f.text()
                .contains("<tr><th>shard</th><td>shard 1 of 3 (a, b, c)</td></tr>")
        );
    }
}
