//! `/meshserver/directory/1`: this node's published rooms, as the client API lists them.

use crate::Result;
use crate::api::rooms::public::{Filter, local_directory};
use crate::p2p::wire::Response;
use crate::services::AppState;

/// The largest page a peer gets, whatever it asks.
pub const MAX_PAGE: u32 = 100;

/// Longest search term accepted: it is matched against every published room.
const MAX_SEARCH_TERM_BYTES: usize = 256;

/// `/meshserver/directory/1` `public_rooms`: a page of at most [`MAX_PAGE`] rooms.
pub async fn serve(
    s: &AppState,
    limit: Option<u32>,
    since: Option<String>,
    search: Option<String>,
) -> Response {
    super::guard::answer(page(s, limit, since, search).await)
}

async fn page(
    s: &AppState,
    limit: Option<u32>,
    since: Option<String>,
    search: Option<String>,
) -> Result<Response> {
    if search.as_ref().is_some_and(|t| t.len() > MAX_SEARCH_TERM_BYTES) {
        return Err(crate::Error::invalid_param("search term too long"));
    }
    let limit = limit.filter(|l| *l > 0).map_or(MAX_PAGE, |l| l.min(MAX_PAGE));
    let filter = Filter {
        generic_search_term: search,
        room_types: None,
    };
    let body = local_directory(s, Some(u64::from(limit)), since.as_deref(), filter).await?;
    Ok(Response::Body(body))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::p2p::serve::handle;
    use crate::p2p::wire::{Request, Response};
    use crate::testkit::{node, other_server};

    fn rooms(res: &Response) -> Vec<String> {
        let Response::Body(b) = res else {
            panic!("expected a body, got {res:?}")
        };
        b["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn lists_published_rooms_paged_and_filtered() {
        let a = node();
        let alice = a.add_user("alice").await;
        for i in 0..3 {
            a.create_room(
                &alice,
                json!({"visibility": "public", "name": format!("room {i}")}),
            )
            .await;
        }
        a.create_room(&alice, json!({"name": "hidden"})).await;
        let origin = other_server();
        let ask = |limit, since, filter| Request::PublicRooms { limit, since, filter };

        let all = handle(&a.s, &origin, ask(None, None, None)).await;
        let mut names = rooms(&all);
        names.sort();
        assert_eq!(names, ["room 0", "room 1", "room 2"]);

        let first = handle(&a.s, &origin, ask(Some(2), None, None)).await;
        assert_eq!(rooms(&first).len(), 2);
        let Response::Body(b) = &first else { unreachable!() };
        let next = b["next_batch"].as_str().unwrap().to_owned();
        let second = handle(&a.s, &origin, ask(Some(2), Some(next), None)).await;
        assert_eq!(rooms(&second).len(), 1);

        let found = handle(&a.s, &origin, ask(None, None, Some("OOM 1".into()))).await;
        assert_eq!(rooms(&found), ["room 1"]);
    }
}
