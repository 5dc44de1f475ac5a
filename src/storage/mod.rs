//! The node's one SQLite file: a single writer connection plus a small pool of readers,
//! all used from blocking threads so the async runtime never waits on disk.
//!
//! A write closure runs inside one `BEGIN IMMEDIATE` transaction; `Db::write` returns only
//! after `COMMIT`, so a client that hears success can rely on the write surviving kill -9.
//! Stream positions (the global order /sync follows) are allocated inside that same
//! transaction and published to the [`Notifier`] only after it commits.

pub mod accounts;
pub mod anti_entropy;
pub mod e2ee;
pub mod events;
pub mod media;
mod migrations;
pub mod outbox;
pub mod peers;
pub mod remote_e2ee;
pub mod replication;
pub mod rooms;
pub mod state;
pub mod sync;
pub mod user_data;

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, Transaction};

use crate::notifier::Notifier;
use crate::{Error, Result};

const READERS: usize = 4;

#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    notifier: Notifier,
    /// Signalled after each commit, so the checkpoint task runs only after writes.
    written: tokio::sync::Notify,
}

/// The write transaction handed to `Db::write` closures.
pub struct WriteTx<'c> {
    tx: Transaction<'c>,
    last_stream_id: Option<i64>,
}

impl<'c> Deref for WriteTx<'c> {
    type Target = Transaction<'c>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl WriteTx<'_> {
    /// Allocates the next global stream position; durable with the transaction.
    pub fn next_stream_id(&mut self) -> Result<i64> {
        let id: i64 = self
            .tx
            .prepare_cached("UPDATE meta SET value = value + 1 WHERE key = 'stream_pos' RETURNING value")?
            .query_row([], |r| r.get(0))?;
        self.last_stream_id = Some(id);
        Ok(id)
    }
}

impl Db {
    /// Opens (creating if needed) `meshserver.db` in `data_dir` and migrates it.
    pub fn open(data_dir: &Path, full_sync: bool, notifier: Notifier) -> anyhow::Result<Db> {
        let path = data_dir.join("meshserver.db");
        let mut writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        writer.pragma_update(None, "synchronous", if full_sync { "FULL" } else { "NORMAL" })?;
        // Checkpoints run off the write path (`run_checkpoints`); this is only a backstop
        // should that task fall behind, so a commit never pays for a checkpoint's fsyncs.
        writer.pragma_update(None, "wal_autocheckpoint", 10_000)?;
        migrations::migrate(&mut writer)?;
        let pos: i64 = writer.query_row("SELECT value FROM meta WHERE key = 'stream_pos'", [], |r| {
            r.get(0)
        })?;
        notifier.advance_stream(pos);
        Ok(Db {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
                path,
                notifier,
                written: tokio::sync::Notify::new(),
            }),
        })
    }

    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// Runs `f` in one write transaction on a blocking thread and commits before returning.
    pub async fn write<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut WriteTx<'_>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let mut conn = inner
                .writer
                .lock()
                .map_err(|_| Error::internal("writer poisoned"))?;
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut wtx = WriteTx {
                tx,
                last_stream_id: None,
            };
            let out = f(&mut wtx)?;
            let last = wtx.last_stream_id;
            wtx.tx.commit()?;
            inner.written.notify_one();
            if let Some(pos) = last {
                inner.notifier.advance_stream(pos);
            }
            Ok(out)
        })
        .await
    }

    /// Runs `f` on a reader connection on a blocking thread.
    pub async fn read<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            let conn = inner.take_reader()?;
            // Reads see one consistent snapshot of committed data.
            let out = (|| {
                conn.execute_batch("BEGIN")?;
                let out = f(&conn);
                conn.execute_batch("COMMIT")?;
                out
            })();
            inner.return_reader(conn);
            out
        })
        .await
    }

    /// Moves committed WAL pages into the database file in the background, at most once a
    /// second and only after writes, so commits stay cheap and an idle node stays asleep.
    pub async fn run_checkpoints(self) {
        let conn = match Connection::open(&self.inner.path).and_then(|c| configure(&c).map(|()| c)) {
            Ok(c) => std::sync::Arc::new(Mutex::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open checkpoint connection; relying on autocheckpoint");
                return;
            }
        };
        loop {
            self.inner.written.notified().await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let conn = conn.clone();
            let done = tokio::task::spawn_blocking(move || {
                let conn = conn
                    .lock()
                    .map_err(|_| "checkpoint connection poisoned".to_owned())?;
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .map_err(|e| e.to_string())
            })
            .await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection> {
        if let Some(c) = self
            .readers
            .lock()
            .map_err(|_| Error::internal("pool poisoned"))?
            .pop()
        {
            return Ok(c);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn)?;
        Ok(conn)
    }

    fn return_reader(&self, conn: Connection) {
        if conn.is_autocommit()
            && let Ok(mut pool) = self.readers.lock()
            && pool.len() < READERS
        {
            pool.push(conn);
        }
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "busy_timeout", 5000)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

async fn run_blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}
