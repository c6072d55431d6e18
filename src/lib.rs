//! semcache: a semantic cache server for LLM responses.
//!
//! Data flows one way: [`grpc`] (the tonic service, status mapping) -> [`cache`] (the policy:
//! validation, scope, threshold, TTL) -> [`embed`] (the sentence model on its own thread),
//! [`index`] (HNSW graphs per namespace and scope, derived data) and [`store`] (RocksDB, the
//! source of truth). [`server`] wires them together for `semcache serve`.
//!
//! The CLI's client tools, [`eval`] (pair sets, scoring), [`loadgen`] (`semcache bench`) and
//! [`transfer`] (import, export), are plain clients of the public API: they reach a server
//! through [`client`] and [`proto`], and share only leaf modules ([`text`], [`clock`], [`rng`])
//! with the server's side, so that they measure what any gateway would see.

pub mod cache;
pub mod client;
pub mod clock;
pub mod config;
pub mod embed;
pub mod eval;
pub mod grpc;
pub mod index;
pub mod loadgen;
pub mod metrics;
pub mod rng;
pub mod server;
pub mod store;
pub mod text;
pub mod transfer;

/// The generated protobuf and gRPC code for `proto/semcache/v1/semcache.proto`.
pub mod proto {
    tonic::include_proto!("semcache.v1");

    /// Encoded descriptor set of the API, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/semcache_descriptor.bin"));
}
