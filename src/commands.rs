//! The client subcommands: `topic`, `produce`, `consume`, `group`, on `rill_net::client`.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use rill_net::client::{Client, OutgoingRecord};

/// Where the broker is.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Broker address HOST:PORT.
    #[arg(long, short = 'b', env = "RILL_BOOTSTRAP", default_value = "127.0.0.1:9092", global = true)]
    pub bootstrap: String,
}

/// `rill topic ...`
#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partitions.
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: i32,
        /// Topic config KEY=VALUE (retention.ms, retention.bytes, segment.bytes, max.message.bytes, cleanup.policy, preallocate).
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// List topics.
    List,
    /// Show partitions, offsets and configs of a topic.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change configs or grow the partition count.
    Alter {
        /// Topic name.
        name: String,
        /// New partition count (only growth).
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Config KEY=VALUE to set.
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// `rill produce`
#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Topic.
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Split each line into KEY and VALUE at the first occurrence of this separator.
    #[arg(long, short = 'K')]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,
    /// Partition (default: by key hash, or round-robin without keys).
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Records per produce request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
}

/// Where `rill consume` starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// First offset.
    Earliest,
    /// End of the log.
    Latest,
    /// An offset.
    Offset(i64),
    /// First offset at or after a timestamp (ms).
    Timestamp(i64),
}

fn parse_start(text: &str) -> Result<StartAt, String> {
    match text {
        "earliest" | "beginning" => Ok(StartAt::Earliest),
        "latest" | "end" => Ok(StartAt::Latest),
        _ => {
            let (kind, value) = text.split_once(':').ok_or("expected earliest, latest, offset:N or timestamp:MS")?;
            let number: i64 = value.parse().map_err(|_| format!("{value:?} is not a number"))?;
            match kind {
                "offset" => Ok(StartAt::Offset(number)),
                "timestamp" => Ok(StartAt::Timestamp(number)),
                _ => Err(format!("unknown start {kind:?}")),
            }
        }
    }
}

/// Output formats of `rill consume`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The value only.
    Value,
    /// KEY<TAB>VALUE.
    Kv,
    /// partition, offset, timestamp, key, value, headers as one JSON object per line.
    Json,
}

/// `rill consume`
#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// Topic.
    pub topic: String,
    /// Start: earliest, latest, offset:N or timestamp:MS (ignored for partitions the group has committed).
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub from: StartAt,
    /// Consumer group: start from its committed offsets and commit what was printed.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// Only this partition.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Output format.
    #[arg(long, value_enum, default_value = "value")]
    pub format: Format,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub count: Option<usize>,
    /// Stop at the end of every partition instead of waiting for more.
    #[arg(long, short = 'e')]
    pub exit_at_end: bool,
}

/// `rill group ...`
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List groups.
    List,
    /// Show a group's state, members and committed offsets of a topic.
    Describe {
        /// Group id.
        group: String,
        /// Show committed offsets and lag of this topic.
        #[arg(long, short = 't')]
        topic: Option<String>,
    },
    /// Reset a group's committed offsets of a topic (the group must have no active members).
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic.
        #[arg(long, short = 't')]
        topic: String,
        /// earliest, latest, offset:N or timestamp:MS.
        #[arg(long, value_parser = parse_start)]
        to: StartAt,
    },
}

