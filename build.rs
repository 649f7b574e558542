//! Compiles every `.proto` under `proto/` with a vendored `protoc`, so a fresh machine needs
//! nothing but cargo.

use std::path::{Path, PathBuf};

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let mut files = Vec::new();
    collect(Path::new("proto"), &mut files);
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    // protoc's well-known types (google/protobuf/*.proto) ship with the vendored binary; prost maps
    // them to `prost_types`.
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    // The RocketMQ client protocol (`proto/apache/...`) is built separately so that only its server
    // trait gets default methods answering UNIMPLEMENTED (raftmq's own services stay strict).
    let (rocketmq, own): (Vec<PathBuf>, Vec<PathBuf>) = files
        .into_iter()
        .partition(|p| p.starts_with("proto/apache"));
    if !own.is_empty() {
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .bytes(".")
            .compile_protos(&own, &includes)?;
    }
    if !rocketmq.is_empty() {
        tonic_prost_build::configure()
            .build_server(true)
            .build_client(true)
            .bytes(".")
            .generate_default_stubs(true)
            .compile_protos(&rocketmq, &includes)?;
    }
    Ok(())
}
