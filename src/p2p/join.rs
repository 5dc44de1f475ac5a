//! Joining and inviting across nodes: the resident side of `/meshserver/join/1` and the
//! invitee side of `/meshserver/invite/1`, and the client-facing flows that call them.

use ruma::ServerName;

use super::wire::{Request, Response};
use crate::services::AppState;

pub async fn serve(_s: &AppState, _origin: &ServerName, _req: Request) -> Response {
    Response::error("M_UNRECOGNIZED", "not implemented yet")
}
