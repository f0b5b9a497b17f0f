//! The PostgreSQL backend, shared by several KMS replicas (`--store postgres://…`).
//!
//! Schema (created idempotently by [`PgStore::connect`], under a transaction-scoped advisory
//! lock so that replicas starting together do not race on `CREATE`):
//!
//! ```text
//! mediasec_kms_kv    (tbl text, key text COLLATE "C", value bytea, PRIMARY KEY (tbl, key))
//! mediasec_kms_audit (seq bigint PRIMARY KEY, at_unix_ms bigint, actor text, action text, detail text)
//! mediasec_kms_append_audit(at, actor, action, detail) -> seq
//! ```
//!
//! - Every call is one statement in autocommit mode; the session forces
//!   `synchronous_commit = on`, so a call returns after the commit record is flushed.
//! - `put` is an upsert (`INSERT … ON CONFLICT DO UPDATE`), safe under concurrent writers.
//! - `put_if_absent` is `INSERT … ON CONFLICT DO NOTHING` then a read of the row: under
//!   concurrent writers exactly one insert wins (the primary key arbitrates) and every caller
//!   reads the winner's value.
//! - `compare_and_swap` is one statement: `INSERT … ON CONFLICT DO NOTHING` (expected absent),
//!   `UPDATE … SET value = new WHERE … AND value = expected` or `DELETE … WHERE … AND value =
//!   expected`, reporting whether a row changed. Under READ COMMITTED a concurrent `UPDATE`
//!   or `DELETE` waits for the row lock of a writer in flight and then re-evaluates its `WHERE`
//!   on the row that writer committed, so of two swaps from the same expected value exactly
//!   one succeeds, across connections and replicas.
//! - `range` is an index range scan on the primary key (`key >= from AND key < to`, collated
//!   "C" like the column).
//! - `range_from` is the same scan without the upper bound (`key >= from`).
//! - `list` orders by `key` collated "C", i.e. by UTF-8 bytes, the order of Rust's `str` (and
//!   of the embedded backend).
//! - Audit sequence numbers are assigned by `mediasec_kms_append_audit` under an advisory
//!   lock held to commit: numbers are strictly increasing *in commit order* and gap-free, so
//!   a reader paging with `after` never skips an entry committed later with a lower number.
//! - `at_unix_ms` is stored as the bigint with the same 64 bits (lossless both ways).
//!
//! One connection per store (tokio-postgres pipelines concurrent queries on it); a broken
//! connection is replaced on the next call, and the call that saw it break fails with
//! [`StoreError::Unavailable`] (it may or may not have committed).
//!
//! TLS: libpq's `sslmode` (default `prefer`), `sslrootcert` and `sslsni` in the connection
//! string, over rustls ([`crate::pg_tls`]).

use std::sync::Arc;

use tokio_postgres::{Client, Row, Statement};
use tracing::{info, warn};

use crate::pg_tls::{Target, error_chain};
use crate::{AuditEntry, Store, StoreError, StoreFuture, Table, check_audit, check_text};

/// Idempotent schema creation, serialised across replicas.
const SCHEMA: &str = r#"
SET synchronous_commit TO on;
BEGIN;
SELECT pg_advisory_xact_lock(7213654001);
CREATE TABLE IF NOT EXISTS mediasec_kms_kv (
    tbl   text NOT NULL,
    key   text COLLATE "C" NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (tbl, key)
);
CREATE TABLE IF NOT EXISTS mediasec_kms_audit (
    seq        bigint PRIMARY KEY,
    at_unix_ms bigint NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    detail     text NOT NULL
);
CREATE OR REPLACE FUNCTION mediasec_kms_append_audit(p_at bigint, p_actor text, p_action text, p_detail text)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE s bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7213654002);
    SELECT coalesce(max(seq), 0) + 1 INTO s FROM mediasec_kms_audit;
    INSERT INTO mediasec_kms_audit (seq, at_unix_ms, actor, action, detail) VALUES (s, p_at, p_actor, p_action, p_detail);
    RETURN s;
END $$;
COMMIT;
"#;

fn pg_err(e: &tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(format!("PostgreSQL connection closed: {}", error_chain(e)));
    }
    match e.as_db_error() {
        // Class 08 (connection exception) and 57 (operator intervention: shutdown,
        // terminated session): the server went away, not the operation.
        Some(db) if db.code().code().starts_with("08") || db.code().code().starts_with("57") => {
            StoreError::Unavailable(format!("PostgreSQL {}: {}", db.code().code(), db.message()))
        }
        Some(db) => StoreError::Backend(format!("PostgreSQL {}: {}", db.code().code(), db.message())),
        None => StoreError::Backend(format!("PostgreSQL: {}", error_chain(e))),
    }
}

fn column<'r, T: tokio_postgres::types::FromSql<'r>>(row: &'r Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    put: Statement,
    put_if_absent: Statement,
    delete: Statement,
    cas_update: Statement,
    cas_delete: Statement,
    range: Statement,
    range_from: Statement,
    list: Statement,
    append: Statement,
    audit: Statement,
}

