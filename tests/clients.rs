//! End-to-end tests with real Kafka clients nobody here wrote: kcat (Debian, librdkafka 2.0.2),
//! confluent-kafka (librdkafka 2.16) and kafka-python 3, against `rill serve` processes.

mod support;

use std::process::Command;

use support::Broker;

/// Each broker runs on both cores of the test machine so partitions are spread over cores and
/// requests cross the channel mesh.
const CORES: usize = 2;

#[test]
fn produce_consume_100k_records_over_6_partitions_exactly_once_in_order() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("produce_consume.py", &[]);
}

#[test]
fn idempotent_producer_100k_records_exactly_once() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("produce_consume.py", &["idempotent"]);
}

#[test]
fn gzip_snappy_lz4_zstd_batches_round_trip() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("compression.py", &[]);
}

#[test]
fn topic_admin_through_admin_apis() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("admin.py", &[]);
}

#[test]
fn consumer_group_of_three_rebalances_when_one_leaves() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("group.py", &[]);
}

#[test]
fn kafka_python_produces_and_consumes_in_a_group() {
    let broker = Broker::start(CORES, &[]);
    broker.run_python("kafka_python.py", &[]);
}

fn kcat(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    kcat_on(None, args, stdin)
}

/// Run kcat, optionally against another librdkafka (a folder holding `librdkafka.so.1`).
fn kcat_on(library: Option<&std::path::Path>, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut command = Command::new("kcat");
    if let Some(library) = library {
        command.env("LD_LIBRARY_PATH", library);
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kcat is installed by scripts/test.sh");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn kcat_on_librdkafka_2_0_2_lists_produces_and_consumes() {
    let broker = Broker::start(CORES, &["--auto-create-topics"]);
    let bootstrap = broker.bootstrap();
    let (ok, stdout, stderr) = kcat(&["-b", &bootstrap, "-L", "-m", "30"], None);
    assert!(ok, "kcat -L failed: {stderr}\n{}", broker.log());
    assert!(stdout.contains("1 brokers:"), "{stdout}");
    assert!(stdout.contains(&format!("broker 0 at {bootstrap}")), "{stdout}");
    let lines: String = (0..500).map(|i| format!("key{i}:value {i}\n")).collect();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("kcat-{codec}");
        let (ok, _, stderr) = kcat(&["-b", &bootstrap, "-P", "-t", &topic, "-K:", "-z", codec, "-m", "30"], Some(&lines));
        assert!(ok, "kcat produce {codec} failed: {stderr}\n{}", broker.log());
        let (ok, stdout, stderr) =
            kcat(&["-b", &bootstrap, "-C", "-t", &topic, "-o", "beginning", "-e", "-f", "%k=%s\n", "-m", "30"], None);
        assert!(ok, "kcat consume {codec} failed: {stderr}");
        let expected: String = (0..500).map(|i| format!("key{i}=value {i}\n")).collect();
        assert_eq!(stdout, expected, "kcat {codec} round trip");
    }
    let (ok, stdout, _) = kcat(&["-b", &bootstrap, "-L", "-t", "kcat-zstd", "-m", "30"], None);
    assert!(ok);
    assert!(stdout.contains("topic \"kcat-zstd\" with 1 partitions"), "{stdout}");
}

#[test]
fn admin_http_serves_metrics_and_health() {
    let broker = Broker::start(CORES, &["--auto-create-topics"]);
    let (ok, _, stderr) = kcat(&["-b", &broker.bootstrap(), "-P", "-t", "metered", "-m", "30"], Some("a\nb\n"));
    assert!(ok, "{stderr}");
    let get = |path: &str| broker.admin_get(path);
    assert!(get("/health").ends_with("ok\n"));
    let metrics = get("/metrics");
    assert!(metrics.starts_with("HTTP/1.0 200 OK"), "{metrics}");
    // kcat may send the two lines in one request or two (librdkafka's linger timing).
    let produces = metrics
        .lines()
        .find_map(|line| line.strip_prefix("rill_requests_total{api=\"Produce\"} "))
        .map_or(0, |count| count.trim().parse::<u64>().unwrap());
    assert!((1..=2).contains(&produces), "{metrics}");
    assert!(metrics.contains("rill_partitions 1"), "{metrics}");
    // The produce reached the disk: the owning core timed at least one write.
    let wrote = |line: &str| line.starts_with("rill_storage_latency_us_max{") && line.contains("call=\"write\"");
    assert!(metrics.lines().any(|line| wrote(line) && !line.ends_with(" 0")), "{metrics}");
    assert!(metrics.contains("rill_connection_reads_paused_total{core=\"0\"}"), "{metrics}");
    assert!(get("/nope").starts_with("HTTP/1.0 404"));
}

#[test]
fn sigterm_stops_the_broker_cleanly() {
    let mut broker = Broker::start(CORES, &[]);
    assert!(broker.stop(), "broker did not exit 0 after SIGTERM:\n{}", broker.log());
    assert!(broker.log().contains("rill stopped"), "{}", broker.log());
}

/// The librdkafka 2.16 that confluent-kafka bundles, exposed as `librdkafka.so.1` in a temp folder.
fn bundled_librdkafka() -> std::path::PathBuf {
    let python = support::python();
    let output = Command::new(&python)
        .args(["-c", "import confluent_kafka, os; print(os.path.dirname(confluent_kafka.__file__) + '.libs')"])
        .output()
        .expect("python");
    let libs = std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let library = std::fs::read_dir(&libs)
        .expect("confluent_kafka.libs")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("librdkafka")))
        .expect("bundled librdkafka");
    let folder = std::env::temp_dir().join(format!("rill-librdkafka-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let link = folder.join("librdkafka.so.1");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(library, &link).unwrap();
    folder
}

#[test]
fn kcat_on_librdkafka_2_16_lists_produces_and_consumes() {
    let broker = Broker::start(CORES, &["--auto-create-topics"]);
    let bootstrap = broker.bootstrap();
    let library = bundled_librdkafka();
    let (ok, version, _) = kcat_on(Some(&library), &["-V"], None);
    assert!(ok);
    assert!(version.contains("librdkafka 2.16"), "{version}");
    let (ok, stdout, stderr) = kcat_on(Some(&library), &["-b", &bootstrap, "-L", "-m", "30"], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 brokers:"), "{stdout}");
    let (ok, _, stderr) = kcat_on(Some(&library), &["-b", &bootstrap, "-P", "-t", "new", "-K:", "-z", "zstd", "-m", "30"], Some("k:v\n"));
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) =
        kcat_on(Some(&library), &["-b", &bootstrap, "-C", "-t", "new", "-o", "beginning", "-e", "-f", "%k=%s\n", "-m", "30"], None);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "k=v\n");
    let _ = std::fs::remove_dir_all(library);
}
