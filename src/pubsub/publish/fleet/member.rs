//! A pub as a member of the fleet's consumer group: the targets topic's partitions
//! the group gives it, each read to its end before its targets are scheduled, live
//! changes after that, and the targets dropped when their partition moves away.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message, TopicPartitionList};

use super::read::{fold, Latest};
use super::record;
use crate::cli::PubArgs;
use crate::pubsub::kafka;
use crate::pubsub::publish::probe::{Probe, ProbeMaker};
use crate::pubsub::publish::schedule::Dispatcher;
use crate::pubsub::publish::targets::{Defaults, Patterns};
use crate::shutdown::Shutdown;
use crate::sync::lock;

const ASK_LIMIT: Duration = Duration::from_secs(5);

/// Where a scheduled target came from and where it sits in the schedule.
struct Placed {
    partition: i32,
    slot: usize,
}

/// A partition being read to the end it had when it was assigned.
struct Restoring {
    /// Its high watermark then; None if it could not be asked, and then the end is
    /// known when librdkafka reports reaching it.
    end: Option<i64>,
    reached: bool,
    latest: Latest,
}

/// Partitions assigned together, logged together once all are read.
struct Assignment {
    partitions: Vec<i32>,
    since: Instant,
}

pub struct Member {
    consumer: BaseConsumer<MemberContext>,
    topic: String,
    defaults: Defaults,
    maker: ProbeMaker,
    dispatcher: Arc<Dispatcher<Probe>>,
    scheduled: HashMap<String, Placed>,
    restoring: HashMap<i32, Restoring>,
    assignments: Vec<Assignment>,
    /// Partitions this member holds, restored or not.
    held: BTreeSet<i32>,
}

