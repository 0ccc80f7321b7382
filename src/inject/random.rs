//! Random pods of the kinds of container inject tells apart, for the tests that compare what
//! the webhook and `ksit-exporter inject` do with a pod read compactly ([`super::compact`])
//! with what [`super::inject`] does with the whole pod.

use serde_json::{Value, json};

use super::SIDECAR_NAME;

/// A small deterministic generator (xorshift64) for the tests that compare compact and whole pods.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// A container of the kinds inject tells apart: managers on 8080 or not, health flags,
/// ports and probes that clash or not, the sidecar's name with its image or another.
pub fn container(rng: &mut Rng) -> Value {
    let mut c = json!({});
    if rng.below(8) != 0 {
        c["name"] = json!(rng.pick(&["manager", "app", SIDECAR_NAME, "web", "", "init"]));
    }
    let args: &[&[&str]] = &[
        &["--metrics-bind-address=:8080"],
        &["--metrics-addr", ":8080"],
        &["--metrics-bind-address=:9090"],
        &["--health-probe-bind-address=:8081"],
        &["--health-probe-bind-address=:0"],
        &["--port=8080"],
        &["--listen=:8082"],
        &[":8083"],
        &["--http-port", "8084"],
        &["x"],
        &[
            "--metrics-bind-address=:8080",
            "--health-probe-bind-address=:8086",
        ],
    ];
    if rng.below(2) == 0 {
        c["args"] = json!(rng.pick(args));
    }
    if rng.below(6) == 0 {
        c["command"] = json!(rng.pick(args));
    }
    let ports = [
        json!([{"containerPort": 8080}]),
        json!([{"containerPort": 8080, "protocol": "UDP"}]),
        json!([{"containerPort": 8082}, {"containerPort": 8083, "protocol": "TCP"}]),
        json!([{"containerPort": 8085, "name": "metrics"}]),
        json!([{"containerPort": 8080, "name": "http"}, {"containerPort": 8081}]),
    ];
    if rng.below(3) == 0 {
        c["ports"] = rng.pick(&ports);
    }
    let probes = [
        json!({"tcpSocket": {"port": 8080}}),
        json!({"httpGet": {"port": 8081, "path": "/"}}),
        json!({"httpGet": {"port": "metrics"}}),
    ];
    if rng.below(6) == 0 {
        let which = rng.pick(&["livenessProbe", "readinessProbe", "startupProbe"]);
        c[which] = rng.pick(&probes);
    }
    if rng.below(3) == 0 {
        let image = [
            "busybox",
            "ghcr.io/kubestellar/ksit-exporter:0.1.0",
            "other/ksit-exporter@sha256:1",
        ];
        c["image"] = json!(rng.pick(&image));
    }
    if rng.below(4) == 0 {
        c["env"] = json!([{"name": "A", "value": "1"}]);
    }
    c
}

pub fn pod(rng: &mut Rng) -> Value {
    let list = |rng: &mut Rng, most: usize| -> Vec<Value> {
        let n = rng.below(most + 1);
        (0..n).map(|_| container(rng)).collect()
    };
    let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": list(rng, 12)}});
    if rng.below(2) == 0 {
        pod["spec"]["initContainers"] = json!(list(rng, 4));
    }
    if rng.below(2) == 0 {
        let volumes: Vec<Value> = (0..rng.below(4))
            .map(|_| json!({"name": rng.pick(&["a", "b", super::ITS_VOLUME]), "emptyDir": {}}))
            .collect();
        pod["spec"]["volumes"] = json!(volumes);
    }
    if rng.below(5) != 0 {
        pod["metadata"]["labels"] = json!({"ksit.io/inject": "true", "app": "x"});
    }
    let mut notes = serde_json::Map::new();
    for (key, values) in [
        ("ksit.io/sidecar-mode", &["classic", "native", "bogus"][..]),
        ("ksit.io/metrics-takeover", &["false", "true"]),
        ("example.com/a", &["1"]),
        (super::DEFAULT_CONTAINER_ANNOTATION, &["app"]),
    ] {
        if rng.below(4) == 0 {
            notes.insert(key.into(), json!(rng.pick(values)));
        }
    }
    if !notes.is_empty() || rng.below(2) == 0 {
        pod["metadata"]["annotations"] = Value::Object(notes);
    }
    if rng.below(4) == 0 {
        pod["spec"]["restartPolicy"] = json!(rng.pick(&["Never", "Always"]));
    }
    if rng.below(4) == 0 {
        pod["spec"]["shareProcessNamespace"] = json!(true);
    }
    pod
}
