//! Generates the gRPC code for the SPIFFE Workload API from `proto/`.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a fresh machine needs no system protobuf
//! compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Packed relative relocations (DT_RELR) for the agent binary on glibc Linux: the dynamic loader
    // reads a few kilobytes instead of ~0.9 MB of RELA entries at every start, and those pages no
    // longer sit in the agent's memory. Checked with GNU ld 2.40 and with LLD 22 (Rust 1.95's own
    // linker), on glibc 2.36: the binary then records a `GLIBC_ABI_DT_RELR` dependency, so it needs
    // glibc ≥ 2.36 to run. Older toolchains were not tried here.
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" && target_env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    // The functions the agent runs, side by side (layout/generate.sh): its resident code shrinks
    // from ~10 MB to ~3 MB. One list per profile (`release`, `dist`); only where the linker is LLD,
    // which reads the list: rustc's own LLD, the default for this target since Rust 1.90, unless
    // the flags choose another linker. LANYARD_TEXT_ORDER=0 turns it off.
    println!("cargo:rerun-if-changed=layout");
    println!("cargo:rerun-if-env-changed=LANYARD_TEXT_ORDER");
    if std::env::var("LANYARD_TEXT_ORDER").as_deref() != Ok("0")
        && let Some(profile) = profile_dir()
        && links_with_rust_lld()
    {
        let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR")?)
            .join(format!("layout/text-order.{profile}.txt"));
        if order.is_file() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                order.display()
            );
            // Names missing from this build (another toolchain or dependency version) are skipped.
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // An X509SVID's certificates, key and bundle are shared, not copied, between the SVID and the
    // messages of every stream that carries it (10,000 streams hold one copy, not 10,000).
    config.bytes([".X509SVID"]);

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

/// Whether rustc links the binaries with its own LLD: x86_64 Linux (glibc), Rust 1.90 or later, and
/// no linker, linker flavour or linker features chosen in the flags.
fn links_with_rust_lld() -> bool {
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["linker", "link-self-contained", "fuse-ld"]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    if std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    minor.is_some_and(|m| m >= 90)
}

/// The profile's directory under the target directory (`release`, `dist`, `debug`), from where cargo
/// put this script's output: `<target>[/<triple>]/<profile>/build/<package>-<hash>/out`.
fn profile_dir() -> Option<String> {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR")?);
    let build = out.parent()?.parent()?;
    if build.file_name()? != "build" {
        return None;
    }
    Some(build.parent()?.file_name()?.to_str()?.to_owned())
}
