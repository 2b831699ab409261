//! The fence of sub's commits against the real database: a consumer whose picture of a
//! partition's stored offset is stale writes nothing.

mod common;

use std::collections::BTreeMap;

use common::*;
use metrics_flow::pubsub::message::CheckResult;
use metrics_flow::pubsub::subscribe::derived::Thresholds;
use metrics_flow::pubsub::subscribe::migrations::migrate;
use metrics_flow::pubsub::subscribe::partitions::Partitions;
use metrics_flow::pubsub::subscribe::prepared::Prepared;
use metrics_flow::pubsub::subscribe::store::{
    commit_batch, stored_offsets, AcceptedRow, Advance, Batch, CommitError, Destination, Origin,
};
use metrics_flow::pubsub::table::TableName;

/// Results of each partition at the offsets given; a result's id follows its offset,
/// and the first partition's, so that partitions' results are distinct.
fn batch(ranges: &[(i32, std::ops::Range<i64>)]) -> Batch {
    let accepted = ranges
        .iter()
        .flat_map(|(partition, offsets)| offsets.clone().map(move |offset| (*partition, offset)))
        .map(|(partition, offset)| AcceptedRow {
            check: CheckResult::example((partition * 1000) as usize + offset as usize),
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
    // One set of prepared statements for every commit, as sub has: those prepared in
    // a fenced (rolled back) transaction must serve the next one.
    let mut prepared = Prepared::default();
    // Each partition's offsets, and what the committer believes is stored for it.
    let mut commit = |client: &mut postgres::Client,
                      moves: &[(i32, std::ops::Range<i64>, Option<i64>)]| {
        let expected = moves.iter().map(|(p, _, from)| (*p, *from)).collect();
        let next = moves.iter().map(|(p, range, _)| (*p, range.end)).collect();
        let advance = Advance {
            expected: &expected,
            next: &next,
        };
        let ranges: Vec<_> = moves.iter().map(|(p, r, _)| (*p, r.clone())).collect();
        let batch = batch(&ranges);
        commit_batch(
            (client, &mut prepared),
            &to,
            &batch,
            &batch.grouping(),
            &advance,
        )
    };

    // The first owner stores offsets 0..10; the partition's stored offset is now 10.
    commit(&mut client, &[(0, 0..10, None)]).unwrap();
    // A second consumer that also started from "nothing stored" is refused.
    let stale = commit(&mut client, &[(0, 0..5, None)]);
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
    // So is one that believes the offset is still 4.
    let stale = commit(&mut client, &[(0, 4..12, Some(4))]);
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
    assert_eq!(count(&mut client), 10, "fenced batches wrote nothing");
    // The rightful owner carries on from 10, and takes a new partition in the same
    // batch.
    commit(&mut client, &[(0, 10..15, Some(10)), (1, 0..3, None)]).unwrap();
    assert_eq!(count(&mut client), 18);
    // A batch that is right about one partition and stale about the other writes
    // nothing for either.
    let stale = commit(&mut client, &[(0, 15..20, Some(15)), (1, 0..4, Some(0))]);
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 1 })));
    let stale = commit(&mut client, &[(0, 15..20, Some(15)), (1, 0..4, None)]);
    assert!(matches!(stale, Err(CommitError::Fenced { partition: 1 })));
    assert_eq!(count(&mut client), 18, "half-stale batches wrote nothing");
    assert_eq!(
        stored_offsets(&mut client, &table, "t", &[0, 1, 2]).unwrap(),
        BTreeMap::from([(0, 15), (1, 3)])
    );
}
