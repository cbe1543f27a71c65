//! Disk full: the broker's data dir on a small loop-mounted ext4 image made by the test (root
//! only). Produce with acks=all until the disk is full: clients get KAFKA_STORAGE_ERROR, nothing
//! acknowledged is lost, no partial batch is stored, other partitions keep serving reads, and
//! producing resumes once space is freed (a topic deleted) without a restart.
//!
//! Skips with a message when not root or when mkfs.ext4/mount are missing.

mod support;

use rill_net::client::{Client, OutgoingRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Size of the test file system.
const IMAGE_MIB: u64 = 48;
/// One produce request: 32 records of 2 KiB (64 KiB).
const RECORDS_PER_BATCH: usize = 32;
const RECORD_BYTES: usize = 2048;
/// Kafka's KAFKA_STORAGE_ERROR.
const KAFKA_STORAGE_ERROR: i16 = 56;

struct LoopMount {
    image: PathBuf,
    mount: PathBuf,
}

impl LoopMount {
    fn create(root: &Path) -> Option<LoopMount> {
        std::fs::create_dir_all(root).unwrap();
        let image = root.join("disk.img");
        let mount = root.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(IMAGE_MIB * 1024 * 1024).unwrap();
        let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image).status();
        if !matches!(mkfs, Ok(s) if s.success()) {
            eprintln!("SKIPPED: mkfs.ext4 unavailable or failed");
            return None;
        }
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount).status();
        if !matches!(mounted, Ok(s) if s.success()) {
            panic!("mount -o loop failed as root: the rig cannot be built");
        }
        Some(LoopMount { image, mount })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

struct Broker {
    child: Child,
    kafka: String,
}

impl Broker {
    fn start(data_dir: &Path, log: &Path) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let kafka = format!("127.0.0.1:{port}");
        let child = Command::new(support::rill_bin())
            .args(["serve", "--cores", "1", "--kafka-listen", &kafka])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("spawn rill serve");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(&kafka).is_ok() {
                return Broker { child, kafka };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("broker did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(tag: u64) -> Vec<OutgoingRecord> {
    (0..RECORDS_PER_BATCH)
        .map(|i| OutgoingRecord {
            key: Some(format!("{tag}-{i}").into_bytes().into()),
            value: Some(vec![u8::try_from(tag % 251).unwrap(); RECORD_BYTES].into()),
            headers: Vec::new(),
        })
        .collect()
}

/// Produces until the broker reports a storage error; returns acknowledged base offset → tag.
fn fill(client: &mut Client, topic: &str, first_tag: u64, limit: usize) -> (BTreeMap<i64, u64>, Option<i16>) {
    let mut acked = BTreeMap::new();
    for i in 0..limit {
        let tag = first_tag + i as u64;
        match client.produce(topic, 0, &batch(tag), -1) {
            Ok(base) => {
                acked.insert(base, tag);
            }
            Err(rill_net::client::ClientError::Kafka { code, .. }) => return (acked, Some(code)),
            Err(other) => panic!("produce failed without a Kafka error: {other}"),
        }
    }
    (acked, None)
}

/// Reads the whole partition and checks every acknowledged batch is there, whole.
fn check_all(client: &mut Client, topic: &str, acked: &BTreeMap<i64, u64>) -> usize {
    let mut offsets = BTreeMap::from([(0, 0i64)]);
    let mut by_offset = BTreeMap::new();
    for _ in 0..10_000 {
        let (records, high_watermarks) = client.fetch(topic, &offsets, 100).expect("fetch");
        for record in &records {
            by_offset.insert(record.offset, record.clone());
        }
        let next = records.iter().map(|r| r.offset + 1).max().unwrap_or(offsets[&0]);
        offsets.insert(0, next);
        if next >= high_watermarks[&0] {
            break;
        }
    }
    for (base, tag) in acked {
        for i in 0..RECORDS_PER_BATCH as i64 {
            let record = by_offset.get(&(base + i)).unwrap_or_else(|| panic!("acknowledged record {} lost", base + i));
            assert_eq!(record.key.as_deref(), Some(format!("{tag}-{i}").as_bytes()));
            let value = record.value.as_ref().expect("value");
            assert_eq!(value.len(), RECORD_BYTES, "partial record at {}", base + i);
            assert!(value.iter().all(|&b| u64::from(b) == tag % 251));
        }
    }
    // No partial batch: every stored record belongs to a whole acknowledged-or-complete batch.
    assert_eq!(by_offset.len() % RECORDS_PER_BATCH, 0, "a partial batch is stored");
    by_offset.len()
}

#[test]
fn full_disk_refuses_with_storage_error_loses_nothing_and_recovers_when_space_is_freed() {
    if not_root() {
        eprintln!("SKIPPED: needs root to loop-mount a file system");
        return;
    }
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-full-{}", std::process::id()));
    let Some(mount) = LoopMount::create(&root) else { return };
    let data_dir = mount.mount.join("data");
    let broker = Broker::start(&data_dir, &root.join("broker.log"));
    let mut client = Client::connect(&broker.kafka).expect("connect");
    client.create_topic("ballast", 1, &[]).unwrap();
    client.create_topic("data", 1, &[]).unwrap();

    // Ballast takes about a third of the disk, then data fills the rest.
    let (ballast, full) = fill(&mut client, "ballast", 1_000_000, (IMAGE_MIB as usize * 1024 / 64) / 3);
    assert_eq!(full, None, "the ballast alone must fit");
    let (acked, full) = fill(&mut client, "data", 0, 10_000);
    assert_eq!(full, Some(KAFKA_STORAGE_ERROR), "a full disk answers KAFKA_STORAGE_ERROR");
    assert!(acked.len() > 50, "only {} batches fit before the disk was full", acked.len());
    // Still full: refused again, the broker is alive, reads work.
    let (more, again) = fill(&mut client, "data", 50_000, 3);
    assert!(more.is_empty());
    assert_eq!(again, Some(KAFKA_STORAGE_ERROR));
    let stored = check_all(&mut client, "data", &acked);
    assert_eq!(stored, acked.len() * RECORDS_PER_BATCH);
    check_all(&mut client, "ballast", &ballast);

    // Free space without a restart: delete the ballast topic.
    client.delete_topic("ballast").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let resumed = loop {
        let (ok, _) = fill(&mut client, "data", 100_000, 1);
        if !ok.is_empty() {
            break ok;
        }
        assert!(Instant::now() < deadline, "producing did not resume after space was freed");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut all = acked.clone();
    all.extend(resumed);
    let stored = check_all(&mut client, "data", &all);
    assert_eq!(stored, all.len() * RECORDS_PER_BATCH);
    eprintln!(
        "disk full: {} MiB file system, acknowledged {} batches ({} records) before KAFKA_STORAGE_ERROR, lost 0; resumed after deleting the ballast topic",
        IMAGE_MIB,
        acked.len(),
        acked.len() * RECORDS_PER_BATCH
    );
    drop(client);
    drop(broker);
    drop(mount);
    let _ = std::fs::remove_dir_all(&root);
}

fn not_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() != "0"
}
