//! A network namespace that plays a pod's network: Endpoints may not hold loopback addresses,
//! so a process that must be reached at a "pod IP" runs in a namespace the test creates, with a
//! veth pair to this one and a /30 from a documentation range (never routed). Inside it,
//! loopback is the namespace's own, so a relay (a process with one foot in each namespace)
//! carries connections to chosen ports of this machine's 127.0.0.1. No packet leaves the machine.
//!
//! Needs root (CAP_NET_ADMIN) for `ip netns`: [`create_or_skip`] skips without it, except under
//! `CI=true`, where that is a failure.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A network namespace with a veth pair to this one, deleted (with its veth) on drop.
pub struct NetNs {
    pub name: String,
    pub host_ip: String,
    /// The address a process in the namespace listens on: the "pod IP".
    pub ns_ip: String,
    /// The lock on the /30 (see [`claim_block`]), held while this lives.
    _claim: std::fs::File,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespaces one test process may hold at once (tests/layouts_e2e.rs: one per test, and two
/// more for each prod layout's other replicas).
pub const SLOTS: u32 = 16;

impl NetNs {
    /// A namespace with a /30 in `net` (a /24 prefix such as `192.0.2`) that no other live
    /// test process holds: two runs at once once shared a /30, and Prometheus scraped the
    /// other run's exporter.
    pub fn create(net: &str, slot: u32) -> Result<NetNs, String> {
        assert!(slot < SLOTS, "slot {slot} is not below {SLOTS}");
        // A /30 inside a network the machine is on would shadow it (this CI machine's own
        // eth0 is 192.0.2.2/24, its gateway 192.0.2.1): refuse rather than cut the machine off.
        let addrs = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map_err(|e| format!("running ip: {e}"))?;
        // Lines are `N: ifname inet a.b.c.d/len ...`; the test's own veths are named `ke...`.
        let taken = String::from_utf8_lossy(&addrs.stdout).lines().any(|l| {
            let ifname = l.split_whitespace().nth(1).unwrap_or_default();
            !ifname.starts_with("ke") && l.contains(&format!("inet {net}."))
        });
        if taken {
            return Err(format!(
                "this machine has an address in {net}.0/24; the test needs a network of its own"
            ));
        }
        remove_stale_namespaces();
        let pid = std::process::id();
        let (block, _claim) = claim_block(net, slot)?;
        let base = 4 * block;
        let ns = NetNs {
            name: format!("ksit-e2e-{pid}-{slot}"),
            host_ip: format!("{net}.{}", base + 1),
            ns_ip: format!("{net}.{}", base + 2),
            _claim,
        };
        ip(&["netns", "add", &ns.name])?;
        // Interface names have at most 15 characters: "ke" + pid (7 digits at most) + slot + h/n.
        let (host_if, ns_if) = (format!("ke{pid}{slot}h"), format!("ke{pid}{slot}n"));
        let setup = || -> Result<(), String> {
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name,
            ])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &host_if,
            ])?;
            ip(&["link", "set", &host_if, "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/30", ns.ns_ip),
                "dev",
                &ns_if,
            ])?;
            ip(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
            // A new namespace's loopback is down; the relay listens on it.
            ip(&["-n", &ns.name, "link", "set", "lo", "up"])
        };
        // On failure, drop removes the namespace (and with it the veth).
        setup().map(|()| ns)
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Where claims live: beside the namespaces, so a reboot clears both.
const CLAIMS: &str = "/run/ksit-e2e-blocks";

/// Claims one of the 64 /30 blocks of `net` for this process's `slot` by an exclusive flock
/// on a file named for it: the kernel drops the lock when its holder exits, however it exits,
/// so a killed run leaves nothing to clean up.
fn claim_block(net: &str, slot: u32) -> Result<(u32, std::fs::File), String> {
    std::fs::create_dir_all(CLAIMS).map_err(|e| format!("creating {CLAIMS}: {e}"))?;
    let groups = 64 / SLOTS;
    for i in 0..groups {
        let block = ((std::process::id() + i) % groups) * SLOTS + slot;
        let path = Path::new(CLAIMS).join(format!("{net}.{block}"));
        let file =
            std::fs::File::create(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => return Ok((block, file)),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("locking {}: {e}", path.display()));
            }
        }
    }
    Err(format!(
        "every /30 of {net}.0/24 for slot {slot} is held by a live test process (see {CLAIMS})"
    ))
}

/// [`NetNs::create`], or `None` (with a loud SKIPPED line) without the right to; under
/// `CI=true` that is a failure.
pub fn create_or_skip(net: &str, slot: u32) -> Option<NetNs> {
    match NetNs::create(net, slot) {
        Ok(ns) => Some(ns),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("CI=true but no network namespace for the exporter: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: cannot create a network namespace (needs root): {why}");
            None
        }
    }
}

/// Namespaces left by a killed test run (their pid is gone).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for name in entries.filter_map(|e| e.ok()?.file_name().into_string().ok()) {
        if let Some(rest) = name.strip_prefix("ksit-e2e-") {
            let pid = rest.split('-').next().unwrap_or(rest);
            if !Path::new("/proc").join(pid).exists() {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// For each `INNER:OUTER` argument, listens on 127.0.0.1:INNER inside the namespace and forwards
/// each connection to 127.0.0.1:OUTER of this machine: the sockets are created after setns(2)
/// into the namespace, the connections after returning. Prints `ready` once listening.
const RELAY: &str = r#"
import ctypes, os, socket, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def setns(fd):
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "setns")
host = os.open("/proc/self/ns/net", os.O_RDONLY)
setns(os.open(sys.argv[1], os.O_RDONLY))
listeners = []
for pair in sys.argv[2:]:
    inner, outer = map(int, pair.split(":"))
    s = socket.socket()
    s.bind(("127.0.0.1", inner))
    s.listen(64)
    listeners.append((s, outer))
setns(host)
def pipe(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def serve(listener, port):
    while True:
        conn, _ = listener.accept()
        try:
            up = socket.create_connection(("127.0.0.1", port))
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()
for l, p in listeners:
    threading.Thread(target=serve, args=(l, p), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

/// The relay process, killed on drop.
pub struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the relay for `(port inside the namespace, port on this machine's loopback)` pairs
/// and waits up to 10 s for it to listen.
pub async fn start_relay(ns: &NetNs, ports: &[(u16, u16)]) -> Relay {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(RELAY)
        .arg(ns.path())
        .args(
            ports
                .iter()
                .map(|(inner, outer)| format!("{inner}:{outer}")),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the relay");
    let stdout = child.stdout.take().expect("stdout is piped");
    let relay = Relay(child);
    // Read on a thread, so the wait for the line can have a deadline.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the relay says ready within 10s")
        .unwrap_or_default();
    assert_eq!(line.trim(), "ready", "relay did not start");
    relay
}
