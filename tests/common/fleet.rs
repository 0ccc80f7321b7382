//! A fleet of KSIT installs, as issue 15 describes it: hosting clusters (test control planes),
//! each with the stand-in KSIT manager, its ksit-exporter sidecar and a Prometheus in agent mode
//! that scrapes it with the page's scrape config and remote-writes, with its own `cluster`
//! external label, into one central Thanos Receive; Thanos Query reads it and Thanos Rule
//! evaluates rules over Query. Every process is killed on drop; every port is a random loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::netns::{self, NetNs, Relay};
use super::proc::Proc;
use super::prometheus::{port_of, scrape_config};
use super::{
    ControlPlane, ManagerProcess, check, control_plane_at, eventually, free_port, http,
    patch_status, pod_status, repo_path,
};

/// Startup waits: the control planes and the other suites share two cores.
const START: Duration = Duration::from_secs(60);

/// The pod the sidecar runs in, as the Endpoints name it: the same in every hosting cluster.
pub const POD: &str = "ksit-controller-manager-0";

/// A second test control plane, started by `scripts/controlplane.sh up` with its state in its
/// own directory, and stopped (`down`) on drop. A run killed before the drop leaves it up; the
/// next `up` of the same directory reuses it.
pub struct ExtraControlPlane {
    pub cp: ControlPlane,
    dir: PathBuf,
}

impl ExtraControlPlane {
    /// Brings up the control plane in `target/<name>`; the script's own waits have deadlines.
    pub async fn up(name: &str) -> ExtraControlPlane {
        let dir = repo_path("target").join(name);
        check(
            script(&dir, "up")
                .output()
                .expect("running scripts/controlplane.sh"),
            &format!(
                "scripts/controlplane.sh up with KSIT_CONTROLPLANE_DIR={}",
                dir.display()
            ),
        );
        let cp = control_plane_at(&dir)
            .await
            .unwrap_or_else(|e| panic!("the control plane in {}: {e}", dir.display()));
        ExtraControlPlane { cp, dir }
    }
}

fn script(dir: &Path, command: &str) -> Command {
    let mut cmd = Command::new(repo_path("scripts/controlplane.sh"));
    cmd.arg(command).env("KSIT_CONTROLPLANE_DIR", dir);
    cmd
}

impl Drop for ExtraControlPlane {
    fn drop(&mut self) {
        let _ = script(&self.dir, "down").output();
    }
}

/// `GET path` answers 200 within [`START`], or the process's log is shown.
async fn wait_ready(addr: &str, path: &str, what: &str, proc: &Proc) {
    eventually(START, &format!("{what} ready"), || async {
        let reply = http::try_request(addr, "GET", path, &[]).await?;
        match reply.status {
            200 => Ok(()),
            s => Err(format!("{s} {}\n{}", reply.text(), proc.log_tail(20))),
        }
    })
    .await;
}

/// The central store: Thanos Receive (remote-write in), Thanos Query over it, and, once
/// [`Thanos::start_rule`] is called, Thanos Rule evaluating rules through Query.
pub struct Thanos {
    /// `http://…/api/v1/receive`, the agents' remote_write URL.
    pub remote_write_url: String,
    /// `127.0.0.1:PORT` of Query's HTTP API (Prometheus's /api/v1).
    pub query: String,
    /// `127.0.0.1:PORT` of Rule's HTTP API (/api/v1/rules, /api/v1/alerts), once started.
    pub rule: Option<String>,
    bin: PathBuf,
    data: PathBuf,
    logs: PathBuf,
    tag: String,
    // Dropped in reverse order of start: Rule, then Query, then Receive.
    procs: Vec<Proc>,
}

