//! Multi-process tests of the replication transport and gossip, driving `rill-repl-node`.
//! Timing bounds here are generous (a loaded 2-core machine); measured figures live in
//! docs/BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::Duration;

const NODE: &str = env!("CARGO_BIN_EXE_rill-repl-node");

/// Five gossip members on 127.0.0.1..5 converge, and a SIGKILLed member is declared down by
/// every survivor (probe 500 ms, suspicion 1.5 s by default; bound 60 s here).
#[test]
fn five_processes_converge_and_detect_a_killed_member() {
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let output = Command::new(NODE)
        .args(["gossip-cluster", "5", &port.to_string(), "60"])
        .output()
        .expect("run rill-repl-node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "gossip cluster failed");
    assert!(stdout.contains("converged_ms "));
    assert!(stdout.contains("detected_down_ms "));
}

/// Runs `command` with `sh -c`; its stdout, or a message naming the command and its stderr.
fn sh(command: &str) -> Result<String, String> {
    let output = Command::new("sh").arg("-c").arg(command).output().map_err(|e| format!("{command}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!("`{command}` failed: {}", String::from_utf8_lossy(&output.stderr).trim()))
    }
}

/// How the rig drops 5% of packets: netem when the kernel has `sch_netem`, else a random-drop
/// rule of nftables or iptables on the input hook. Each lives inside the test's namespaces only.
#[derive(Clone, Copy, Debug)]
enum LossRig {
    Netem,
    Nftables,
    Iptables,
}

impl LossRig {
    /// Installs 5% loss on packets entering `namespace` (on `device` for netem).
    fn install(self, namespace: &str, device: &str) -> Result<(), String> {
        let exec = format!("ip netns exec {namespace}");
        match self {
            LossRig::Netem => sh(&format!("{exec} tc qdisc add dev {device} root netem loss 5% delay 1ms")),
            LossRig::Nftables => sh(&format!("{exec} nft add table inet rill_loss"))
                .and_then(|_| sh(&format!("{exec} nft add chain inet rill_loss input '{{ type filter hook input priority 0; }}'")))
                .and_then(|_| sh(&format!("{exec} nft add rule inet rill_loss input numgen random mod 100 '<' 5 counter drop"))),
            LossRig::Iptables => sh(&format!("{exec} iptables -A INPUT -m statistic --mode random --probability 0.05 -j DROP")),
        }
        .map(|_| ())
    }

    /// Packets the rig dropped in `namespace` so far.
    fn dropped(self, namespace: &str, device: &str) -> Result<u64, String> {
        let exec = format!("ip netns exec {namespace}");
        let (listing, keyword) = match self {
            LossRig::Netem => (sh(&format!("{exec} tc -s qdisc show dev {device}"))?, "dropped "),
            LossRig::Nftables => (sh(&format!("{exec} nft list chain inet rill_loss input"))?, "counter packets "),
            LossRig::Iptables => {
                let rules = sh(&format!("{exec} iptables -L INPUT -v -n -x"))?;
                // The DROP rule's first column is its packet count.
                let line = rules.lines().find(|l| l.contains("DROP")).unwrap_or_default().to_string();
                (format!("packets {}", line.trim_start()), "packets ")
            }
        };
        let at = listing.find(keyword).ok_or_else(|| format!("no `{keyword}` in {listing}"))?;
        let digits: String = listing[at + keyword.len()..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().map_err(|_| format!("no count after `{keyword}` in {listing}"))
    }
}

/// Two network namespaces joined by a veth pair (10.77.0.1 and .2); deleted on drop, which
/// also removes the veth pair and any qdisc or rule inside them.
struct Namespaces {
    names: [String; 2],
    devices: [String; 2],
}

impl Namespaces {
    fn create(tag: &str) -> Result<Self, String> {
        let rig = Self {
            names: [format!("{tag}a"), format!("{tag}b")],
            devices: [format!("{tag}x"), format!("{tag}y")],
        };
        let [a, b] = &rig.names;
        let [x, y] = &rig.devices;
        for step in [
            format!("ip netns add {a}"),
            format!("ip netns add {b}"),
            format!("ip link add {x} netns {a} type veth peer name {y} netns {b}"),
            format!("ip -n {a} addr add 10.77.0.1/24 dev {x}"),
            format!("ip -n {b} addr add 10.77.0.2/24 dev {y}"),
            format!("ip -n {a} link set {x} up"),
            format!("ip -n {b} link set {y} up"),
            format!("ip -n {a} link set lo up"),
            format!("ip -n {b} link set lo up"),
        ] {
            sh(&step)?;
        }
        Ok(rig)
    }

    /// Installs 5% loss each way with the first rig that works here.
    fn add_loss(&self) -> Result<LossRig, String> {
        let mut refusals = Vec::new();
        for rig in [LossRig::Netem, LossRig::Nftables, LossRig::Iptables] {
            let installed = (0..2).try_for_each(|i| rig.install(&self.names[i], &self.devices[i]));
            match installed {
                Ok(()) => return Ok(rig),
                Err(error) => {
                    refusals.push(format!("{rig:?}: {error}"));
                    // Start the next rig from clean namespaces: remove what half-installed.
                    for name in &self.names {
                        let _ = sh(&format!("ip netns exec {name} nft delete table inet rill_loss 2>/dev/null"));
                    }
                    for (name, device) in self.names.iter().zip(&self.devices) {
                        let _ = sh(&format!("ip netns exec {name} tc qdisc del dev {device} root 2>/dev/null"));
                    }
                }
            }
        }
        Err(refusals.join("; "))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = sh(&format!("ip netns del {name}"));
        }
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// With 5% loss each way between two network namespaces (netem if the kernel has it, else an
/// nftables or iptables random-drop rule), every frame of four lanes arrives, in order per lane.
/// Skips only when not root; as root, a rig that cannot be set up fails the test.
#[test]
fn five_percent_loss_between_namespaces_delivers_every_frame_in_order() {
    if !is_root() {
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let tag = format!("rr{}", std::process::id() % 100_000);
    let namespaces = Namespaces::create(&tag)
        .unwrap_or_else(|e| panic!("cannot create network namespaces (needs iproute2): {e}"));
    let rig = namespaces.add_loss().unwrap_or_else(|e| {
        panic!("cannot emulate loss (needs sch_netem, or the nftables or iptables package): {e}")
    });
    let [ns_a, ns_b] = &namespaces.names;
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_str().unwrap().to_string();
    assert!(Command::new(NODE).args(["init-certs", &certs_path, "1", "2"]).status().unwrap().success());
    let frames = "4000";
    let lossy_link = |namespace: &str, bind: &str, peer: &str, role: &str| {
        Command::new("ip")
            .args(["netns", "exec", namespace, NODE, "lossy-link", bind, peer, &certs_path, frames, role])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let receiver = lossy_link(ns_b, "10.77.0.2:7400", "10.77.0.1:7400", "receive");
    std::thread::sleep(Duration::from_millis(200));
    let sender = lossy_link(ns_a, "10.77.0.1:7400", "10.77.0.2:7400", "send");
    // Bounded: both exit on their own; kill them if they run past 120 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut children = [receiver, sender];
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in &mut children {
        let _ = child.kill();
    }
    let [receiver, sender] = children;
    let receiver = receiver.wait_with_output().unwrap();
    let sender = sender.wait_with_output().unwrap();
    let dropped: Vec<u64> =
        (0..2).map(|i| rig.dropped(&namespaces.names[i], &namespaces.devices[i]).unwrap()).collect();
    drop(namespaces);
    eprintln!("loss rig {rig:?}; packets dropped entering a, b: {dropped:?}");
    let expected = format!("ok {frames}");
    assert!(String::from_utf8_lossy(&receiver.stdout).contains(&expected), "receiver: {receiver:?}");
    assert!(String::from_utf8_lossy(&sender.stdout).contains(&expected), "sender: {sender:?}");
    // The rig really dropped packets both ways (a rig that drops nothing proves nothing).
    assert!(dropped.iter().all(|&d| d > 0), "dropped {dropped:?}");
}