impl Member {
    /// Joins the fleet's group on `topic`; targets arrive through [`Member::serve`].
    pub fn join(
        args: &PubArgs,
        topic: &str,
        defaults: Defaults,
        dispatcher: Arc<Dispatcher<Probe>>,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Member> {
        let mut config = kafka::client_config(&args.kafka)?;
        kafka::set_group_session(&mut config, args.session_timeout);
        let consumer: BaseConsumer<MemberContext> = config
            .set("group.id", &args.pub_group)
            // The topic is state, not a stream: every assignment reads it from the start.
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            // Only the partitions that move are revoked: the others' targets keep
            // their schedule through a rebalance.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("topic.metadata.refresh.interval.ms", "5000")
            .create_with_context(MemberContext::default())
            .context("creating the Kafka consumer of the targets topic")?;
        let known = kafka::wait_for_brokers(consumer.client(), || {}, &args.kafka, shutdown)?;
        if !known.knows(topic) {
            log::warn!(
                "the targets topic {topic} does not exist yet; waiting for it (`metrics-flow targets apply` makes it)"
            );
        }
        consumer
            .subscribe(&[topic])
            .with_context(|| format!("joining group {} on {topic}", args.pub_group))?;
        log::info!("joined group {} on {topic}", args.pub_group);
        Ok(Member {
            consumer,
            topic: topic.to_owned(),
            defaults,
            maker: ProbeMaker::default(),
            dispatcher,
            scheduled: HashMap::new(),
            restoring: HashMap::new(),
            assignments: Vec::new(),
            held: BTreeSet::new(),
        })
    }

    /// Serves the group for up to `wait`: partitions that move, records that arrive.
    pub fn serve(&mut self, wait: Duration) {
        let polled = self.consumer.poll(wait).map(|result| {
            result.map(|message| {
                let key = message.key().map(<[u8]>::to_vec);
                let value = message.payload().map(<[u8]>::to_vec);
                (message.partition(), message.offset(), key, value)
            })
        });
        self.take_moves();
        match polled {
            None => {}
            Some(Ok((partition, offset, key, value))) => {
                self.consumer.context().last_error.answered();
                self.record(partition, offset, key.as_deref(), value.as_deref());
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(restoring) = self.restoring.get_mut(&partition) {
                    restoring.reached = true;
                }
            }
            Some(Err(error)) => self.consumer.context().last_error.error(&error, ""),
        }
        self.finish_restores();
    }

    /// Partitions given or taken by the group since the last poll.
    fn take_moves(&mut self) {
        let moves = std::mem::take(&mut *lock(&self.consumer.context().moves));
        for moved in moves {
            match moved {
                Moved::Assigned(partitions) => self.assigned(partitions),
                Moved::Revoked(partitions) => self.revoked(&partitions),
            }
        }
    }

    fn assigned(&mut self, partitions: Vec<i32>) {
        // The eager protocols hand out the whole set again; only new ones are read.
        let partitions: Vec<i32> = partitions
            .into_iter()
            .filter(|partition| !self.held.contains(partition))
            .collect();
        for &partition in &partitions {
            let end = match self
                .consumer
                .fetch_watermarks(&self.topic, partition, ASK_LIMIT)
            {
                Ok((low, high)) => Some(if high > low { high } else { 0 }),
                Err(error) => {
                    log::warn!("could not ask where {}[{partition}] ends: {error}; reading until librdkafka says", self.topic);
                    None
                }
            };
            self.held.insert(partition);
            self.restoring.insert(
                partition,
                Restoring {
                    // An empty partition is read as soon as it is assigned.
                    reached: end == Some(0),
                    end,
                    latest: Latest::new(),
                },
            );
        }
        self.assignments.push(Assignment {
            partitions,
            since: Instant::now(),
        });
    }

    fn revoked(&mut self, partitions: &[i32]) {
        let mut dropped = 0;
        for partition in partitions {
            self.held.remove(partition);
            self.restoring.remove(partition);
        }
        self.scheduled.retain(|_, placed| {
            let keep = !partitions.contains(&placed.partition);
            if !keep {
                self.dispatcher.remove(placed.slot);
                dropped += 1;
            }
            keep
        });
        log::info!(
            "revoked partitions {partitions:?}: {dropped} targets; checking {} in all",
            self.scheduled.len()
        );
    }

    fn record(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        if let Some(restoring) = self.restoring.get_mut(&partition) {
            fold(&mut restoring.latest, key, value);
            if restoring.end.is_some_and(|end| offset + 1 >= end) {
                restoring.reached = true;
            }
            return;
        }
        if !self.held.contains(&partition) {
            return;
        }
        let Some(key) = key else {
            log::warn!(
                "a record without a key in {}[{partition}]; skipped",
                self.topic
            );
            return;
        };
        let key = String::from_utf8_lossy(key).into_owned();
        match value {
            Some(value) => self.upsert(partition, key, value),
            None => {
                if let Some(placed) = self.scheduled.remove(&key) {
                    self.dispatcher.remove(placed.slot);
                    log::info!("target removed: {key}");
                }
            }
        }
    }

    /// A target that arrives or changes after its partition was read: in force now.
    fn upsert(&mut self, partition: i32, key: String, value: &[u8]) {
        let Some(probe) = self.probe(&key, value, &mut Patterns::default()) else {
            return;
        };
        let interval = probe.target.interval;
        match self.scheduled.get(&key) {
            Some(placed) => {
                self.dispatcher.replace(placed.slot, probe, interval);
                log::info!("target changed: {key}");
            }
            None => {
                let slot = self.dispatcher.add(vec![(probe, interval)])[0];
                self.scheduled
                    .insert(key.clone(), Placed { partition, slot });
                log::info!("target added: {key}");
            }
        }
    }

    /// The probe a record describes; None, with a warning, if it cannot be checked.
    /// A target already scheduled keeps its previous settings then.
    /// `patterns` shares compiled patterns between the targets of one restore.
    fn probe(&mut self, key: &str, value: &[u8], patterns: &mut Patterns) -> Option<Probe> {
        let made = record::decode(value)
            .and_then(|spec| {
                spec.target(&self.defaults, patterns)
                    .map_err(|e| format!("{}: {}", e.key, e.text))
            })
            .and_then(|target| self.maker.make(target).map_err(|e| e.to_string()));
        match made {
            Ok(probe) => Some(probe),
            Err(why) => {
                log::warn!("target {key} in {} cannot be checked: {why}", self.topic);
                None
            }
        }
    }

    /// Schedules the targets of every partition read to its end, and logs each
    /// assignment once all its partitions are.
    fn finish_restores(&mut self) {
        let done: Vec<i32> = self
            .restoring
            .iter()
            .filter(|(_, restoring)| restoring.reached)
            .map(|(&partition, _)| partition)
            .collect();
        for partition in done {
            let restoring = self.restoring.remove(&partition).expect("listed above");
            let mut work = Vec::new();
            let mut keys = Vec::new();
            let mut patterns = Patterns::default();
            for (key, value) in &restoring.latest {
                if let Some(probe) = self.probe(key, value, &mut patterns) {
                    let interval = probe.target.interval;
                    work.push((probe, interval));
                    keys.push(key.clone());
                }
            }
            let slots = self.dispatcher.add(work);
            for (key, slot) in keys.into_iter().zip(slots) {
                self.scheduled.insert(key, Placed { partition, slot });
            }
        }
        let restoring = &self.restoring;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.assignments)
            .into_iter()
            .partition(|a| a.partitions.iter().all(|p| !restoring.contains_key(p)));
        self.assignments = waiting;
        for assignment in ready.into_iter().filter(|a| !a.partitions.is_empty()) {
            let targets = self
                .scheduled
                .values()
                .filter(|placed| assignment.partitions.contains(&placed.partition))
                .count();
            log::info!(
                "assigned partitions {:?}: {targets} targets (read in {:.1} s); checking {} in all",
                assignment.partitions,
                assignment.since.elapsed().as_secs_f64(),
                self.scheduled.len()
            );
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Closing the consumer sends the broker a LeaveGroup, so the others take these
        // targets at once rather than after the session timeout.
        log::info!(
            "leaving the fleet: {} targets go to the other pubs",
            self.scheduled.len()
        );
        kafka::close_consumer(&self.consumer);
    }
}

/// Partitions that moved, as the rebalance callback saw them.
enum Moved {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The context of a member's consumer: librdkafka's errors logged and kept, and the
/// partitions that moved, for `serve` to act on outside the callback.
#[derive(Default)]
struct MemberContext {
    last_error: kafka::LastError,
    moves: Mutex<Vec<Moved>>,
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    let mut partitions: Vec<i32> = list.elements().iter().map(|e| e.partition()).collect();
    partitions.sort_unstable();
    partitions
}

impl ClientContext for MemberContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.last_error.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if kafka::is_consumers_routine(&error) {
            log::debug!("{reason}");
        } else {
            self.last_error.error(&error, reason);
        }
    }
}

impl kafka::KeepsLastError for MemberContext {
    fn last_error(&self) -> &kafka::LastError {
        &self.last_error
    }
}

impl ConsumerContext for MemberContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let moved = match rebalance {
            Rebalance::Assign(list) => Moved::Assigned(partitions_of(list)),
            Rebalance::Revoke(list) => Moved::Revoked(partitions_of(list)),
            Rebalance::Error(error) => {
                log::error!("the fleet's rebalance failed: {error}");
                return;
            }
        };
        lock(&self.moves).push(moved);
    }
}
