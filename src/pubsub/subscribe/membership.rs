//! Whether a consumer without partitions is still in its group, and saying why it waits.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::pubsub::kafka;

/// How long a consumer holds no partitions before it says why it waits.
const WAITING_NOTICE_AFTER: Duration = Duration::from_secs(3);
/// How long a consumer may hold no partitions before its group membership is checked.
const MEMBERSHIP_GRACE: Duration = Duration::from_secs(30);

/// Watches that a consumer holding no partitions is still a member of its group. An
/// idle member (more consumers than partitions) is listed by the broker and left alone.
pub struct Membership {
    pub client_id: String,
    group: String,
    unassigned_since: Option<Instant>,
    last_check: Option<Instant>,
    said_why_waiting: bool,
}

impl Membership {
    pub fn new(group: &str) -> Membership {
        // Unique per consumer, so that group listings tell the processes apart.
        let client_id = format!(
            "metrics-flow-sub-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        Membership {
            client_id,
            group: group.to_owned(),
            unassigned_since: None,
            last_check: None,
            said_why_waiting: false,
        }
    }

    /// Once per stretch without partitions, after WAITING_NOTICE_AFTER: a restarted
    /// consumer can wait that long for a member that died without leaving the group.
    pub fn say_why_waiting(&mut self, assigned: bool, topic: &str, session_timeout: Duration) {
        if assigned {
            self.said_why_waiting = false;
            return;
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        if self.said_why_waiting || since.elapsed() < WAITING_NOTICE_AFTER {
            return;
        }
        self.said_why_waiting = true;
        log::info!(
            "waiting for partitions of {topic} from group {}: the group is rebalancing, and a member that stopped without leaving (killed, say) keeps its partitions until its session times out, within {} s (--session-timeout)",
            self.group,
            session_timeout.as_secs_f64()
        );
    }

    /// Whether the group went on without this consumer, though the topic exists:
    /// librdkafka does not always notice after its coordinator restarts.
    pub fn lost<C: ConsumerContext>(
        &mut self,
        consumer: &BaseConsumer<C>,
        assigned: bool,
        topic: &str,
    ) -> bool {
        if assigned {
            self.unassigned_since = None;
            return false;
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        let checked_lately = self
            .last_check
            .is_some_and(|t| t.elapsed() < MEMBERSHIP_GRACE);
        if since.elapsed() < MEMBERSHIP_GRACE || checked_lately {
            return false;
        }
        self.last_check = Some(Instant::now());
        let limit = Duration::from_secs(5);
        let topic_exists =
            kafka::partition_count(consumer.client(), topic, limit).is_ok_and(|n| n > 0);
        let me = member_id(consumer);
        let listed = consumer
            .fetch_group_list(Some(&self.group), limit)
            .map(|list| {
                let members = list.groups().iter().flat_map(|g| g.members());
                is_listed(members.map(|m| m.id()), me.as_deref())
            });
        log::debug!(
            "no partitions for {:.0} s; topic exists: {topic_exists}, listed in group {}: {listed:?}",
            since.elapsed().as_secs_f64(),
            self.group
        );
        topic_exists && matches!(listed, Ok(false))
    }
}

/// The member id the coordinator gave this consumer; rdkafka has no safe call for it.
fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<String> {
    let native = consumer.client().native_ptr();
    // SAFETY: the client outlives this call; librdkafka returns a NUL-terminated copy
    // (or NULL), which is freed here with its own allocator.
    unsafe {
        let id = rdkafka::bindings::rd_kafka_memberid(native);
        if id.is_null() {
            return None;
        }
        let text = std::ffi::CStr::from_ptr(id).to_string_lossy().into_owned();
        rdkafka::bindings::rd_kafka_mem_free(native, id.cast());
        Some(text)
    }
}

/// Whether the group lists this consumer's member id. Not its client id: after a
/// broker restart the coordinator reloads the member from before the outage, under the
/// same client id, and lists it until its session times out, while librdkafka may be
/// waiting to rejoin under a new member id. Without a member id it is not a member.
fn is_listed<'a>(mut members: impl Iterator<Item = &'a str>, me: Option<&str>) -> bool {
    match me {
        Some(me) if !me.is_empty() => members.any(|id| id == me),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_listed;

    #[test]
    fn a_member_is_known_by_its_member_id_not_by_a_ghost_of_it() {
        let listed = ["sub-1-old", "sub-2"];
        assert!(is_listed(listed.into_iter(), Some("sub-2")));
        // The coordinator's reloaded member from before a restart, not this one.
        assert!(!is_listed(listed.into_iter(), Some("sub-1-new")));
        assert!(!is_listed(listed.into_iter(), Some("")));
        assert!(!is_listed(listed.into_iter(), None));
    }
}
