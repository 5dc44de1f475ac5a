//! Server-side key backup: per-user backup versions (numbered from 1, never reused, so a
//! deleted version stays deleted) and the encrypted session keys stored in each.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::Result;

/// A live (not deleted) backup version.
#[derive(Debug, Clone)]
pub struct Version {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: i64,
    pub count: i64,
}

/// Creates the user's next backup version; returns its number.
pub fn create_version(conn: &Connection, user_id: &str, algorithm: &str, auth_data: &Value) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO room_key_versions (user_id, version, algorithm, auth_data) \
             SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3 FROM room_key_versions WHERE user_id = ?1 \
             RETURNING version",
        )?
        .query_row(
            params![user_id, algorithm, serde_json::to_string(auth_data)?],
            |r| r.get(0),
        )?)
}

/// A live version, or the latest live one when `version` is `None`.
pub fn version(conn: &Connection, user_id: &str, version: Option<i64>) -> Result<Option<Version>> {
    let row: Option<(i64, String, String, i64)> = conn
        .prepare_cached(
            "SELECT version, algorithm, auth_data, etag FROM room_key_versions \
             WHERE user_id = ?1 AND deleted = 0 AND (?2 IS NULL OR version = ?2) \
             ORDER BY version DESC LIMIT 1",
        )?
        .query_row(params![user_id, version], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((version, algorithm, auth_data, etag)) = row else {
        return Ok(None);
    };
    Ok(Some(Version {
        version,
        algorithm,
        auth_data: serde_json::from_str(&auth_data)?,
        etag,
        count: count(conn, user_id, version)?,
    }))
}

/// Whether `version` was ever created: `None` if not, else `Some(deleted)`.
pub fn version_deleted(conn: &Connection, user_id: &str, version: i64) -> Result<Option<bool>> {
    Ok(conn
        .prepare_cached("SELECT deleted FROM room_key_versions WHERE user_id = ?1 AND version = ?2")?
        .query_row(params![user_id, version], |r| r.get(0))
        .optional()?)
}

pub fn set_auth_data(conn: &Connection, user_id: &str, version: i64, auth_data: &Value) -> Result<()> {
    conn.prepare_cached("UPDATE room_key_versions SET auth_data = ?3 WHERE user_id = ?1 AND version = ?2")?
        .execute(params![user_id, version, serde_json::to_string(auth_data)?])?;
    Ok(())
}

/// Marks a version deleted and drops its keys.
pub fn delete_version(conn: &Connection, user_id: &str, version: i64) -> Result<()> {
    conn.prepare_cached("UPDATE room_key_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2")?
        .execute(params![user_id, version])?;
    conn.prepare_cached("DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2")?
        .execute(params![user_id, version])?;
    Ok(())
}

/// Advances a version's etag (after its keys changed); returns the new one.
pub fn bump_etag(conn: &Connection, user_id: &str, version: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "UPDATE room_key_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2 RETURNING etag",
        )?
        .query_row(params![user_id, version], |r| r.get(0))?)
}

/// Number of keys stored in a version.
pub fn count(conn: &Connection, user_id: &str, version: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM room_keys WHERE user_id = ?1 AND version = ?2")?
        .query_row(params![user_id, version], |r| r.get(0))?)
}

/// The stored key data of one session.
pub fn room_key(
    conn: &Connection,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> Result<Option<Value>> {
    conn.prepare_cached(
        "SELECT json FROM room_keys WHERE user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
    )?
    .query_row(params![user_id, version, room_id, session_id], |r| {
        r.get::<_, String>(0)
    })
    .optional()?
    .map(|j| Ok(serde_json::from_str(&j)?))
    .transpose()
}

pub fn put_room_key(
    conn: &Connection,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
    key: &Value,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO room_keys (user_id, version, room_id, session_id, json) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET json = excluded.json",
    )?
    .execute(params![
        user_id,
        version,
        room_id,
        session_id,
        serde_json::to_string(key)?
    ])?;
    Ok(())
}

/// The keys of a version, of one room or one session when given: `(room, session, key)`.
pub fn room_keys(
    conn: &Connection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<Vec<(String, String, Value)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT room_id, session_id, json FROM room_keys WHERE user_id = ?1 AND version = ?2 \
         AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4) ORDER BY room_id, session_id",
    )?;
    let rows = stmt.query_map(params![user_id, version, room_id, session_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (room, session, json) = row?;
        out.push((room, session, serde_json::from_str(&json)?));
    }
    Ok(out)
}

/// Deletes the keys of a version (of one room or session when given); returns how many.
pub fn delete_room_keys(
    conn: &Connection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM room_keys WHERE user_id = ?1 AND version = ?2 \
             AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
        )?
        .execute(params![user_id, version, room_id, session_id])?)
}
