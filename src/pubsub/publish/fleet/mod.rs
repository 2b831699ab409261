//! Fleet mode: targets kept in a compacted Kafka topic ([`record`] is its schema) and
//! shared by every pub of a consumer group, which hands each pub some of its
//! partitions and moves them when a pub joins, leaves or dies.
//!
//! [`command`] is `metrics-flow targets` (apply, list), [`read`] reads the topic
//! whole, [`member`] is a pub's side: the partitions it holds and their targets.

pub mod command;
pub mod member;
pub mod read;
pub mod record;
