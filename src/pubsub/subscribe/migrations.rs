//! The schema sub keeps: ordered migrations, each applied once per table under an
//! advisory lock and recorded in `<table>_migrations`.

use chrono::{Duration, Utc};
use postgres::{Client, Transaction};

use super::backfill;
use super::derived::Thresholds;
use super::partitions::{before_name, midnight};
use super::store::DUPLICATE;
use crate::error::UsageError;
use crate::pubsub::table::TableName;

/// One migration: its version, what it does, its SQL, and whether the derived tables
/// are to be backfilled from the rows after it.
struct Migration {
    version: i32,
    description: &'static str,
    sql: String,
    backfill: bool,
}

/// Ordered schema changes; each runs once per table, recorded in `<table>_migrations`.
fn migrations(table: &TableName) -> Vec<Migration> {
    let steps: Vec<(i32, &'static str, String)> = sql_steps(table);
    steps
        .into_iter()
        .map(|(version, description, sql)| Migration {
            version,
            description,
            sql,
            backfill: version == 4,
        })
        .collect()
}

fn sql_steps(table: &TableName) -> Vec<(i32, &'static str, String)> {
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
                 DROP INDEX IF EXISTS {qualified_time};",
                // checked_at first: results arrive in about that order, so the index
                // grows at its end. On a random uuid first, bench-sub.sh's COPY
                // baseline took 4.0-4.5 s for 200,000 rows instead of 2.7. It serves
                // every query the index on checked_at alone did.
                time_id = table.index_name("time_id"),
                qualified_time = table.qualified_index_name("time"),
            ),
        ),
        (
            4,
            "results partitioned by day, location and probe, hourly and daily rollups, status, incidents and views",
            partitioned(table),
        ),
    ]
}

