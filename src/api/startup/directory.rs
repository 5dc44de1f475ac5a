//! `POST /user_directory/search`: who a user can find to start a chat with.
//!
//! Searched: every local user, members of rooms the searcher is in, and members of rooms
//! that are public or world-readable (the set the spec says a server MUST at least
//! consider). The match is a case-insensitive substring of the user ID or display name;
//! exact and prefix matches rank first, then users with more profile information.

use std::collections::HashSet;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::api::extract::{Auth, JsonBody};
use crate::api::room_events::MAX_LIMIT;
use crate::services::AppState;
use crate::storage::rooms::{DirectoryEntry, user_directory_candidates};
use crate::{Error, Result};

const DEFAULT_LIMIT: i64 = 10;

#[derive(Deserialize)]
pub(super) struct SearchBody {
    search_term: String,
    limit: Option<i64>,
}

/// `POST /_matrix/client/v3/user_directory/search`
pub(super) async fn search(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<SearchBody>,
) -> Result<Json<Value>> {
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    let limit = usize::try_from(limit)
        .map_err(|_| Error::invalid_param("limit must not be negative"))?
        .min(MAX_LIMIT);
    let term = body.search_term.trim().to_lowercase();
    if term.is_empty() {
        return Ok(Json(serde_json::json!({"results": [], "limited": false})));
    }
    let searcher = auth.user_id.to_string();
    let candidates =
        s.db.read(move |c| user_directory_candidates(c, &searcher))
            .await?;
    let (results, limited) = rank_matches(&term, candidates, limit);
    let results: Vec<Value> = results.into_iter().map(entry_json).collect();
    Ok(Json(serde_json::json!({"results": results, "limited": limited})))
}

/// The best `limit` candidates matching `term` (lowercase), and whether more matched. A
/// user listed twice keeps their first entry: local users come first, with their global
/// profile.
fn rank_matches(term: &str, candidates: Vec<DirectoryEntry>, limit: usize) -> (Vec<DirectoryEntry>, bool) {
    let mut seen = HashSet::new();
    let mut matches = Vec::new();
    for entry in candidates {
        if !seen.insert(entry.0.clone()) {
            continue;
        }
        if let Some(rank) = rank(term, &entry.0, entry.1.as_deref()) {
            let profile = u8::from(entry.1.is_some()) + u8::from(entry.2.is_some());
            matches.push((rank, std::cmp::Reverse(profile), entry));
        }
    }
    matches.sort_by(|a, b| (a.0, a.1, &a.2.0).cmp(&(b.0, b.1, &b.2.0)));
    let limited = matches.len() > limit;
    matches.truncate(limit);
    (matches.into_iter().map(|m| m.2).collect(), limited)
}

/// 0 for an exact match of the localpart or display name, 1 for a prefix of either (or of
/// a word of the display name), 2 for any other substring of the user ID or display name.
fn rank(term: &str, user_id: &str, display_name: Option<&str>) -> Option<u8> {
    let id = user_id.to_lowercase();
    let localpart = id
        .strip_prefix('@')
        .and_then(|rest| rest.split(':').next())
        .unwrap_or(&id);
    let name = display_name.map(str::to_lowercase).unwrap_or_default();
    if localpart == term || name == term {
        return Some(0);
    }
    if localpart.starts_with(term)
        || name.split_whitespace().any(|w| w.starts_with(term))
        || name.starts_with(term)
    {
        return Some(1);
    }
    (id.contains(term) || name.contains(term)).then_some(2)
}

fn entry_json((user_id, display_name, avatar_url): DirectoryEntry) -> Value {
    let mut out = Map::new();
    out.insert("user_id".into(), user_id.into());
    if let Some(d) = display_name {
        out.insert("display_name".into(), d.into());
    }
    if let Some(a) = avatar_url {
        out.insert("avatar_url".into(), a.into());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::{rank, rank_matches};

    #[test]
    fn ranks_exact_then_prefix_then_substring() {
        assert_eq!(rank("alice", "@alice:example.org", None), Some(0));
        assert_eq!(rank("ali", "@alice:example.org", None), Some(1));
        assert_eq!(rank("won", "@a:example.org", Some("Alice Wonder")), Some(1));
        assert_eq!(rank("lic", "@alice:example.org", None), Some(2));
        assert_eq!(rank("example", "@alice:example.org", None), Some(2));
        assert_eq!(rank("änne", "@x:example.org", Some("ÄNNE")), Some(0));
        assert_eq!(rank("bob", "@alice:example.org", Some("Alice")), None);
    }

    #[test]
    fn dedupes_sorts_and_limits() {
        let e = |id: &str, name: Option<&str>| (id.to_owned(), name.map(str::to_owned), None);
        let candidates = vec![
            e("@alicia:x", None),
            e("@alice:x", Some("Alice")),
            e("@alicia:x", Some("Member name")),
            e("@malice:x", None),
        ];
        let (res, limited) = rank_matches("alice", candidates.clone(), 2);
        let ids: Vec<&str> = res.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(ids, ["@alice:x", "@malice:x"]);
        assert!(!limited);
        // The second entry for @alicia:x (a member event's name) is not searched.
        assert!(rank_matches("member", candidates.clone(), 10).0.is_empty());
        let (res, limited) = rank_matches("ali", candidates, 1);
        assert_eq!(res[0].0, "@alice:x");
        assert_eq!(res[0].1.as_deref(), Some("Alice"));
        assert!(limited);
    }
}
