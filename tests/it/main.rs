//! The integration tests, in one binary so that the crate and the bundled RocksDB link once
//! (a dozen binaries linked them a dozen times) and one harness serves them all. Every test
//! here runs the real model, RocksDB and a gRPC server on a loopback port.

mod harness;

mod api;
mod batch;
mod cli;
mod cluster;
mod config;
mod crash;
mod embed_parity;
mod errors;
mod faults;
mod lifecycle;
mod overload;
mod quality;
mod retention;
mod security;
mod tls;
mod verified;
