//! RocketMQ 5 protocol helpers shared by the services that speak it (broker nodes and
//! nameservers): routes (`QueryRoute` answers) and the Telemetry `Settings` reply.
//! Protocol types stop at this service layer; storage and Raft never see them.

pub mod route;
pub mod settings;

pub use route::GroupRoute;