impl Thanos {
    /// Starts Receive and Query, their data under `data`, their logs `thanos-<part>-<tag>.log`
    /// under `logs`, and waits until both are ready.
    pub async fn start(bin_dir: &Path, data: &Path, logs: &Path, tag: &str) -> Thanos {
        let bin = bin_dir.join("thanos");
        let (grpc, http, write) = (addr(), addr(), addr());
        let mut thanos = Thanos {
            remote_write_url: format!("http://{write}/api/v1/receive"),
            query: addr(),
            rule: None,
            bin,
            data: data.to_path_buf(),
            logs: logs.to_path_buf(),
            tag: tag.to_string(),
            procs: Vec::new(),
        };
        // A Receive must announce a label of its own; Query drops it (`--query.replica-label`),
        // as it would deduplicate the replicas of a Receive ring.
        let receive = thanos.spawn(
            "receive",
            &[
                format!("--tsdb.path={}", data.join("receive").display()),
                format!("--grpc-address={grpc}"),
                format!("--http-address={http}"),
                format!("--remote-write.address={write}"),
                r#"--label=receive_replica="0""#.to_string(),
            ],
        );
        wait_ready(&http, "/-/ready", "Thanos Receive", &receive).await;
        thanos.procs.push(receive);
        let query = thanos.spawn(
            "query",
            &[
                format!("--grpc-address={}", addr()),
                format!("--http-address={}", thanos.query),
                format!(r#"--endpoint.sd-config=endpoints: [{{address: "{grpc}", strict: true}}]"#),
                "--query.replica-label=receive_replica".to_string(),
            ],
        );
        wait_ready(&thanos.query, "/-/ready", "Thanos Query", &query).await;
        thanos.procs.push(query);
        thanos
    }

    /// Starts Thanos Rule with `rules` (a rule file's content, JSON being YAML), evaluated every
    /// `interval` through Query, and waits until it is ready.
    pub async fn start_rule(&mut self, rules: &Value, interval: &str) {
        let path = self.data.join("rules.yml");
        std::fs::write(&path, rules.to_string()).expect("writing the rule file");
        let http = addr();
        let rule = self.spawn(
            "rule",
            &[
                format!("--data-dir={}", self.data.join("rule").display()),
                format!("--rule-file={}", path.display()),
                format!("--eval-interval={interval}"),
                format!("--query=http://{}", self.query),
                format!("--grpc-address={}", addr()),
                format!("--http-address={http}"),
                r#"--label=rule_replica="0""#.to_string(),
            ],
        );
        wait_ready(&http, "/-/ready", "Thanos Rule", &rule).await;
        self.procs.push(rule);
        self.rule = Some(http);
    }

    fn spawn(&self, part: &str, args: &[String]) -> Proc {
        let log = self.logs.join(format!("thanos-{part}-{}.log", self.tag));
        Proc::spawn(Command::new(&self.bin).arg(part).args(args), log)
    }

    /// The tails of every part's log, for a failure message.
    pub fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| p.log_tail(15))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

impl Drop for Thanos {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// One hosting cluster of the fleet: in `namespace` of its control plane, the IntegrationTargets
/// and Integrations of manifests/samples, the stand-in manager reconciling them, the pod the
/// sidecar runs in with the Service and Endpoints the page's scrape config keeps, the sidecar
/// itself (in a network namespace, at the "pod IP" the Endpoints name) and a Prometheus agent
/// remote-writing with `external_labels: {cluster: <name>}`.
pub struct HostingCluster {
    pub name: String,
    pub namespace: String,
    /// `127.0.0.1:PORT` of the agent's HTTP server (its own /metrics).
    pub agent: String,
    // Field order is drop order: the agent and the sidecar before what they talk to.
    agent_proc: Proc,
    exporter: Proc,
    _relay: Relay,
    _netns: NetNs,
    _manager: ManagerProcess,
}

impl HostingCluster {
    /// Starts it all in `cp`'s `namespace` (which must exist), the sidecar in a network namespace
    /// in `net` (a /24 prefix) at `slot`, the agent scraping every `scrape` and writing to
    /// `remote_write_url`, its config and WAL under `data`/`name`; logs in target/. `None` (a
    /// loud SKIPPED) without the right to make a network namespace, a failure under `CI=true`.
    pub async fn start(
        cp: &ControlPlane,
        name: &str,
        namespace: &str,
        (net, slot): (&str, u32),
        scrape: &str,
        remote_write_url: &str,
        data: &Path,
    ) -> Option<HostingCluster> {
        let netns = netns::create_or_skip(net, slot)?;
        let target = repo_path("target");
        let tag = format!("{name}-{}", std::process::id());
        cp.apply_samples(namespace);
        // Short requeues, so reconciles keep coming within a rate window of seconds.
        let manager = super::start_manager_with(
            cp,
            &[namespace],
            &[
                "--integration-requeue=2s",
                "--target-ready-requeue=2s",
                "--target-failing-requeue=2s",
            ],
        )
        .await;
        cp.apply_yaml(
            namespace,
            &super::monitor_yaml(&netns.ns_ip, Some((POD, namespace))),
        );
        patch_status(cp, Some(namespace), "pod", POD, pod_status(&netns.ns_ip, 0));

        let relay = netns::start_relay(
            &netns,
            &[
                port_of(&cp.server_url),
                port_of(&manager.metrics_addr),
                port_of(&manager.health_addr),
            ]
            .map(|port| (port, port)),
        )
        .await;
        let exporter = Proc::spawn(
            &mut super::sidecar_command(&netns, cp, namespace, POD, &manager),
            target.join(format!("fleet-exporter-{tag}.log")),
        );

        let config = agent_config(cp, namespace, name, scrape, remote_write_url);
        let dir = data.join(name);
        std::fs::create_dir_all(&dir).expect("creating the agent's directory");
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config.to_string()).expect("writing prometheus.yml");
        check(
            Command::new(cp.bin_dir.join("promtool"))
                .args(["check", "config", "--agent"])
                .arg(&config_path)
                .output()
                .expect("running promtool"),
            "promtool check config --agent",
        );
        let agent = addr();
        let agent_proc = Proc::spawn(
            Command::new(cp.bin_dir.join("prometheus"))
                .arg("--agent")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.agent.path={}",
                    dir.join("wal").display()
                ))
                .arg(format!("--web.listen-address={agent}")),
            target.join(format!("fleet-agent-{tag}.log")),
        );
        wait_ready(&agent, "/-/ready", "the Prometheus agent", &agent_proc).await;
        Some(HostingCluster {
            name: name.to_string(),
            namespace: namespace.to_string(),
            agent,
            agent_proc,
            exporter,
            _relay: relay,
            _netns: netns,
            _manager: manager,
        })
    }

    /// The tails of its sidecar's and agent's logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- {0} sidecar:\n{1}\n--- {0} agent:\n{2}",
            self.name,
            self.exporter.log_tail(10),
            self.agent_proc.log_tail(10)
        )
    }
}

/// The agent's config: the page's scrape config (as [`scrape_config`] adapts it to the test
/// control plane) every `scrape`, plus what a fleet adds: the hosting cluster's name as the
/// external label `cluster`, and remote_write into the central store, flushed every second so
/// the test need not wait the default 5 s.
pub fn agent_config(
    cp: &ControlPlane,
    namespace: &str,
    cluster: &str,
    scrape: &str,
    remote_write_url: &str,
) -> Value {
    let mut config = scrape_config(cp, namespace);
    config["global"] = json!({
        "scrape_interval": scrape,
        "scrape_timeout": scrape,
        "external_labels": { "cluster": cluster },
    });
    config["remote_write"] = json!([{
        "url": remote_write_url,
        "queue_config": { "batch_send_deadline": "1s" },
    }]);
    config
}
