//! Rooms as a whole: creation, the directory (aliases, public rooms).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::client;
use super::extract::{Auth, JsonBody};
use crate::Result;
use crate::room::create::{CreateRoom, create_room};
use crate::services::AppState;

pub fn add(r: Router<AppState>) -> Router<AppState> {
    client(r, "/createRoom", post(create))
}

/// `POST /_matrix/client/v3/createRoom`
async fn create(
    State(s): State<AppState>,
    auth: Auth,
    JsonBody(body): JsonBody<CreateRoom>,
) -> Result<Json<Value>> {
    let plan = body.plan(&s.identity)?;
    let services = s.clone();
    let room_id =
        s.db.write(move |tx| create_room(tx, &services.identity, &auth.user_id, &body, plan))
            .await?;
    Ok(Json(json!({"room_id": room_id})))
}
