//! The three-node cluster of scripts/stack.sh (`MF_KAFKA_NODES=3`) for tests that kill
//! and restart brokers: which node leads which partition, whether every replica is in
//! sync again, who coordinates a consumer group, and nodes taken down and brought
//! back. The stack script gives node i the broker id i and lists the nodes in order in
//! KAFKA_BROKER, so a node's number, its broker id and its place in that list agree.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::process::wait_until;
use super::stack::{stack_script, stack_script_output, Stack};

/// How long a condition of the cluster may take to hold: it should take seconds
/// (9 s of broker session timeout before a dead leader is replaced, up to 9 s for a
/// node to start); this only stops a broken run from hanging.
pub const CLUSTER_LIMIT: Duration = Duration::from_secs(120);

/// One partition as the brokers' metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub partition: i32,
    /// The leader's broker id (= node number); -1 while there is none.
    pub leader: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// The cluster, held exclusively (its tests take nodes down), with a client of its
/// own for metadata.
pub struct Cluster {
    pub stack: Stack,
    metadata: BaseConsumer,
}

impl Cluster {
    /// Fails unless the stack the tests were pointed at is the three-node cluster:
    /// these tests must never pass against one broker by testing nothing.
    pub fn exclusive() -> Cluster {
        let nodes = std::env::var("MF_KAFKA_NODES").unwrap_or_default();
        assert_eq!(
            nodes, "3",
            "MF_KAFKA_NODES is {nodes:?}, not 3: run these tests through scripts/test-cluster.sh, which starts the three-node cluster"
        );
        let stack = Stack::exclusive();
        let brokers = stack.broker.split(',').count();
        assert_eq!(
            brokers, 3,
            "KAFKA_BROKER={} names {brokers} broker(s), not the cluster's 3",
            stack.broker
        );
        let metadata = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &stack.broker)
            .create()
            .expect("creating the metadata client");
        Cluster { stack, metadata }
    }

    /// The PLAINTEXT address of node `node` (1 to 3).
    pub fn address(&self, node: i32) -> String {
        self.stack
            .broker
            .split(',')
            .nth(node as usize - 1)
            .unwrap_or_else(|| panic!("no node {node} in {}", self.stack.broker))
            .to_owned()
    }

    /// Every partition of `topic` (of every topic for None, by topic name), or the
    /// error of a metadata request that no live broker answered.
    fn try_partitions(
        &self,
        topic: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<PartitionState>>, String> {
        let metadata = self
            .metadata
            .fetch_metadata(topic, Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        let mut topics = BTreeMap::new();
        for t in metadata.topics() {
            if let Some(error) = t.error() {
                return Err(format!("topic {}: {error:?}", t.name()));
            }
            let partitions = t
                .partitions()
                .iter()
                .map(|p| PartitionState {
                    partition: p.id(),
                    leader: p.leader(),
                    replicas: p.replicas().to_vec(),
                    isr: p.isr().to_vec(),
                })
                .collect();
            topics.insert(t.name().to_owned(), partitions);
        }
        Ok(topics)
    }

    /// The partitions of `topic`, by number, asked until some broker answers.
    pub fn partitions(&self, topic: &str) -> Vec<PartitionState> {
        let mut last = Err(String::new());
        let answered = wait_until(CLUSTER_LIMIT, || {
            last = self.try_partitions(Some(topic));
            last.as_ref()
                .is_ok_and(|topics| topics.get(topic).is_some_and(|p| !p.is_empty()))
        });
        let mut partitions = match last {
            Ok(mut topics) if answered => topics.remove(topic).unwrap_or_default(),
            Ok(_) => panic!("the brokers never listed a partition of {topic}"),
            Err(error) => panic!("no broker described {topic}: {error}"),
        };
        partitions.sort_by_key(|p| p.partition);
        partitions
    }

    /// The node that leads the most partitions of `topic` (the lowest such number on
    /// a tie), and the partitions it leads.
    pub fn busiest_leader(&self, topic: &str) -> (i32, Vec<i32>) {
        let mut led: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for p in self.partitions(topic) {
            led.entry(p.leader).or_default().push(p.partition);
        }
        led.into_iter()
            .filter(|(leader, _)| *leader > 0)
            .max_by_key(|(leader, partitions)| (partitions.len(), -leader))
            .unwrap_or_else(|| panic!("no partition of {topic} has a leader"))
    }

    /// Waits until none of `partitions` of `topic` is led by `node` any more and each
    /// has a leader; returns the new leaders. The controller elects them once the dead
    /// node's broker session has timed out.
    pub fn wait_for_leaders_other_than(
        &self,
        node: i32,
        topic: &str,
        partitions: &[i32],
    ) -> BTreeMap<i32, i32> {
        let mut leaders = BTreeMap::new();
        let elected = wait_until(CLUSTER_LIMIT, || {
            let Ok(topics) = self.try_partitions(Some(topic)) else {
                return false;
            };
            leaders = topics
                .get(topic)
                .into_iter()
                .flatten()
                .filter(|p| partitions.contains(&p.partition))
                .map(|p| (p.partition, p.leader))
                .collect();
            leaders.len() == partitions.len()
                && leaders.values().all(|&leader| leader > 0 && leader != node)
        });
        assert!(
            elected,
            "partitions {partitions:?} of {topic} still have no leader but node {node}: {leaders:?}"
        );
        leaders
    }

    /// Waits until every partition of every topic (the internal ones too: sub's
    /// group lives in __consumer_offsets) has a leader and all its replicas in sync,
    /// so taking down any one node next leaves a topic of 3 replicas two in sync.
    /// (A topic of fewer replicas, left by another run, counts once its own are in
    /// sync.) Returns how long that took.
    pub fn wait_fully_replicated(&self) -> Duration {
        let started = Instant::now();
        let mut lagging = Vec::new();
        let replicated = wait_until(CLUSTER_LIMIT, || {
            let Ok(topics) = self.try_partitions(None) else {
                return false;
            };
            lagging = topics
                .iter()
                .flat_map(|(topic, partitions)| {
                    partitions
                        .iter()
                        .filter(|p| {
                            let mut isr = p.isr.clone();
                            let mut replicas = p.replicas.clone();
                            isr.sort_unstable();
                            replicas.sort_unstable();
                            p.leader < 1 || isr != replicas
                        })
                        .map(move |p| format!("{topic}/{}: {p:?}", p.partition))
                })
                .collect();
            lagging.is_empty() && !topics.is_empty()
        });
        assert!(
            replicated,
            "partitions still under-replicated after {CLUSTER_LIMIT:?}: {lagging:#?}"
        );
        started.elapsed()
    }

    /// The node coordinating consumer group `group`, as Kafka's own consumer-group
    /// tool reports it (`--describe --state`). The group must exist.
    pub fn coordinator(&self, group: &str) -> i32 {
        let mut last = String::new();
        let mut node = None;
        let found = wait_until(CLUSTER_LIMIT, || {
            let answer = stack_script_output(&[
                "kafka-tool",
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                "--bootstrap-server",
                &self.stack.broker,
                "--describe",
                "--state",
                "--group",
                group,
            ]);
            last = match answer {
                Ok(out) => out,
                Err(error) => error,
            };
            node = coordinator_in(&last, group);
            node.is_some()
        });
        assert!(found, "no coordinator of group {group} in:\n{last}");
        node.unwrap()
    }

    /// Where `partition` of `topic` starts and ends now (low and high watermarks).
    pub fn watermarks(&self, topic: &str, partition: i32) -> (i64, i64) {
        self.metadata
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("asking where {topic}/{partition} ends: {e}"))
    }

    /// SIGKILLs node `node`: a crash, no controlled shutdown.
    pub fn kill(&self, node: i32) -> Down {
        self.take_down("kill-node", node)
    }

    /// Stops node `node` gracefully: its leadership moves to the others first.
    pub fn stop(&self, node: i32) -> Down {
        self.take_down("stop-node", node)
    }

    fn take_down(&self, how: &str, node: i32) -> Down {
        let number = node.to_string();
        if let Err(error) = stack_script(&[how, &number]) {
            panic!("could not {how} {node}: {error}");
        }
        Down { node, up: false }
    }

    /// Whether node `node` runs now, by the stack script's pid file.
    pub fn runs(&self, node: i32) -> bool {
        stack_script(&["node-pid", &node.to_string()]).is_ok()
    }
}

