//! Compiles the .proto files with a vendored protoc: no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Assignment payloads are encoded once and shared by every stream that sends them.
        .bytes(".shoal.v1.Assignment")
        .bytes(".shoal.v1.AssignmentSet")
        .compile_protos(
            &[
                "proto/raft.proto",
                "proto/kv.proto",
                "proto/dispatcher.proto",
                "proto/ca.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