fn key_value(text: &str) -> Result<(String, String)> {
    let (key, value) = text.split_once('=').with_context(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

/// Run a topic command.
pub fn topic(connection: &Connection, command: TopicCommand) -> Result<()> {
    let mut client = Client::connect(&connection.bootstrap)?;
    match command {
        TopicCommand::Create { name, partitions, configs } => {
            let configs = configs.iter().map(|c| key_value(c)).collect::<Result<Vec<_>>>()?;
            client.create_topic(&name, partitions, &configs)?;
            println!("created topic {name} with {partitions} partitions");
        }
        TopicCommand::List => {
            for topic in client.topics(None)? {
                println!("{}\t{}", topic.name, topic.partitions);
            }
        }
        TopicCommand::Describe { name } => {
            let partitions = client.partition_count(&name)?;
            println!("topic {name}: {partitions} partitions");
            println!("partition\tlog_start\thigh_watermark");
            for partition in 0..partitions {
                let start = client.list_offset(&name, partition, -2)?;
                let end = client.list_offset(&name, partition, -1)?;
                println!("{partition}\t{start}\t{end}");
            }
            for (key, value, is_default) in client.describe_topic_configs(&name)? {
                println!("{key}={value}{}", if is_default { " (default)" } else { "" });
            }
        }
        TopicCommand::Alter { name, partitions, configs } => {
            if partitions.is_none() && configs.is_empty() {
                bail!("nothing to alter: give --partitions or --config");
            }
            let configs = configs.iter().map(|c| key_value(c)).collect::<Result<Vec<_>>>()?;
            if !configs.is_empty() {
                client.set_topic_configs(&name, &configs)?;
            }
            if let Some(count) = partitions {
                client.create_partitions(&name, count)?;
            }
            println!("altered topic {name}");
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name)?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

/// Kafka's default partitioner hash (murmur2), so keys land where Java clients put them.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let length = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut hash = SEED ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("four bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        hash ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        hash ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        hash ^= u32::from(tail[0]);
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

/// Run `rill produce`.
pub fn produce(connection: &Connection, args: ProduceArgs) -> Result<()> {
    assert!(args.batch > 0);
    let mut client = Client::connect(&connection.bootstrap)?;
    let partitions = client.partition_count(&args.topic)?;
    let headers: Vec<(String, Bytes)> =
        args.headers.iter().map(|h| key_value(h).map(|(k, v)| (k, Bytes::from(v)))).collect::<Result<_>>()?;
    let reader: Box<dyn BufRead> = match &args.file {
        Some(path) => Box::new(std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut pending: BTreeMap<i32, Vec<OutgoingRecord>> = BTreeMap::new();
    let mut round_robin = 0i32;
    let mut sent = 0usize;
    for line in reader.lines() {
        let line = line.context("reading input")?;
        let (key, value) = match &args.key_separator {
            Some(separator) => match line.split_once(separator.as_str()) {
                Some((key, value)) => (Some(Bytes::from(key.to_string())), Bytes::from(value.to_string())),
                None => (None, Bytes::from(line)),
            },
            None => (None, Bytes::from(line)),
        };
        let partition = args.partition.unwrap_or_else(|| match &key {
            Some(key) => i32::try_from((murmur2(key) & 0x7fff_ffff) % u32::try_from(partitions).unwrap_or(1)).unwrap_or(0),
            None => {
                round_robin = (round_robin + 1) % partitions;
                round_robin
            }
        });
        let batch = pending.entry(partition).or_default();
        batch.push(OutgoingRecord { key, value: Some(value), headers: headers.clone() });
        if batch.len() >= args.batch {
            let records = std::mem::take(batch);
            client.produce(&args.topic, partition, &records, -1)?;
            sent += records.len();
        }
    }
    for (partition, records) in pending {
        if !records.is_empty() {
            client.produce(&args.topic, partition, &records, -1)?;
            sent += records.len();
        }
    }
    eprintln!("produced {sent} records to {}", args.topic);
    Ok(())
}

fn start_offset(client: &mut Client, topic: &str, partition: i32, start: &StartAt) -> Result<i64> {
    Ok(match start {
        StartAt::Earliest => client.list_offset(topic, partition, -2)?,
        StartAt::Latest => client.list_offset(topic, partition, -1)?,
        StartAt::Offset(offset) => *offset,
        StartAt::Timestamp(timestamp) => match client.list_offset(topic, partition, *timestamp)? {
            -1 => client.list_offset(topic, partition, -1)?,
            offset => offset,
        },
    })
}

fn json_bytes(bytes: &Option<Bytes>) -> String {
    match bytes {
        None => "null".to_string(),
        Some(bytes) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

/// Run `rill consume`.
pub fn consume(connection: &Connection, args: ConsumeArgs) -> Result<()> {
    let mut client = Client::connect(&connection.bootstrap)?;
    let partitions: Vec<i32> = match args.partition {
        Some(partition) => vec![partition],
        None => (0..client.partition_count(&args.topic)?).collect(),
    };
    let committed = match &args.group {
        Some(group) => client.committed(group, &args.topic, &partitions)?,
        None => BTreeMap::new(),
    };
    let mut offsets = BTreeMap::new();
    for partition in &partitions {
        let offset = match committed.get(partition) {
            Some(offset) if *offset >= 0 => *offset,
            _ => start_offset(&mut client, &args.topic, *partition, &args.from)?,
        };
        offsets.insert(*partition, offset);
    }
    let mut printed = 0usize;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    loop {
        let (records, high_watermarks) = client.fetch(&args.topic, &offsets, if args.exit_at_end { 100 } else { 1000 })?;
        for record in records {
            let expected = offsets[&record.partition];
            if record.offset < expected {
                continue;
            }
            match args.format {
                Format::Value => writeln!(out, "{}", String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()))?,
                Format::Kv => writeln!(
                    out,
                    "{}\t{}",
                    String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()),
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                )?,
                Format::Json => {
                    let headers: Vec<String> = record.headers.iter().map(|(k, v)| format!("{k:?}:{}", json_bytes(v))).collect();
                    writeln!(
                        out,
                        "{{\"partition\":{},\"offset\":{},\"timestamp\":{},\"key\":{},\"value\":{},\"headers\":{{{}}}}}",
                        record.partition,
                        record.offset,
                        record.timestamp,
                        json_bytes(&record.key),
                        json_bytes(&record.value),
                        headers.join(",")
                    )?
                }
            }
            offsets.insert(record.partition, record.offset + 1);
            printed += 1;
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
        }
        out.flush()?;
        if let Some(group) = &args.group {
            client.commit(group, &args.topic, &offsets)?;
        }
        let done_count = args.count.is_some_and(|count| printed >= count);
        let at_end = partitions.iter().all(|p| high_watermarks.get(p).is_some_and(|hw| offsets[p] >= *hw));
        if done_count || (args.exit_at_end && at_end) {
            return Ok(());
        }
    }
}

/// Run a group command.
pub fn group(connection: &Connection, command: GroupCommand) -> Result<()> {
    let mut client = Client::connect(&connection.bootstrap)?;
    match command {
        GroupCommand::List => {
            for (group, protocol_type, state) in client.list_groups()? {
                println!("{group}\t{protocol_type}\t{state}");
            }
        }
        GroupCommand::Describe { group, topic } => {
            let described = client.describe_group(&group)?;
            println!("group {group}: state {} protocol {}", described.group_state, described.protocol_data);
            for member in &described.members {
                println!("member {} client {} host {}", member.member_id, member.client_id, member.client_host);
            }
            if let Some(topic) = topic {
                let partitions: Vec<i32> = (0..client.partition_count(&topic)?).collect();
                let committed = client.committed(&group, &topic, &partitions)?;
                println!("partition\tcommitted\thigh_watermark\tlag");
                for partition in partitions {
                    let end = client.list_offset(&topic, partition, -1)?;
                    let offset = committed.get(&partition).copied().unwrap_or(-1);
                    let lag = if offset >= 0 { (end - offset).to_string() } else { "-".to_string() };
                    println!("{partition}\t{offset}\t{end}\t{lag}");
                }
            }
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            let mut offsets = BTreeMap::new();
            for partition in 0..client.partition_count(&topic)? {
                offsets.insert(partition, start_offset(&mut client, &topic, partition, &to)?);
            }
            client.commit(&group, &topic, &offsets)?;
            for (partition, offset) in offsets {
                println!("{topic}-{partition} -> {offset}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_start("offset:42"), Ok(StartAt::Offset(42)));
        assert_eq!(parse_start("timestamp:1000"), Ok(StartAt::Timestamp(1000)));
        assert!(parse_start("offset:x").is_err());
    }
}
