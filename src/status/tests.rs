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
    board.collected("upstream", Ok(()));
    assert!(
        f.text()
            .contains("<td class=\"muted\">(recovered) request failed: connection refused</td>"),
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
                "!DOCTYPE", "html", "head", "meta", "title", "style", "body", "h1", "h2", "span",
                "p", "a", "table", "thead", "tbody", "tr", "th", "td", "code",
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
    assert!(page.contains("<p id=\"summary\">5000 clusters: 4990 ready, 5 failing, 5 unknown</p>"));
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
}
