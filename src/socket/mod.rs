//! The Unix-socket HTTP front end: [`server`] (listener, peer credentials,
//! connections, graceful drain), [`api`] (routes of the contract and the one
//! map from error codes to statuses) and [`compat`] (the `/v1/vault/*` routes
//! of the design documents, over the same vault calls), both built on `http`
//! (bodies, queries, responses, the routes' error); [`framing`] refuses
//! request smuggling beneath hyper.

pub mod api;
pub mod compat;
mod framing;
mod http;
pub mod server;