/// The coordinator's broker id in the consumer-group tool's `--describe --state`
/// table, whose row for the group reads `GROUP  COORDINATOR (ID)  ...`, e.g.
/// `g  127.0.0.1:29102 (2)  range  Stable  1`.
fn coordinator_in(answer: &str, group: &str) -> Option<i32> {
    answer.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != group {
            return None;
        }
        let _address = words.next()?;
        words
            .next()?
            .strip_prefix('(')?
            .strip_suffix(')')?
            .parse()
            .ok()
    })
}

/// A node taken down. `start` brings it back (and fails the test if the script
/// does); a test that fails first still brings it back when the guard drops, so the
/// next test finds the cluster whole.
pub struct Down {
    pub node: i32,
    up: bool,
}

impl Down {
    /// Starts the node again and waits until it serves; returns how long that took.
    pub fn start(mut self) -> Duration {
        self.up = true;
        let started = Instant::now();
        if let Err(error) = stack_script(&["start", "kafka"]) {
            panic!("could not start node {} again: {error}", self.node);
        }
        started.elapsed()
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if !self.up {
            if let Err(error) = stack_script(&["start", "kafka"]) {
                eprintln!("could not start node {} again: {error}", self.node);
            }
        }
    }
}

/// Watches where each partition of a topic ends, twice a second on a thread with a
/// client of its own, to tell when each took writes again after a node died: that
/// tells a stalled producer from a stalled partition.
pub struct EndsWatch {
    stop: Arc<AtomicBool>,
    watcher: thread::JoinHandle<Vec<(Duration, BTreeMap<i32, i64>)>>,
}

