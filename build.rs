//! Generates the gRPC code from `proto/` with protox (pure Rust, so no system `protoc`), and
//! writes the encoded descriptor set that the reflection service serves.
use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["semcache/v1/semcache.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("semcache_descriptor.bin"), fds.encode_to_vec())?;
    // BTreeMap: scopes compare and hash in key order without converting at the edge.
    tonic_prost_build::configure().btree_map(".").compile_fds(fds)?;
    Ok(())
}