impl Conn {
    async fn open(target: &Target) -> Result<Self, StoreError> {
        let (client, connection) = target.connect().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %error_chain(&e), "PostgreSQL connection ended");
            }
        });
        let tls = session_tls(&client).await?;
        info!(sslmode = %target.mode(), tls, "connected to PostgreSQL");
        client.batch_execute(SCHEMA).await.map_err(|e| pg_err(&e))?;
        let prep = |sql: &'static str| {
            let client = &client;
            async move { client.prepare(sql).await.map_err(|e| pg_err(&e)) }
        };
        Ok(Self {
            get: prep("SELECT value FROM mediasec_kms_kv WHERE tbl = $1 AND key = $2").await?,
            put: prep(
                "INSERT INTO mediasec_kms_kv (tbl, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tbl, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?,
            put_if_absent: prep("INSERT INTO mediasec_kms_kv (tbl, key, value) VALUES ($1, $2, $3) ON CONFLICT (tbl, key) DO NOTHING").await?,
            delete: prep("DELETE FROM mediasec_kms_kv WHERE tbl = $1 AND key = $2").await?,
            cas_update: prep("UPDATE mediasec_kms_kv SET value = $4 WHERE tbl = $1 AND key = $2 AND value = $3").await?,
            cas_delete: prep("DELETE FROM mediasec_kms_kv WHERE tbl = $1 AND key = $2 AND value = $3").await?,
            range: prep(
                "SELECT key, value FROM mediasec_kms_kv WHERE tbl = $1 AND key >= $2 AND key < $3 ORDER BY key LIMIT $4",
            )
            .await?,
            range_from: prep("SELECT key, value FROM mediasec_kms_kv WHERE tbl = $1 AND key >= $2 ORDER BY key LIMIT $3").await?,
            list: prep("SELECT key, value FROM mediasec_kms_kv WHERE tbl = $1 ORDER BY key").await?,
            append: prep("SELECT mediasec_kms_append_audit($1, $2, $3, $4)").await?,
            audit: prep(
                "SELECT seq, at_unix_ms, actor, action, detail FROM mediasec_kms_audit \
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .await?,
            client,
        })
    }
}

/// Whether the server sees this session as TLS (`pg_stat_ssl`).
async fn session_tls(client: &Client) -> Result<bool, StoreError> {
    let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.map_err(|e| pg_err(&e))?;
    column(&row, 0)
}

/// The PostgreSQL store. Several instances (KMS replicas) may share one database.
pub struct PgStore {
    /// Where and how to (re)connect; its `Debug` shows no password.
    target: Target,
    conn: tokio::sync::Mutex<Arc<Conn>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("target", &self.target).finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects and creates the schema if missing. `conn` is a libpq connection URL or
    /// key=value string, e.g. `postgres://kms@db.example/kms?sslmode=verify-full&sslrootcert=/etc/mediasec/pg-ca.pem`
    /// or `host=db.example dbname=kms user=kms sslmode=verify-full sslrootcert=/etc/mediasec/pg-ca.pem`;
    /// `sslmode` means what it means to libpq ([`crate::pg_tls`]), default `prefer`. Errors
    /// say which mode and which check failed; neither they nor the logs contain the string.
    pub async fn connect(conn: &str) -> Result<Self, StoreError> {
        let target = Target::parse(conn)?;
        let conn = Conn::open(&target).await?;
        Ok(Self { target, conn: tokio::sync::Mutex::new(Arc::new(conn)) })
    }

    /// The live connection, reconnecting if the previous one broke.
    async fn conn(&self) -> Result<Arc<Conn>, StoreError> {
        let mut c = self.conn.lock().await;
        if c.client.is_closed() {
            *c = Arc::new(Conn::open(&self.target).await?);
        }
        Ok(Arc::clone(&c))
    }

    /// Whether the server sees the store's session as encrypted (`pg_stat_ssl.ssl` of its
    /// backend): what an operator or a test asks to know that TLS is really in use.
    pub async fn session_tls(&self) -> Result<bool, StoreError> {
        session_tls(&self.conn().await?.client).await
    }

    /// The other client sessions connected to this database (`pg_stat_activity`, every
    /// backend but this store's), each as `pid <pid> <application_name> from <client_addr>`:
    /// what an offline operation ([`crate::rekey`]) checks so that it does not run under live
    /// replicas. A role without `pg_read_all_stats` still sees the pid of other roles'
    /// sessions, so the count is right even where the details are hidden.
    pub async fn other_sessions(&self) -> Result<Vec<String>, StoreError> {
        let c = self.conn().await?;
        let rows = c
            .client
            .query(
                "SELECT pid, coalesce(application_name, ''), coalesce(host(client_addr), 'local') FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY pid",
                &[],
            )
            .await
            .map_err(|e| pg_err(&e))?;
        rows.iter()
            .map(|r| {
                let (pid, app, from): (i32, String, String) = (column(r, 0)?, column(r, 1)?, column(r, 2)?);
                Ok(format!("pid {pid} {app:?} from {from}"))
            })
            .collect()
    }
}