impl EndsWatch {
    pub fn start(stack: &Stack, topic: &str, partitions: i32) -> EndsWatch {
        let client: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &stack.broker)
            .create()
            .expect("creating the watching client");
        let topic = topic.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let watcher = thread::spawn(move || {
            let started = Instant::now();
            let mut seen = Vec::new();
            let mut next = started;
            while !stopped.load(Ordering::SeqCst) {
                if Instant::now() < next {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                next += Duration::from_millis(500);
                // A partition whose leader is dead answers nothing in time: left out.
                let ends = (0..partitions)
                    .filter_map(|p| {
                        let limit = Duration::from_millis(400);
                        let (_, end) = client.fetch_watermarks(&topic, p, limit).ok()?;
                        Some((p, end))
                    })
                    .collect();
                seen.push((started.elapsed(), ends));
            }
            seen
        });
        EndsWatch { stop, watcher }
    }

    /// Stops watching; returns, per partition, how long after the start its end
    /// first moved past where it was at the first sample (None if it never did).
    pub fn finish(self) -> BTreeMap<i32, Option<Duration>> {
        self.stop.store(true, Ordering::SeqCst);
        let seen = self.watcher.join().expect("the watching thread failed");
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        let mut moved: BTreeMap<i32, Option<Duration>> = BTreeMap::new();
        for (at, ends) in &seen {
            for (&partition, &end) in ends {
                let from = *first.entry(partition).or_insert(end);
                let slot = moved.entry(partition).or_insert(None);
                if slot.is_none() && end > from {
                    *slot = Some(*at);
                }
            }
        }
        moved
    }
}
