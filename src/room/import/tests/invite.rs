//! An invite to a user of another node: checked and countersigned by the invitee's node,
//! shown to the invitee, stored by the inviter's node, accepted through it.

use ruma::canonical_json::CanonicalJsonObject;
use serde_json::json;

use super::timeline;
use crate::p2p::join::{invitee, remote};
use crate::room::ingest::{Outcome, ingest};
use crate::room::{NewEvent, build_unsigned, rules_for, sign};
use crate::testkit::{Node, bare};

#[tokio::test]
async fn an_invite_is_countersigned_shown_to_the_invitee_and_accepted_through_the_inviter() {
    let (a, b, c) = (bare(1), bare(2), bare(3));
    let (alice, bob) = (a.register("alice").await, b.register("bob").await);
    let room = a
        .create(&alice, json!({"preset": "private_chat", "name": "secret"}))
        .await;
    // A builds and signs the invite without storing it, with the room state to show.
    let (version, invite, room_state) =
        a.db.read({
            let (id, room, alice, bob) = (a.id.clone(), room.clone(), alice.clone(), bob.clone());
            move |c| {
                let ev = NewEvent::state("m.room.member", bob.as_str(), json!({"membership": "invite"}));
                let (rules, unsigned) = build_unsigned(c, &room, &alice, ev)?;
                let pdu = sign(&id, &rules, unsigned)?;
                let mut state = Vec::new();
                for kind in ["m.room.create", "m.room.join_rules", "m.room.name"] {
                    let eid = crate::storage::state::current_state_id(c, room.as_str(), kind, "")?.unwrap();
                    state.push(serde_json::to_value(
                        crate::storage::events::get_pdu(c, &eid).unwrap().json,
                    )?);
                }
                Ok((crate::room::room_version(c, room.as_str())?, pdu, state))
            }
        })
        .await
        .unwrap();
    let receive = |n: &Node, origin: &Node, json: CanonicalJsonObject| {
        let (db, id, origin, v, state) = (
            n.db.clone(),
            n.id.clone(),
            origin.id.server_name().to_owned(),
            version.to_string(),
            room_state.clone(),
        );
        async move {
            db.write(move |tx| invitee::receive_invite(tx, &id, &origin, &v, json, state))
                .await
        }
    };
    // C cannot deliver A's invite as its own.
    let err = receive(&b, &c, invite.json.clone()).await.unwrap_err();
    assert_eq!(err.errcode, "M_FORBIDDEN");
    let signed = receive(&b, &a, invite.json.clone()).await.unwrap();
    let sigs = signed.get("signatures").and_then(|s| s.as_object()).unwrap();
    assert!(sigs.contains_key(b.id.server_name().as_str()), "B countersigned");
    let rules = rules_for(&version).unwrap();
    assert!(
        remote::signed_by(&signed, b.id.server_name(), &rules),
        "B's signature verifies"
    );
    assert!(
        !remote::signed_by(&signed, c.id.server_name(), &rules),
        "C did not sign"
    );
    assert_eq!(b.local_membership(&bob, &room).await.as_deref(), Some("invite"));
    assert!(timeline(&b, &room).await.is_empty(), "an invite is no timeline");
    // The stripped state B shows comes from what A sent.
    let shown =
        b.db.read({
            let iid = invite.event_id.to_string();
            move |c| {
                let g = crate::storage::events::state_group_of(c, &iid)?.unwrap();
                let name = crate::storage::events::state_entry_at(c, g, "m.room.name", "")?.unwrap();
                crate::storage::events::content_str(c, &name, "name")
            }
        })
        .await
        .unwrap();
    assert_eq!(shown.as_deref(), Some("secret"));

    // A stores the countersigned invite; bob accepts through A.
    let outcome = a.db.write({
        let (id, json) = (a.id.clone(), signed.clone());
        move |tx| ingest(tx, &id, json)
    });
    assert!(matches!(
        outcome.await.unwrap(),
        Outcome::Stored {
            soft_failed: false,
            ..
        }
    ));
    b.join_through(&a, &room, &bob).await;
    assert_eq!(a.state(&room).await, b.state(&room).await);
    assert_eq!(b.local_membership(&bob, &room).await.as_deref(), Some("join"));
    let invite_outliers =
        b.db.read(|c| {
            Ok(
                c.query_row("SELECT COUNT(*) FROM events WHERE outlier = 2", [], |r| {
                    r.get::<_, i64>(0)
                })?,
            )
        })
        .await
        .unwrap();
    assert_eq!(
        invite_outliers, 0,
        "the checked state replaced what the invite brought"
    );
}