impl Store for PgStore {
    fn get<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move {
            check_text("key", key)?;
            let c = self.conn().await?;
            let row = c.client.query_opt(&c.get, &[&table.name(), &key]).await.map_err(|e| pg_err(&e))?;
            row.map(|r| column::<Vec<u8>>(&r, 0)).transpose()
        })
    }

    fn put<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            check_text("key", key)?;
            let c = self.conn().await?;
            c.client.execute(&c.put, &[&table.name(), &key, &value]).await.map_err(|e| pg_err(&e))?;
            Ok(())
        })
    }

    fn put_if_absent<'a>(&'a self, table: Table, key: &'a str, value: &'a [u8]) -> StoreFuture<'a, Vec<u8>> {
        Box::pin(async move {
            check_text("key", key)?;
            let c = self.conn().await?;
            c.client.execute(&c.put_if_absent, &[&table.name(), &key, &value]).await.map_err(|e| pg_err(&e))?;
            let row = c.client.query_opt(&c.get, &[&table.name(), &key]).await.map_err(|e| pg_err(&e))?;
            row.map(|r| column::<Vec<u8>>(&r, 0))
                .transpose()?
                .ok_or_else(|| StoreError::Invalid(format!("{}/{key}: deleted right after put_if_absent", table.name())))
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        table: Table,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_text("key", key)?;
            let c = self.conn().await?;
            let name = table.name();
            let changed = match (expected, new) {
                (None, Some(new)) => c.client.execute(&c.put_if_absent, &[&name, &key, &new]).await,
                (Some(old), Some(new)) => c.client.execute(&c.cas_update, &[&name, &key, &old, &new]).await,
                (Some(old), None) => c.client.execute(&c.cas_delete, &[&name, &key, &old]).await,
                (None, None) => {
                    let row = c.client.query_opt(&c.get, &[&name, &key]).await.map_err(|e| pg_err(&e))?;
                    return Ok(row.is_none());
                }
            }
            .map_err(|e| pg_err(&e))?;
            Ok(changed == 1)
        })
    }

    fn range<'a>(&'a self, table: Table, from: &'a str, to: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(async move {
            check_text("range start", from)?;
            check_text("range end", to)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let c = self.conn().await?;
            let rows = c.client.query(&c.range, &[&table.name(), &from, &to, &limit]).await.map_err(|e| pg_err(&e))?;
            rows.iter().map(|r| Ok((column(r, 0)?, column(r, 1)?))).collect()
        })
    }

    fn range_from<'a>(&'a self, table: Table, from: &'a str, limit: usize) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(async move {
            check_text("range start", from)?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let c = self.conn().await?;
            let rows = c.client.query(&c.range_from, &[&table.name(), &from, &limit]).await.map_err(|e| pg_err(&e))?;
            rows.iter().map(|r| Ok((column(r, 0)?, column(r, 1)?))).collect()
        })
    }

    fn delete<'a>(&'a self, table: Table, key: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            check_text("key", key)?;
            let c = self.conn().await?;
            let n = c.client.execute(&c.delete, &[&table.name(), &key]).await.map_err(|e| pg_err(&e))?;
            Ok(n > 0)
        })
    }

    fn list<'a>(&'a self, table: Table) -> StoreFuture<'a, Vec<(String, Vec<u8>)>> {
        Box::pin(async move {
            let c = self.conn().await?;
            let rows = c.client.query(&c.list, &[&table.name()]).await.map_err(|e| pg_err(&e))?;
            rows.iter().map(|r| Ok((column::<String>(r, 0)?, column::<Vec<u8>>(r, 1)?))).collect()
        })
    }

    fn append_audit<'a>(&'a self, entry: &'a AuditEntry) -> StoreFuture<'a, u64> {
        Box::pin(async move {
            check_audit(entry)?;
            let c = self.conn().await?;
            // Same 64 bits: lossless, read back with the inverse cast.
            let at = entry.at_unix_ms as i64;
            let row = c
                .client
                .query_one(&c.append, &[&at, &entry.actor, &entry.action, &entry.detail])
                .await
                .map_err(|e| pg_err(&e))?;
            let seq: i64 = column(&row, 0)?;
            u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit sequence {seq}")))
        })
    }

    fn audit<'a>(&'a self, after: u64, limit: usize) -> StoreFuture<'a, Vec<(u64, AuditEntry)>> {
        Box::pin(async move {
            let Ok(after) = i64::try_from(after) else { return Ok(Vec::new()) };
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let c = self.conn().await?;
            let rows = c.client.query(&c.audit, &[&after, &limit]).await.map_err(|e| pg_err(&e))?;
            rows.iter()
                .map(|r| {
                    let seq: i64 = column(r, 0)?;
                    let seq = u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("audit sequence {seq}")))?;
                    let at: i64 = column(r, 1)?;
                    let entry = AuditEntry {
                        at_unix_ms: at as u64,
                        actor: column(r, 2)?,
                        action: column(r, 3)?,
                        detail: column(r, 4)?,
                    };
                    Ok((seq, entry))
                })
                .collect()
        })
    }
}
