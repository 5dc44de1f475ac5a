//! The `media` table: media IDs mapped to blobs on disk (named by blake3), plus
//! reservations made by `POST /_matrix/media/v1/create` that have no blob yet.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

/// One row of `media`.
#[derive(Debug, Clone)]
pub struct Media {
    pub media_id: String,
    pub uploader: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    /// `None` while the media is reserved and not yet uploaded.
    pub blake3: Option<String>,
    pub created_ts: i64,
    /// When an unused reservation lapses; `None` once uploaded.
    pub unused_expires_ts: Option<i64>,
}

/// What an upload stores about its content.
#[derive(Debug, Clone)]
pub struct Upload {
    pub content_type: String,
    pub filename: Option<String>,
    pub size: i64,
    pub blake3: String,
}

pub fn get(c: &Connection, media_id: &str) -> Result<Option<Media>> {
    Ok(c.query_row(
        "SELECT media_id, uploader, content_type, filename, size, blake3, created_ts, unused_expires_ts
         FROM media WHERE media_id = ?1",
        [media_id],
        |r| {
            Ok(Media {
                media_id: r.get(0)?,
                uploader: r.get(1)?,
                content_type: r.get(2)?,
                filename: r.get(3)?,
                size: r.get(4)?,
                blake3: r.get(5)?,
                created_ts: r.get(6)?,
                unused_expires_ts: r.get(7)?,
            })
        },
    )
    .optional()?)
}

/// Records a completed upload under a new media ID.
pub fn insert_uploaded(c: &Connection, media_id: &str, uploader: &str, up: &Upload, now: i64) -> Result<()> {
    c.execute(
        "INSERT INTO media (media_id, uploader, content_type, filename, size, blake3, created_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            media_id,
            uploader,
            up.content_type,
            up.filename,
            up.size,
            up.blake3,
            now
        ],
    )?;
    Ok(())
}

/// Reserves a media ID for `uploader` until `expires`.
pub fn reserve(c: &Connection, media_id: &str, uploader: &str, now: i64, expires: i64) -> Result<()> {
    c.execute(
        "INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts) VALUES (?1, ?2, ?3, ?4)",
        params![media_id, uploader, now, expires],
    )?;
    Ok(())
}

/// Fills a reservation; false when it was already filled (or is gone), so two racing
/// uploads to one media ID cannot both win.
pub fn fill_reservation(c: &Connection, media_id: &str, up: &Upload) -> Result<bool> {
    let n = c.execute(
        "UPDATE media SET content_type = ?2, filename = ?3, size = ?4, blake3 = ?5, unused_expires_ts = NULL
         WHERE media_id = ?1 AND blake3 IS NULL",
        params![media_id, up.content_type, up.filename, up.size, up.blake3],
    )?;
    Ok(n == 1)
}

/// Reservations of `uploader` still open at `now`, and the earliest of their expiries.
pub fn pending_reservations(c: &Connection, uploader: &str, now: i64) -> Result<(i64, Option<i64>)> {
    Ok(c.query_row(
        "SELECT COUNT(*), MIN(unused_expires_ts) FROM media
         WHERE uploader = ?1 AND blake3 IS NULL AND unused_expires_ts > ?2",
        params![uploader, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

/// Drops reservations that lapsed unused; they never had a blob.
pub fn delete_expired_reservations(c: &Connection, now: i64) -> Result<usize> {
    Ok(c.execute(
        "DELETE FROM media WHERE blake3 IS NULL AND unused_expires_ts <= ?1",
        [now],
    )?)
}
