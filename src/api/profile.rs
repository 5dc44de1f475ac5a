//! (endpoint group; routes added in `add`)

use axum::Router;

use crate::services::AppState;

pub fn add(r: Router<AppState>) -> Router<AppState> {
    r
}