/// Migration 4. The unpartitioned table's rows stay where they are: the table becomes
/// one partition of the new one, holding everything before the day after tomorrow
/// (so results up to a day ahead still fit), and the day partitions start there.
/// Attaching it reads it once to check its rows; nothing is copied. Rows dated later
/// are moved to the rejected table first. An empty old table is simply dropped.
fn partitioned(table: &TableName) -> String {
    let rejected = table.with_suffix("_rejected");
    let hourly = table.with_suffix("_hourly");
    let daily = table.with_suffix("_daily");
    let status = table.with_suffix("_status");
    let incidents = table.with_suffix("_incidents");
    let old = table.with_suffix("_unpartitioned");
    let bound = (Utc::now() + Duration::days(2)).date_naive();
    let before = before_name(table, bound);
    let hourly_before = before_name(&hourly, bound);
    let bound = midnight(bound);
    let target_time = table.index_name("target_time");
    let time_id = table.index_name("time_id");
    format!(
        "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS location text,
                             ADD COLUMN IF NOT EXISTS probe text;
         WITH ahead AS (DELETE FROM {table} WHERE checked_at >= '{bound}' RETURNING *)
         INSERT INTO {rejected} (payload, reason, kafka_partition, kafka_offset)
         SELECT convert_to(row_to_json(r)::text, 'UTF8'),
                'checked_at more than a day ahead of the upgrade to schema version 4 (moved here by it)',
                kafka_partition, kafka_offset
         FROM ahead r;
         ALTER TABLE {table} RENAME TO {old_name};
         ALTER INDEX {qualified_target_time} RENAME TO {old_target_time};
         ALTER INDEX {qualified_time_id} RENAME TO {old_time_id};
         CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
             PARTITION BY RANGE (checked_at);
         CREATE INDEX {target_time} ON {table} (target, checked_at DESC);
         CREATE UNIQUE INDEX {time_id} ON {table} (checked_at, id);
         CREATE TABLE {hourly} (
             target text NOT NULL,
             location text NOT NULL DEFAULT '',
             hour timestamptz NOT NULL,
             checks bigint NOT NULL,
             ok_checks bigint NOT NULL,
             latency_ms_sum double precision NOT NULL DEFAULT 0,
             latency_ms_min double precision,
             latency_ms_max double precision,
             latency_buckets integer[] NOT NULL,
             PRIMARY KEY (target, location, hour)) PARTITION BY RANGE (hour);
         CREATE TABLE {daily} (
             target text NOT NULL,
             location text NOT NULL DEFAULT '',
             day timestamptz NOT NULL,
             checks bigint NOT NULL,
             ok_checks bigint NOT NULL,
             latency_ms_sum double precision NOT NULL DEFAULT 0,
             latency_ms_min double precision,
             latency_ms_max double precision,
             latency_buckets integer[] NOT NULL,
             PRIMARY KEY (target, location, day));
         CREATE TABLE {status} (
             target text NOT NULL,
             location text NOT NULL DEFAULT '',
             state text NOT NULL CHECK (state IN ('up', 'down')),
             since timestamptz NOT NULL,
             last_checked_at timestamptz NOT NULL,
             consecutive_failures integer NOT NULL,
             consecutive_successes integer NOT NULL,
             last_error_kind text,
             last_error_text text,
             run_started_at timestamptz NOT NULL,
             run_error_kind text,
             tls_expires_at timestamptz,
             tls_days_left integer,
             PRIMARY KEY (target, location));
         CREATE TABLE {incidents} (
             id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             target text NOT NULL,
             location text NOT NULL DEFAULT '',
             started_at timestamptz NOT NULL,
             ended_at timestamptz,
             error_kind text,
             failed_checks integer NOT NULL,
             last_error_text text);
         CREATE INDEX {incidents_open} ON {incidents} (target, location) WHERE ended_at IS NULL;
         CREATE INDEX {incidents_started} ON {incidents} (started_at);
         DO $$ BEGIN
             IF EXISTS (SELECT 1 FROM {old}) THEN
                 ALTER TABLE {old} RENAME TO {before_name};
                 ALTER TABLE {table} ATTACH PARTITION {before}
                     FOR VALUES FROM (MINVALUE) TO ('{bound}');
                 CREATE TABLE {hourly_before} PARTITION OF {hourly}
                     FOR VALUES FROM (MINVALUE) TO ('{bound}');
             ELSE
                 DROP TABLE {old};
             END IF;
         END $$;
         CREATE VIEW {latest} AS
             SELECT r.* FROM {status} s CROSS JOIN LATERAL (
                 SELECT * FROM {table} t
                 WHERE t.target = s.target AND coalesce(t.location, '') = s.location
                 ORDER BY t.checked_at DESC LIMIT 1) r;
         CREATE VIEW {daily_uptime} AS
             SELECT target, nullif(location, '') AS location,
                    (day AT TIME ZONE 'UTC')::date AS day, checks, ok_checks,
                    round(100.0 * ok_checks / checks, 3) AS uptime_percent
             FROM {daily};
         CREATE VIEW {open_incidents} AS
             SELECT * FROM {incidents} WHERE ended_at IS NULL;",
        old_name = old.quoted_name(),
        before_name = before.quoted_name(),
        qualified_target_time = table.qualified_index_name("target_time"),
        qualified_time_id = table.qualified_index_name("time_id"),
        old_target_time = old.index_name("target_time"),
        old_time_id = old.index_name("time_id"),
        incidents_open = incidents.index_name("open"),
        incidents_started = incidents.index_name("started"),
        latest = table.with_suffix("_latest"),
        daily_uptime = table.with_suffix("_daily_uptime"),
        open_incidents = table.with_suffix("_open_incidents"),
    )
}

/// Brings the schema up to date. The advisory lock makes concurrent starts safe: the
/// second process waits, then finds nothing left to do. A schema already current
/// needs no DDL, so sub can then run with row privileges only. A table that exists
/// without a ledger is someone else's and is left alone (a usage error).
pub fn migrate(
    client: &mut Client,
    table: &TableName,
    thresholds: Thresholds,
) -> anyhow::Result<()> {
    let ledger = table.with_suffix("_migrations");
    let steps = migrations(table);
    let latest = steps.last().map_or(0, |step| step.version);
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
    for step in steps.into_iter().filter(|step| step.version > applied) {
        apply(&mut tx, table, &ledger, &step, thresholds)?;
    }
    tx.commit()?;
    Ok(())
}

fn apply(
    tx: &mut Transaction<'_>,
    table: &TableName,
    ledger: &TableName,
    step: &Migration,
    thresholds: Thresholds,
) -> anyhow::Result<()> {
    log::info!(
        "migrating {table} to version {}: {}",
        step.version,
        step.description
    );
    tx.batch_execute(&step.sql)?;
    if step.backfill {
        backfill::derived_tables(tx, table, thresholds)?;
    }
    tx.execute(
        &format!("INSERT INTO {ledger} (version, description) VALUES ($1, $2)"),
        &[&step.version, &step.description],
    )?;
    Ok(())
}
