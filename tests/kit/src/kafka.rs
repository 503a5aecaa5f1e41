//! A real Kafka-protocol broker for the tests: `tansu` (installed by tests/setup.sh into
//! tests/.tools/tansu) with in-memory storage on a free 127.0.0.1 port, stopped by PID; and a
//! real Kafka consumer (rdkafka) to read everything back.
#![allow(dead_code)]

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One record as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Tansu {
    pub fn start() -> Self {
        let mut broker = Self {
            child: None,
            port: fanout::hostsim::free_port().unwrap(),
        };
        broker.restart();
        broker
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (empty: storage is in memory).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = super::repo_root().join("tests/.tools/tansu/bin/tansu");
        assert!(
            bin.exists(),
            "the tansu broker is not installed: run tests/setup.sh"
        );
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(bin)
            .args([
                "broker",
                "--cluster-id",
                "fanout-tests",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the broker is gone (and, in memory, so is its data).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .expect("admin client");
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        for r in results {
            r.expect("topic created");
        }
    }

    /// Reads every partition of `topic` from the beginning until `expected` records arrived
    /// (or 20 s passed), in partition order then offset order.
    pub fn consume(&self, topic: &str, partitions: i32, expected: usize) -> Vec<Record> {
        self.read(topic, partitions, |read, _, total| {
            read >= expected || total > Duration::from_secs(20)
        })
    }

    /// Reads every partition of `topic` from the beginning until nothing new arrived for 2 s
    /// (60 s at most): everything the topic holds, duplicates included.
    pub fn consume_all(&self, topic: &str, partitions: i32) -> Vec<Record> {
        self.read(topic, partitions, |_, idle, total| {
            idle > Duration::from_secs(2) || total > Duration::from_secs(60)
        })
    }

    /// Reads from the beginning of every partition until `done(records read, idle, total)`.
    fn read(
        &self,
        topic: &str,
        partitions: i32,
        done: impl Fn(usize, Duration, Duration) -> bool,
    ) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", "fanout-tests")
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "4194304")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).expect("assign");
        let mut out = Vec::new();
        let (started, mut last_new) = (Instant::now(), Instant::now());
        while !done(out.len(), last_new.elapsed(), started.elapsed()) {
            let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = msg.expect("consume");
            last_new = Instant::now();
            let headers = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: msg.partition(),
                offset: msg.offset(),
                key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: msg.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        out
    }
}
