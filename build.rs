//! Generates the gRPC code for the SPIFFE Workload API from `proto/`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs no system protobuf
//! compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Packed relative relocations (DT_RELR) for the agent binary on glibc Linux: the dynamic loader
    // reads a few kilobytes instead of ~0.9 MB of RELA entries at every start, and those pages no
    // longer sit in the agent's memory. Checked with GNU ld 2.40 and glibc 2.36 (Debian 12, as in
    // deploy/kubernetes/Containerfile): the binary then records a `GLIBC_ABI_DT_RELR` dependency,
    // so it needs glibc ≥ 2.36 to run. Older toolchains were not tried here.
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages that carry private keys or bearer tokens get a hand-written, redacting `Debug`.
        .skip_debug([".X509SVID", ".JWTSVID", ".WITSVID"])
        .compile_with_config(
            config,
            &[
                "proto/workload.proto".into(),
                "proto/lanyard/admin/v1/admin.proto".into(),
            ],
            &["proto".into(), well_known],
        )?;
    // The SPIRE server API, client side only (lanyard as a SPIRE agent). Attestation data carries
    // join tokens and JWT-SVIDs are bearer tokens: both get a redacting `Debug`.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .skip_debug([
            ".spire.api.types.AttestationData",
            ".spire.api.types.JWTSVID",
        ])
        .compile_with_config(
            config,
            &[
                std::path::PathBuf::from("proto/spire/api/server/agent/v1/agent.proto"),
                "proto/spire/api/server/entry/v1/entry.proto".into(),
                "proto/spire/api/server/svid/v1/svid.proto".into(),
                "proto/spire/api/server/bundle/v1/bundle.proto".into(),
            ],
            &[std::path::PathBuf::from("proto")],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
