//! Log lines of one kind at most once per window, the rest counted: an outage makes
//! librdkafka report errors every few milliseconds, and a full queue drops a result
//! per check.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// The shortest gap between two log lines of one kind.
pub const WINDOW: Duration = Duration::from_secs(10);

/// When each kind was last logged, and how many went unlogged since.
pub struct Throttle<K> {
    kinds: HashMap<K, Seen>,
    /// When the first line of the current run of trouble was admitted.
    since: Option<Instant>,
}

struct Seen {
    logged_at: Instant,
    unlogged: u64,
}

impl<K> Default for Throttle<K> {
    fn default() -> Throttle<K> {
        Throttle {
            kinds: HashMap::new(),
            since: None,
        }
    }
}

impl<K: Eq + Hash> Throttle<K> {
    /// Whether an event of `kind` at `now` is to be logged and, if so, how many of its
    /// kind went unlogged before it.
    pub fn admit(&mut self, kind: K, now: Instant) -> Option<u64> {
        self.since.get_or_insert(now);
        match self.kinds.get_mut(&kind) {
            Some(seen) if now.duration_since(seen.logged_at) < WINDOW => {
                seen.unlogged += 1;
                None
            }
            Some(seen) => {
                seen.logged_at = now;
                Some(std::mem::take(&mut seen.unlogged))
            }
            None => {
                let seen = Seen {
                    logged_at: now,
                    unlogged: 0,
                };
                self.kinds.insert(kind, seen);
                Some(0)
            }
        }
    }

    /// Forgets everything, so the next event of any kind is logged; returns when the
    /// trouble began, if there was any.
    pub fn reset(&mut self) -> Option<Instant> {
        self.kinds.clear();
        self.since.take()
    }
}

/// The tail of a log line admitted after `unlogged` others of its kind.
pub fn more_like_it(unlogged: u64) -> String {
    match unlogged {
        0 => String::new(),
        n => format!(" ({n} more like it since the last such line)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_kind_is_logged_at_most_once_a_window_with_a_count() {
        let mut throttle = Throttle::default();
        let now = Instant::now();
        assert_eq!(throttle.admit("AllBrokersDown", now), Some(0));
        for ms in [1, 50, 5_000] {
            let later = now + Duration::from_millis(ms);
            assert_eq!(throttle.admit("AllBrokersDown", later), None);
        }
        let other = now + Duration::from_millis(60);
        assert_eq!(
            throttle.admit("BrokerTransportFailure", other),
            Some(0),
            "another kind is logged at once"
        );
        let next_window = now + WINDOW + Duration::from_millis(1);
        assert_eq!(
            throttle.admit("AllBrokersDown", next_window),
            Some(3),
            "the next one says how many went unlogged"
        );
        assert_eq!(throttle.reset(), Some(now));
        assert_eq!(throttle.admit("AllBrokersDown", next_window), Some(0));
    }
}
