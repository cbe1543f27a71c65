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

fn run(command: &str) -> bool {
    Command::new("sh").arg("-c").arg(command).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// With 5% loss each way (tc netem in two network namespaces joined by a veth pair), every
/// frame of four lanes still arrives, in order per lane.
#[test]
fn netem_five_percent_loss_delivers_every_frame_in_order() {
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !is_root || !run("command -v ip && command -v tc") {
        eprintln!("SKIPPED: needs root and iproute2 (ip, tc) for network namespaces and netem");
        return;
    }
    let tag = format!("rr{}", std::process::id() % 100_000);
    let (ns_a, ns_b) = (format!("{tag}a"), format!("{tag}b"));
    let cleanup = || {
        run(&format!("ip netns del {ns_a}"));
        run(&format!("ip netns del {ns_b}"));
    };
    cleanup();
    let setup = [
        format!("ip netns add {ns_a}"),
        format!("ip netns add {ns_b}"),
        format!("ip link add {tag}x netns {ns_a} type veth peer name {tag}y netns {ns_b}"),
        format!("ip -n {ns_a} addr add 10.77.0.1/24 dev {tag}x"),
        format!("ip -n {ns_b} addr add 10.77.0.2/24 dev {tag}y"),
        format!("ip -n {ns_a} link set {tag}x up"),
        format!("ip -n {ns_b} link set {tag}y up"),
        format!("ip -n {ns_a} link set lo up"),
        format!("ip -n {ns_b} link set lo up"),
        format!("ip netns exec {ns_a} tc qdisc add dev {tag}x root netem loss 5% delay 1ms"),
        format!("ip netns exec {ns_b} tc qdisc add dev {tag}y root netem loss 5% delay 1ms"),
    ];
    for step in &setup {
        if !run(step) {
            cleanup();
            eprintln!("SKIPPED: could not set up namespaces or netem ({step}); needs iproute2 and the kernel sch_netem qdisc");
            return;
        }
    }
    let certs = tempfile::tempdir().unwrap();
    let certs_path = certs.path().to_str().unwrap().to_string();
    assert!(Command::new(NODE).args(["init-certs", &certs_path, "1", "2"]).status().unwrap().success());
    let frames = "4000";
    let receiver = Command::new("ip")
        .args(["netns", "exec", &ns_b, NODE, "lossy-link", "10.77.0.2:7400", "10.77.0.1:7400", &certs_path, frames, "receive"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sender = Command::new("ip")
        .args(["netns", "exec", &ns_a, NODE, "lossy-link", "10.77.0.1:7400", "10.77.0.2:7400", &certs_path, frames, "send"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
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
    cleanup();
    let expected = format!("ok {frames}");
    assert!(String::from_utf8_lossy(&receiver.stdout).contains(&expected), "receiver: {receiver:?}");
    assert!(String::from_utf8_lossy(&sender.stdout).contains(&expected), "sender: {sender:?}");
}
