//! Day partitions (UTC) of the results and of the hourly rollups: made ahead of time
//! and for any day a batch brings, and dropped whole once older than the retention,
//! so that keeping a year never needs a bulk DELETE.
//!
//! A partition of day D is named `<table>_dYYYYMMDD` (`<table>_hourly_dYYYYMMDD`).
//! A database upgraded from an unpartitioned release keeps its old rows in one
//! partition, `<table>_beforeYYYYMMDD`, holding everything before that day.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use postgres::Client;

use crate::pubsub::table::TableName;

/// The two partitioned tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Results,
    Hourly,
}

impl Kind {
    fn parent(self, table: &TableName) -> TableName {
        match self {
            Kind::Results => table.clone(),
            Kind::Hourly => table.with_suffix("_hourly"),
        }
    }
}

/// What partitions exist, as far as this process knows.
#[derive(Debug, Default)]
pub struct Partitions {
    days: BTreeSet<(Kind, NaiveDate)>,
    /// The day before which an upgraded table's old partition holds everything.
    before: Vec<(Kind, NaiveDate)>,
}

/// A partition found in the database, from its name.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Day(NaiveDate),
    Before(NaiveDate),
}

/// Reads a partition's name as made by this module; None for any other.
pub fn parse_name(parent: &str, name: &str) -> Option<Found> {
    let rest = name.strip_prefix(parent)?.strip_prefix('_')?;
    let (found, date): (fn(NaiveDate) -> Found, &str) = match rest.strip_prefix("before") {
        Some(date) => (Found::Before, date),
        None => (Found::Day, rest.strip_prefix('d')?),
    };
    NaiveDate::parse_from_str(date, "%Y%m%d").ok().map(found)
}

pub fn day_name(parent: &TableName, day: NaiveDate) -> TableName {
    parent.with_suffix(&format!("_d{}", day.format("%Y%m%d")))
}

pub fn before_name(parent: &TableName, day: NaiveDate) -> TableName {
    parent.with_suffix(&format!("_before{}", day.format("%Y%m%d")))
}

/// A timestamptz literal of a day's UTC midnight.
pub fn midnight(day: NaiveDate) -> String {
    format!("{} 00:00:00+00", day.format("%Y-%m-%d"))
}

