//! `/meshserver/profile/1`: a local user's public profile (federation `query/profile`).

use serde_json::{Map, Value};

use crate::p2p::wire::Response;
use crate::services::AppState;
use crate::storage::accounts::profile;
use crate::{Error, Result};

/// `/meshserver/profile/1`: `displayname` and `avatar_url` of a local user, or only
/// `field`; `M_NOT_FOUND` for a user this node does not have.
pub async fn serve(s: &AppState, user_id: &str, field: Option<String>) -> Response {
    super::guard::answer(lookup(s, user_id, field).await)
}

async fn lookup(s: &AppState, user_id: &str, field: Option<String>) -> Result<Response> {
    let uid = super::guard::local_user(s, user_id)?.to_string();
    let (displayname, avatar_url) =
        s.db.read(move |c| profile(c, &uid))
            .await?
            .ok_or_else(|| Error::not_found("no such user"))?;
    let mut out = Map::new();
    for (key, value) in [("displayname", displayname), ("avatar_url", avatar_url)] {
        // Unset fields are left out, as the spec asks.
        if let Some(v) = value
            && field.as_deref().is_none_or(|f| f == key)
        {
            out.insert(key.into(), v.into());
        }
    }
    Ok(Response::Body(Value::Object(out)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::p2p::serve::handle;
    use crate::p2p::wire::{Request, Response};
    use crate::storage::user_data::{ProfileField, set_profile_field};
    use crate::testkit::{node, other_server};

    #[tokio::test]
    async fn answers_for_local_users_only() {
        let a = node();
        let alice = a.add_user("alice").await;
        let u = alice.clone();
        a.s.db
            .write(move |tx| set_profile_field(tx, &u, ProfileField::DisplayName, Some("Alice")))
            .await
            .unwrap();
        let origin = other_server();
        let ask = |user_id: &str, field: Option<&str>| Request::Profile {
            user_id: user_id.to_owned(),
            field: field.map(str::to_owned),
        };
        let res = handle(&a.s, &origin, ask(&alice, None)).await;
        assert_eq!(res, Response::Body(json!({"displayname": "Alice"})));
        let res = handle(&a.s, &origin, ask(&alice, Some("avatar_url"))).await;
        assert_eq!(res, Response::Body(json!({})));

        let res = handle(&a.s, &origin, ask(&a.user("nobody"), None)).await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_NOT_FOUND"),
            "{res:?}"
        );
        let elsewhere = format!("@alice:{origin}");
        let res = handle(&a.s, &origin, ask(&elsewhere, None)).await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_FORBIDDEN"),
            "{res:?}"
        );
        assert_eq!(a.refused(), 1);
    }
}
