//! The fence of sub's commits against the real database: a consumer whose picture of a
//! partition's stored offset is stale writes nothing.

mod common;

use std::collections::BTreeMap;

use common::*;
use metrics_flow::pubsub::message::CheckResult;
use metrics_flow::pubsub::subscribe::derived::Thresholds;
use metrics_flow::pubsub::subscribe::migrations::migrate;
use metrics_flow::pubsub::subscribe::partitions::Partitions;
use metrics_flow::pubsub::subscribe::store::{
    commit_batch, stored_offsets, AcceptedRow, Advance, Batch, CommitError, Destination, Origin,
};
use metrics_flow::pubsub::table::TableName;

fn batch(partition: i32, offsets: std::ops::Range<i64>) -> Batch {
    let accepted = offsets
        .map(|offset| AcceptedRow {
            check: CheckResult::example(offset as usize),
            origin: Origin {
                partition,
                offset,
                key: None,
                payload: None,
            },
        })
        .collect();
    Batch {
        accepted,
        rejected: Vec::new(),
    }
}

#[test]
fn a_consumer_that_lost_its_partition_is_fenced_off() {
    let stack = Stack::shared();
    let mut client = stack.pg();
    let table = TableName::parse(&unique("fence")).unwrap();
    let thresholds = Thresholds {
        down_after: 3,
        up_after: 2,
    };
    migrate(&mut client, &table, thresholds).unwrap();
    let today = chrono::Utc::now().date_naive();
    Partitions::load(&mut client, &table)
        .unwrap()
        .ensure(
            &mut client,
            &table,
            &[today, today.succ_opt().unwrap()].into(),
        )
        .unwrap();
    let to = Destination {
        table: &table,
        topic: "t",
        thresholds,
    };
    let count = |client: &mut postgres::Client| -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        client.query_one(&sql, &[]).unwrap().get(0)
    };
    let commit = |client: &mut postgres::Client, range: std::ops::Range<i64>, from: Option<i64>| {
        let expected = BTreeMap::from([(0, from)]);
        let next = BTreeMap::from([(0, range.end)]);
        let advance = Advance {
            expected: &expected,
            next: &next,
        };
        commit_batch(client, &to, &batch(0, range), &advance)
    };

    // The first owner stores offsets 0..10; the partition's stored offset is now 10.
    commit(&mut client, 0..10, None).unwrap();
    // A second consumer that also started from "nothing stored" is refused.
    let stale = commit(&mut client, 0..5, None);
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
    // So is one that believes the offset is still 4.
    let stale = commit(&mut client, 4..12, Some(4));
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
    assert_eq!(count(&mut client), 10, "fenced batches wrote nothing");
    // The rightful owner carries on from 10.
    commit(&mut client, 10..15, Some(10)).unwrap();
    assert_eq!(count(&mut client), 15);
    assert_eq!(
        stored_offsets(&mut client, &table, "t", &[0, 1]).unwrap(),
        BTreeMap::from([(0, 15)])
    );
}