impl Partitions {
    /// The partitions that exist now.
    pub fn load(client: &mut Client, table: &TableName) -> Result<Partitions, postgres::Error> {
        let mut partitions = Partitions::default();
        for kind in [Kind::Results, Kind::Hourly] {
            let parent = kind.parent(table);
            let rows = client.query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = to_regclass($1)",
                &[&parent.to_string()],
            )?;
            for row in rows {
                match parse_name(parent.name(), row.get(0)) {
                    Some(Found::Day(day)) => {
                        partitions.days.insert((kind, day));
                    }
                    Some(Found::Before(day)) => partitions.before.push((kind, day)),
                    None => {}
                }
            }
        }
        Ok(partitions)
    }

    fn covered(&self, kind: Kind, day: NaiveDate) -> bool {
        self.days.contains(&(kind, day))
            || self
                .before
                .iter()
                .any(|&(k, before)| k == kind && day < before)
    }

    /// Makes the partitions of both tables for `days` that do not exist yet, in a
    /// transaction of their own (a batch's transaction then only inserts). Concurrent
    /// subs take turns under an advisory lock.
    pub fn ensure(
        &mut self,
        client: &mut Client,
        table: &TableName,
        days: &BTreeSet<NaiveDate>,
    ) -> Result<(), postgres::Error> {
        let missing: Vec<(Kind, NaiveDate)> = [Kind::Results, Kind::Hourly]
            .into_iter()
            .flat_map(|kind| days.iter().map(move |&day| (kind, day)))
            .filter(|&(kind, day)| !self.covered(kind, day))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut tx = client.transaction()?;
        tx.batch_execute("SET LOCAL client_min_messages = warning")?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('metrics-flow partitions ' || $1))",
            &[&table.plain()],
        )?;
        for &(kind, day) in &missing {
            let parent = kind.parent(table);
            let partition = day_name(&parent, day);
            let next = day.succ_opt().expect("a day after any day we meet");
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {partition} PARTITION OF {parent}
                 FOR VALUES FROM ('{}') TO ('{}')",
                midnight(day),
                midnight(next)
            ))?;
        }
        tx.commit()?;
        for (kind, day) in missing {
            if kind == Kind::Results {
                log::info!("created the partitions for {day}");
            }
            self.days.insert((kind, day));
        }
        Ok(())
    }

    /// Drops the partitions whose every row is older than `days` days (results) or
    /// `rollup_days` (hourly); 0 keeps them forever. Returns the partitions dropped.
    pub fn drop_expired(
        &mut self,
        client: &mut Client,
        table: &TableName,
        now: DateTime<Utc>,
        days: u32,
        rollup_days: u32,
    ) -> Result<Vec<String>, postgres::Error> {
        let mut dropped = Vec::new();
        for (kind, keep) in [(Kind::Results, days), (Kind::Hourly, rollup_days)] {
            if keep == 0 {
                continue;
            }
            // A partition goes when its last instant is before the oldest one kept.
            let cutoff = (now - Duration::days(i64::from(keep))).date_naive();
            let parent = kind.parent(table);
            let expired_days: Vec<NaiveDate> = self
                .days
                .iter()
                .filter(|&&(k, day)| k == kind && day < cutoff)
                .map(|&(_, day)| day)
                .collect();
            for day in expired_days {
                let partition = day_name(&parent, day);
                client.batch_execute(&format!("DROP TABLE IF EXISTS {partition}"))?;
                self.days.remove(&(kind, day));
                dropped.push(format!("{partition} ({day})"));
            }
            let expired_before: Vec<NaiveDate> = self
                .before
                .iter()
                .filter(|&&(k, before)| k == kind && before <= cutoff)
                .map(|&(_, before)| before)
                .collect();
            for before in expired_before {
                let partition = before_name(&parent, before);
                client.batch_execute(&format!("DROP TABLE IF EXISTS {partition}"))?;
                self.before.retain(|&(k, b)| !(k == kind && b == before));
                dropped.push(format!("{partition} (before {before})"));
            }
        }
        Ok(dropped)
    }
}

/// The UTC day of an instant.
pub fn day_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn names_are_read_back_as_made() {
        let table = TableName::parse("checks").unwrap();
        let hourly = table.with_suffix("_hourly");
        assert_eq!(
            day_name(&table, day("2026-12-02")).to_string(),
            "\"checks_d20261202\""
        );
        assert_eq!(
            parse_name("checks", "checks_d20261202"),
            Some(Found::Day(day("2026-12-02")))
        );
        assert_eq!(
            parse_name("checks", "checks_before20261204"),
            Some(Found::Before(day("2026-12-04")))
        );
        assert_eq!(
            parse_name("checks_hourly", "checks_hourly_d20261202"),
            Some(Found::Day(day("2026-12-02")))
        );
        assert_eq!(
            day_name(&hourly, day("2026-01-09")).to_string(),
            "\"checks_hourly_d20260109\""
        );
        for other in [
            "checks_rejected",
            "checks_d2026",
            "other_d20261202",
            "checks_dxyz",
        ] {
            assert_eq!(parse_name("checks", other), None, "{other}");
        }
    }

    #[test]
    fn a_day_is_covered_by_its_partition_or_the_old_rows_partition() {
        let mut partitions = Partitions::default();
        partitions.days.insert((Kind::Results, day("2026-12-05")));
        partitions.before.push((Kind::Results, day("2026-12-03")));
        assert!(partitions.covered(Kind::Results, day("2026-12-05")));
        assert!(partitions.covered(Kind::Results, day("2026-01-01")));
        assert!(!partitions.covered(Kind::Results, day("2026-12-03")));
        assert!(!partitions.covered(Kind::Hourly, day("2026-12-05")));
    }
}
