//! Client-Server API tests: real nodes in-process on 127.0.0.1:0, temporary data dirs,
//! real HTTP. One binary, one module per endpoint group.

mod common;

mod account;
mod events;
mod keys;
mod media;
mod persistence;
mod rooms;
mod startup;
mod sync;
mod to_device;
mod user_data;
