fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from Debian's protobuf-compiler (installed by scripts/install-deps.sh).
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/user.proto",
                "proto/starter.proto",
                "proto/session.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
