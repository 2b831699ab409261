//! The schema sub keeps: ordered migrations, each applied once per table under an
//! advisory lock and recorded in `<table>_migrations`.

use postgres::Client;

use super::store::DUPLICATE;
use crate::error::UsageError;
use crate::pubsub::table::TableName;

/// Ordered schema changes; each runs once per table, recorded in `<table>_migrations`.
fn migrations(table: &TableName) -> Vec<(i32, &'static str, String)> {
    let rejected = table.with_suffix("_rejected");
    let offsets = table.with_suffix("_offsets");
    vec![
        (
            1,
            "results, rejected payloads and consumed offsets",
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                 id uuid NOT NULL,
                 checked_at timestamptz NOT NULL,
                 target text NOT NULL,
                 ok boolean NOT NULL,
                 http_status integer,
                 latency_ms double precision,
                 error_kind text,
                 error_text text,
                 pattern text,
                 pattern_found boolean,
                 kafka_partition integer NOT NULL,
                 kafka_offset bigint NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX IF NOT EXISTS {target_time} ON {table} (target, checked_at DESC);
             CREATE INDEX IF NOT EXISTS {time} ON {table} (checked_at);
             CREATE TABLE IF NOT EXISTS {rejected} (
                 payload bytea,
                 reason text NOT NULL,
                 kafka_partition integer NOT NULL,
                 kafka_offset bigint NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {offsets} (
                 topic text NOT NULL,
                 kafka_partition integer NOT NULL,
                 next_offset bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (topic, kafka_partition));",
                target_time = table.index_name("target_time"),
                time = table.index_name("time"),
            ),
        ),
        (
            2,
            "phase timings, TLS expiry and response details",
            format!(
                "ALTER TABLE {table}
                 ADD COLUMN IF NOT EXISTS dns_ms double precision,
                 ADD COLUMN IF NOT EXISTS connect_ms double precision,
                 ADD COLUMN IF NOT EXISTS tls_ms double precision,
                 ADD COLUMN IF NOT EXISTS ttfb_ms double precision,
                 ADD COLUMN IF NOT EXISTS tls_expires_at timestamptz,
                 ADD COLUMN IF NOT EXISTS tls_days_left integer,
                 ADD COLUMN IF NOT EXISTS http_version text,
                 ADD COLUMN IF NOT EXISTS final_url text,
                 ADD COLUMN IF NOT EXISTS redirects integer,
                 ADD COLUMN IF NOT EXISTS body_bytes bigint,
                 ADD COLUMN IF NOT EXISTS schedule_lag_ms double precision"
            ),
        ),
        (
            3,
            "one row per result id, and the Kafka key of rejected payloads",
            // Results stored twice before ids were unique move to the rejected table,
            // whole, so that the index can be built and no row is lost.
            format!(
                "ALTER TABLE {rejected} ADD COLUMN IF NOT EXISTS kafka_key bytea;
                 WITH repeated AS (
                     DELETE FROM {table} WHERE ctid IN (
                         SELECT ctid FROM (
                             SELECT ctid, row_number() OVER (
                                 PARTITION BY id, checked_at
                                 ORDER BY kafka_partition, kafka_offset) AS copy
                             FROM {table}) numbered
                         WHERE copy > 1)
                     RETURNING *)
                 INSERT INTO {rejected} (payload, reason, kafka_partition, kafka_offset)
                 SELECT convert_to(row_to_json(r)::text, 'UTF8'), '{DUPLICATE} (moved here by the upgrade to schema version 3)',
                        kafka_partition, kafka_offset
                 FROM repeated r;
                 CREATE UNIQUE INDEX IF NOT EXISTS {time_id} ON {table} (checked_at, id);
                 DROP INDEX IF EXISTS {time};",
                // checked_at first: results arrive in about that order, so the index
                // grows at its end. On a random uuid first, bench-sub.sh's COPY
                // baseline took 43 % longer (2.8 s to 4.0 s for 200,000 rows). It
                // serves every query the index on checked_at alone did.
                time_id = table.index_name("time_id"),
                time = table.index_name("time"),
            ),
        ),
    ]
}

/// Brings the schema up to date. The advisory lock makes concurrent starts safe: the
/// second process waits, then finds nothing left to do. A schema already current
/// needs no DDL, so sub can then run with row privileges only. A table that exists
/// without a ledger is someone else's and is left alone (a usage error).
pub fn migrate(client: &mut Client, table: &TableName) -> anyhow::Result<()> {
    let ledger = table.with_suffix("_migrations");
    let steps = migrations(table);
    let latest = steps.last().map_or(0, |(version, _, _)| *version);
    let mut tx = client.transaction()?;
    // "relation ... already exists, skipping" and the like tell a user nothing.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('metrics-flow migrate ' || $1))",
        &[&table.plain()],
    )?;
    let found = tx.query_one(
        "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
        &[&table.to_string(), &ledger.to_string()],
    )?;
    let (has_table, has_ledger): (bool, bool) = (found.get(0), found.get(1));
    if has_table && !has_ledger {
        return Err(UsageError::new(format!(
            "--table (POSTGRESQL_TABLE): {table} exists but has no {ledger}, so metrics-flow did not create it; sub leaves it alone: choose another --table"
        ))
        .into());
    }
    let applied: i32 = if has_ledger {
        let sql = format!("SELECT coalesce(max(version), 0) FROM {ledger}");
        tx.query_one(&sql, &[])?.get(0)
    } else {
        0
    };
    if applied > latest {
        anyhow::bail!(
            "{table} is at schema version {applied}, newer than this metrics-flow knows ({latest}): run a newer release"
        );
    }
    if applied == latest {
        return Ok(());
    }
    if let Some(schema) = &table.schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    for (version, description, sql) in steps {
        if version <= applied {
            continue;
        }
        log::info!("migrating {table} to version {version}: {description}");
        tx.batch_execute(&sql)?;
        tx.execute(
            &format!("INSERT INTO {ledger} (version, description) VALUES ($1, $2)"),
            &[&version, &description],
        )?;
    }
    tx.commit()?;
    Ok(())
}
