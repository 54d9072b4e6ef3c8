//! Compiles Tracker's lock service (proto/tracker/lock/v1alpha1/lock.proto) into the gRPC
//! server code of `serve --grpc-listen`. protox is a protobuf compiler in Rust, so a build
//! needs no `protoc`; the .proto stays the one source of truth (no checked-in generated code
//! to keep in step).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/tracker/lock/v1alpha1/lock.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().build_client(false).build_server(true).compile_fds(fds)?;
    Ok(())
}
