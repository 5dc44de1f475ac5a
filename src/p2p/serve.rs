//! Inbound requests: one handler per request kind, each bounding what it reads and returns.
//! The origin is the server name the connection proved (its PeerId), never a claim in the body.

mod devices;
mod directory;
mod guard;
mod keys;
mod profile;
mod to_device;

use ruma::ServerName;

use super::wire::{Request, Response};
use crate::services::AppState;

/// Answers one request from `origin`.
pub async fn handle(s: &AppState, origin: &ServerName, req: Request) -> Response {
    match req {
        Request::MakeJoin { .. } | Request::SendJoin { .. } | Request::Invite { .. } => {
            super::join::serve(s, origin, req).await
        }
        Request::Heads { room_id, extremities } => {
            super::replicate::serve_heads(s, origin, room_id, extremities).await
        }
        Request::GetEvents { .. }
        | Request::GetMissing { .. }
        | Request::State { .. }
        | Request::Backfill { .. } => super::replicate::serve(s, origin, req).await,
        Request::PublicRooms { limit, since, filter } => directory::serve(s, limit, since, filter).await,
        Request::Profile { user_id, field } => profile::serve(s, &user_id, field).await,
        Request::KeysQuery { device_keys } => keys::serve_query(s, device_keys).await,
        Request::KeysClaim { one_time_keys } => keys::serve_claim(s, one_time_keys).await,
        Request::UserDevices { user_id } => devices::serve_user_devices(s, &user_id).await,
        Request::DeviceListUpdate { content } => devices::serve_update(s, origin, content).await,
        Request::ToDevice { content } => to_device::serve(s, origin, content).await,
        Request::Extremities { .. } | Request::Reconcile { .. } | Request::GetRange { .. } => {
            super::reconcile::serve(s, origin, req).await
        }
        Request::Deposit { .. }
        | Request::Collect { .. }
        | Request::Ack { .. }
        | Request::HaveMail { .. } => super::mailbox::serve(s, origin, req).await,
    }
}
