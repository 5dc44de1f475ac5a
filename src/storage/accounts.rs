//! Users, devices and access tokens.

use rusqlite::{Connection, OptionalExtension, params};

use crate::Result;

pub fn user_exists(conn: &Connection, user_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE user_id = ?1")?
        .query_row([user_id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub fn insert_user(conn: &Connection, user_id: &str, password_hash: Option<&str>, now_ms: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO users (user_id, password_hash, created_ts) VALUES (?1, ?2, ?3)")?
        .execute(params![user_id, password_hash, now_ms])?;
    Ok(())
}

pub fn password_hash(conn: &Connection, user_id: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT password_hash FROM users WHERE user_id = ?1")?
        .query_row([user_id], |r| r.get(0))
        .optional()?
        .flatten())
}

pub fn set_password_hash(conn: &Connection, user_id: &str, hash: &str) -> Result<()> {
    conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE user_id = ?1")?
        .execute(params![user_id, hash])?;
    Ok(())
}

/// `(displayname, avatar_url)`, or `None` for an unknown user.
pub fn profile(conn: &Connection, user_id: &str) -> Result<Option<(Option<String>, Option<String>)>> {
    Ok(conn
        .prepare_cached("SELECT displayname, avatar_url FROM users WHERE user_id = ?1")?
        .query_row([user_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// Creates the device if new (keeping its display name otherwise).
pub fn upsert_device(
    conn: &Connection,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO devices (user_id, device_id, display_name) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, display_name)",
    )?
    .execute(params![user_id, device_id, display_name])?;
    Ok(())
}

/// Stores the hash of a fresh token for the device, replacing the device's old tokens.
pub fn insert_token(conn: &Connection, token: &str, user_id: &str, device_id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user_id, device_id])?;
    conn.prepare_cached("INSERT INTO access_tokens (token_hash, user_id, device_id) VALUES (?1, ?2, ?3)")?
        .execute(params![token_hash(token), user_id, device_id])?;
    Ok(())
}

/// `(user_id, device_id)` the token belongs to.
pub fn token_owner(conn: &Connection, token: &str) -> Result<Option<(String, String)>> {
    Ok(conn
        .prepare_cached("SELECT user_id, device_id FROM access_tokens WHERE token_hash = ?1")?
        .query_row([token_hash(token)], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

pub fn token_hash(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

/// Removes a device and (by cascade) its tokens.
pub fn delete_device(conn: &Connection, user_id: &str, device_id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user_id, device_id])?
        > 0)
}
