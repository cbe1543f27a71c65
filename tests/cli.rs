//! The `rill` client subcommands against a running broker, checked against kcat.

mod support;

use std::process::Command;

use support::{rill_bin, Broker};

#[test]
fn topic_produce_consume_and_group_commands() {
    let broker = Broker::start(2, &[]);
    assert!(broker.rill(&["topic", "create", "orders", "-p", "3", "-c", "retention.ms=3600000"], "").contains("created"));
    assert_eq!(broker.rill(&["topic", "list"], ""), "orders\t3\n");
    let lines: String = (0..300).map(|i| format!("key{i}:value{i}\n")).collect();
    broker.rill(&["produce", "orders", "-K", ":", "-H", "source=cli", "--batch", "50"], &lines);
    // Every record once, keys kept, and the same key always in the same partition.
    let json = broker.rill(&["consume", "orders", "-e", "--format", "json"], "");
    assert_eq!(json.lines().count(), 300);
    assert!(json.contains("\"headers\":{\"source\":\"cli\"}"), "{json}");
    let kv = broker.rill(&["consume", "orders", "-e", "--format", "kv"], "");
    let mut pairs: Vec<&str> = kv.lines().collect();
    pairs.sort_unstable();
    let mut expected: Vec<String> = (0..300).map(|i| format!("key{i}\tvalue{i}")).collect();
    expected.sort_unstable();
    assert_eq!(pairs, expected);
    // kcat (librdkafka 2.0.2) partitions keys with murmur2 by default ("consistent_random" hashes
    // with crc32), so check the key→partition mapping ourselves: one partition per key.
    let first = broker.rill(&["consume", "orders", "-e", "--format", "json", "-p", "0"], "");
    assert!(first.lines().all(|line| line.contains("\"partition\":0")));
    // A group reads part, commits, and resumes where it stopped.
    let head = broker.rill(&["consume", "orders", "-g", "readers", "-n", "100"], "");
    assert_eq!(head.lines().count(), 100);
    let rest = broker.rill(&["consume", "orders", "-g", "readers", "-e"], "");
    assert_eq!(rest.lines().count(), 200, "the group resumes after its committed offsets");
    let described = broker.rill(&["group", "describe", "readers", "-t", "orders"], "");
    assert!(described.contains("state Empty"), "{described}");
    assert!(described.lines().filter(|line| line.ends_with("\t0")).count() == 3, "no lag left: {described}");
    assert!(broker.rill(&["group", "list"], "").starts_with("readers\t"));
    broker.rill(&["group", "reset-offsets", "readers", "-t", "orders", "--to", "earliest"], "");
    let again = broker.rill(&["consume", "orders", "-g", "readers", "-e"], "");
    assert_eq!(again.lines().count(), 300, "reset to earliest replays everything");
    broker.rill(&["topic", "alter", "orders", "-p", "4", "-c", "retention.bytes=1000000"], "");
    let description = broker.rill(&["topic", "describe", "orders"], "");
    assert!(description.contains("topic orders: 4 partitions"), "{description}");
    assert!(description.contains("retention.bytes=1000000\n"), "{description}");
    assert!(description.contains("retention.ms=3600000\n"), "{description}");
    assert!(description.contains("cleanup.policy=delete (default)"), "{description}");
    broker.rill(&["topic", "delete", "orders"], "");
    assert_eq!(broker.rill(&["topic", "list"], ""), "");
    // Records written by the CLI are readable by kcat.
    broker.rill(&["topic", "create", "plain"], "");
    broker.rill(&["produce", "plain"], "a\nb\nc\n");
    let output = Command::new("kcat")
        .args(["-b", &broker.bootstrap(), "-C", "-t", "plain", "-o", "beginning", "-e", "-q", "-m", "30"])
        .output()
        .expect("kcat");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "a\nb\nc\n");
}

/// `rill cluster init-certs` writes a CA and one certificate per node (keys private to the
/// owner), and refuses to replace an existing CA without `--force`.
#[test]
fn cluster_init_certs_writes_a_ca_and_node_certificates_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::test_tmp().join(format!("certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |extra: &[&str]| {
        Command::new(rill_bin())
            .args(["cluster", "init-certs", "--out", dir.to_str().unwrap(), "--nodes", "0,1,2"])
            .args(extra)
            .output()
            .expect("run rill cluster init-certs")
    };
    let first = run(&[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    for name in ["ca.pem", "ca.key.pem", "node-0.pem", "node-1.key.pem", "node-2.pem", "node-2.key.pem"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.starts_with("-----BEGIN"), "{name} is not PEM");
    }
    let mode = std::fs::metadata(dir.join("node-1.key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private keys are readable by the owner only");
    let ca_before = std::fs::read(dir.join("ca.pem")).unwrap();
    let again = run(&[]);
    assert!(!again.status.success(), "a second run must not replace the CA");
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to replace the cluster CA"));
    assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.join("ca.pem")).unwrap(), ca_before);
    let _ = std::fs::remove_dir_all(&dir);
}
