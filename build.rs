//! Link settings for the `agentvault` binary.
//!
//! On glibc Linux the binary is linked with packed relative relocations
//! (`DT_RELR`, glibc ≥ 2.36, GNU ld ≥ 2.38 or lld ≥ 15): the table the loader
//! reads at every start shrinks from about a megabyte of `.rela.dyn` to a few
//! kilobytes, and so do the file pages each sidecar holds resident for it. The
//! image's runtime (distroless `cc-debian12`) ships glibc 2.36.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
