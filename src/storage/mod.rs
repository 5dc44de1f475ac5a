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
pub mod mailbox;
pub mod media;
mod migrations;
pub mod outbox;
pub mod pdu_cache;
pub mod peers;
pub mod remote_e2ee;
pub mod replication;
pub mod rooms;
pub mod state;
pub mod sync;
pub mod user_data;

use std::cell::{Cell, RefCell};
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags};

use crate::notifier::Notifier;
use crate::{Error, Result};
use pdu_cache::PduCache;

const READERS: usize = 4;

/// How often the background checkpoint runs while writes come in. A send writes some 16 WAL
/// pages; at 1,000 sends a second, a second's worth would pass the `wal_autocheckpoint`
/// backstop (10,000 pages) and the committing send would copy it, fsyncs included.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    notifier: Notifier,
    /// Signalled after each commit, so the checkpoint task runs only after writes.
    written: tokio::sync::Notify,
}

/// The writer connection and what lives only as long as it does.
struct Writer {
    conn: Connection,
    /// Only touched while the writer's lock is held.
    pdus: RefCell<PduCache>,
    /// `meta.stream_pos` as last committed; only [`WriteTx::next_stream_id`] moves it.
    stream_pos: Cell<i64>,
}

/// The write transaction handed to `Db::write` closures: the writer connection inside
/// `BEGIN IMMEDIATE`. Dropped without [`WriteTx::commit`] (the closure failed or
/// panicked), it rolls back.
pub struct WriteTx<'c> {
    writer: &'c Writer,
    last_stream_id: Option<i64>,
    committed: bool,
}

impl Deref for WriteTx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.writer.conn
    }
}

impl<'c> WriteTx<'c> {
    fn begin(writer: &'c Writer) -> Result<Self> {
        if !writer.conn.is_autocommit() {
            // An earlier rollback failed; without this, every later BEGIN would fail too.
            writer.conn.execute_batch("ROLLBACK")?;
        }
        // Cached statements: BEGIN and COMMIT run on every write, and `execute_batch` would
        // parse and finalise them each time.
        writer.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(WriteTx {
            writer,
            last_stream_id: None,
            committed: false,
        })
    }

    fn commit(mut self) -> Result<Option<i64>> {
        self.writer.conn.prepare_cached("COMMIT")?.execute([])?;
        self.committed = true;
        if let Some(pos) = self.last_stream_id {
            self.writer.stream_pos.set(pos);
        }
        Ok(self.last_stream_id)
    }

    /// Allocates the next global stream position; durable with the transaction.
    pub fn next_stream_id(&mut self) -> Result<i64> {
        let id = self.last_stream_id.unwrap_or(self.writer.stream_pos.get()) + 1;
        // The position is known here, so a plain UPDATE does (`RETURNING` would cost an
        // ephemeral table and a statement journal on every event). The guard makes a write
        // to `stream_pos` from anywhere else fail loudly rather than reuse a position.
        let moved = self
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'stream_pos' AND value = ?1 - 1")?
            .execute([id])?;
        if moved != 1 {
            return Err(Error::internal(
                "meta.stream_pos was moved outside next_stream_id",
            ));
        }
        self.last_stream_id = Some(id);
        Ok(id)
    }

    /// A stored event's PDU, parsed at most once while it stays unchanged in the store
    /// (see [`pdu_cache`]); `None` if the node does not hold it.
    pub fn pdu(&self, event_id: &str) -> Option<Arc<crate::pdu::Pdu>> {
        events::get_pdu_cached(&self.writer.conn, &self.writer.pdus, event_id)
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        // A failed COMMIT may already have ended the transaction.
        if !self.committed
            && !self.writer.conn.is_autocommit()
            && let Err(e) = self.writer.conn.execute_batch("ROLLBACK")
        {
            tracing::error!(error = %e, "rollback failed");
        }
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
                writer: Mutex::new(Writer {
                    conn: writer,
                    pdus: RefCell::new(PduCache::default()),
                    stream_pos: Cell::new(pos),
                }),
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
        self.write_checked(|_| Ok(()), |tx, ()| f(tx)).await
    }

    /// [`Db::write`] preceded by `check`, a read on the writer's connection outside any
    /// transaction, whose result `f` is given. A write that must first authenticate its
    /// request (`api::extract::Token`) saves a trip to a reader's thread this way, and a
    /// request that fails the check never begins a write transaction.
    pub async fn write_checked<C, A, F, R>(&self, check: C, f: F) -> Result<R>
    where
        C: FnOnce(&Connection) -> Result<A> + Send + 'static,
        F: FnOnce(&mut WriteTx<'_>, A) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        run_blocking(move || {
            // A closure that panicked left the lock poisoned, but its WriteTx rolled back
            // as it unwound: the connection is as clean as after an error.
            let writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let checked = check(&writer.conn)?;
            let mut wtx = WriteTx::begin(&writer)?;
            let out = f(&mut wtx, checked)?;
            let last = wtx.commit()?;
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
                conn.prepare_cached("BEGIN")?.execute([])?;
                let out = f(&conn);
                conn.prepare_cached("COMMIT")?.execute([])?;
                out
            })();
            inner.return_reader(conn);
            out
        })
        .await
    }

    /// Moves committed WAL pages into the database file in the background, at most every
    /// [`CHECKPOINT_EVERY`] and only after writes, so commits stay cheap and an idle node
    /// stays asleep.
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
            tokio::time::sleep(CHECKPOINT_EVERY).await;
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
    // Without the query planner stability guarantee, SQLite (3.54) marks statements whose
    // plan looked at a bound value (`LIMIT ?`, `col = ?` outside the index used) to be
    // re-prepared whenever their bindings are cleared, and rusqlite clears them each time
    // a cached statement goes back to the cache: such statements were compiled anew on
    // every use (a tenth of the CPU of a send).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // The node uses some 170 distinct statements; /sync alone would cycle a cache of 64.
    conn.set_prepared_statement_cache_capacity(256);
    Ok(())
}

async fn run_blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}
