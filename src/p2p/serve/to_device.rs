//! `/meshserver/to-device/1`: `m.direct_to_device` from a peer, queued in the inboxes of
//! the local devices it names. The (origin, message_id) pair is remembered in the same
//! transaction, so a delivery the peer retries (its answer was lost) is queued once.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::guard::{answer, local_user, origin_user};
use crate::api::account::now_ms;
use crate::api::to_device::{MAX_MESSAGES, targets};
use crate::p2p::wire::Response;
use crate::services::AppState;
use crate::storage::remote_e2ee::first_delivery;
use crate::storage::sync::put_to_device;
use crate::{Error, Result};

/// Longest `message_id` and event type accepted (the spec says 32 codepoints for the ID;
/// bytes are what storage pays for).
const MAX_ID_BYTES: usize = 255;

#[derive(Deserialize)]
struct DirectToDevice {
    sender: String,
    #[serde(rename = "type")]
    kind: String,
    message_id: String,
    /// user ID → device ID (or `*`) → content.
    messages: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
}

/// `/meshserver/to-device/1`: queues the messages and answers `Ok`, also for a message
/// already delivered. The sender must be `origin`'s user, the recipients this node's.
pub async fn serve(s: &AppState, origin: &ruma::ServerName, content: Value) -> Response {
    answer(deliver(s, origin, content).await)
}

async fn deliver(s: &AppState, origin: &ruma::ServerName, content: Value) -> Result<Response> {
    let m: DirectToDevice =
        serde_json::from_value(content).map_err(|e| Error::bad_json(format!("to-device message: {e}")))?;
    let sender = origin_user(s, origin, &m.sender)?.to_string();
    if m.message_id.is_empty()
        || m.message_id.len() > MAX_ID_BYTES
        || m.kind.is_empty()
        || m.kind.len() > MAX_ID_BYTES
    {
        return Err(Error::invalid_param("message_id or type out of bounds"));
    }
    if m.messages.values().map(BTreeMap::len).sum::<usize>() > MAX_MESSAGES {
        return Err(Error::too_large(format!(
            "at most {MAX_MESSAGES} messages per delivery"
        )));
    }
    let mut recipients = Vec::with_capacity(m.messages.len());
    for (user, devices) in m.messages {
        recipients.push((local_user(s, &user)?.to_string(), devices));
    }
    let (origin, message_id, kind, now) = (origin.to_string(), m.message_id, m.kind, now_ms());
    s.db.write(move |tx| {
        if !first_delivery(tx, &origin, &message_id, now)? {
            return Ok(());
        }
        let mut queued = 0;
        for (user, devices) in recipients {
            for (device, content) in targets(tx, &user, devices)? {
                queued += 1;
                if queued > MAX_MESSAGES {
                    return Err(Error::too_large(format!(
                        "at most {MAX_MESSAGES} messages per delivery"
                    )));
                }
                put_to_device(
                    tx,
                    &user,
                    &device,
                    &sender,
                    &kind,
                    &Value::Object(content).to_string(),
                )?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(Response::Ok {})
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use crate::p2p::serve::handle;
    use crate::p2p::wire::{Request, Response};
    use crate::testkit::{node, other_server, server};

    fn msg(sender: &str, message_id: &str, messages: Value) -> Request {
        Request::ToDevice {
            content: json!({"sender": sender, "type": "m.room_key", "message_id": message_id, "messages": messages}),
        }
    }

    #[tokio::test]
    async fn a_retried_delivery_is_queued_exactly_once() {
        let a = node();
        let alice = a.add_user("alice").await;
        a.add_device(&alice, "PHONE", &[]).await;
        a.add_device(&alice, "LAPTOP", &[]).await;
        let origin = other_server();
        let bob = format!("@bob:{origin}");
        let to_all = json!({&alice: {"*": {"n": 1}}});
        for _ in 0..3 {
            assert_eq!(
                handle(&a.s, &origin, msg(&bob, "m1", to_all.clone())).await,
                Response::Ok {}
            );
        }
        for device in ["PHONE", "LAPTOP"] {
            let inbox = a.inbox(&alice, device).await;
            assert_eq!(inbox.len(), 1, "{device}");
            assert_eq!(inbox[0].sender, bob);
            assert_eq!(inbox[0].kind, "m.room_key");
            assert_eq!(
                serde_json::from_str::<Value>(&inbox[0].content).unwrap(),
                json!({"n": 1})
            );
        }
        // A new message ID is a new message; the same ID from another node is too.
        let to_phone = json!({&alice: {"PHONE": {"n": 2}}});
        handle(&a.s, &origin, msg(&bob, "m2", to_phone.clone())).await;
        let other = server(8);
        handle(&a.s, &other, msg(&format!("@carol:{other}"), "m1", to_phone)).await;
        assert_eq!(a.inbox(&alice, "PHONE").await.len(), 3);
        assert_eq!(a.inbox(&alice, "LAPTOP").await.len(), 1);
    }

    #[tokio::test]
    async fn refuses_a_sender_of_another_node_and_foreign_recipients() {
        let a = node();
        let alice = a.add_user("alice").await;
        a.add_device(&alice, "PHONE", &[]).await;
        let origin = other_server();
        let forged = format!("@bob:{}", server(9));
        let res = handle(&a.s, &origin, msg(&forged, "m1", json!({&alice: {"*": {}}}))).await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_FORBIDDEN"),
            "{res:?}"
        );
        let foreign = format!("@dave:{}", server(9));
        let bob = format!("@bob:{origin}");
        let res = handle(
            &a.s,
            &origin,
            msg(&bob, "m2", json!({&alice: {"*": {}}, &foreign: {"*": {}}})),
        )
        .await;
        assert!(
            matches!(res, Response::Error { ref errcode, .. } if errcode == "M_FORBIDDEN"),
            "{res:?}"
        );
        assert_eq!(a.refused(), 2);
        assert!(a.inbox(&alice, "PHONE").await.is_empty());
        // A refused message was not remembered as delivered: a corrected retry gets through.
        handle(&a.s, &origin, msg(&bob, "m2", json!({&alice: {"*": {}}}))).await;
        assert_eq!(a.inbox(&alice, "PHONE").await.len(), 1);
    }
}
