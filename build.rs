//! Link settings for the `agentvault` binary.
//!
//! On glibc Linux the binary is linked with packed relative relocations
//! (`DT_RELR`, glibc ≥ 2.36, GNU ld ≥ 2.38 or lld ≥ 15): the table the loader
//! reads at every start shrinks from about a megabyte of `.rela.dyn` to a few
//! kilobytes, and so do the file pages each sidecar holds resident for it. The
//! image's runtime (distroless `cc-debian12`) ships glibc 2.36.
//!
//! Where the linker is lld (Rust's default on x86_64 Linux since 1.90), the
//! functions a sidecar runs from start to idle, listed in
//! `link/symbol-order.txt` by `scripts/symbol-order` (those its requests run
//! first, the most run first), are placed first and side by side. The kernel
//! maps the 64 KiB around every page of code a process touches, so spread
//! over the whole binary those few MiB kept nearly all of it resident. A name
//! the list has and the binary lacks is skipped without a warning: a stale
//! list places fewer functions, nothing else.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    let order = Path::new("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if order.is_file() && links_with_lld() {
        let order = std::fs::canonicalize(order).unwrap_or_else(|_| order.to_path_buf());
        // `-Xlinker` hands the linker one argument as is: `-Wl,` would split
        // a path with a comma in it.
        println!("cargo:rustc-link-arg-bins=-Xlinker");
        println!(
            "cargo:rustc-link-arg-bins=--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc links this target with lld: its default on
/// `x86_64-unknown-linux-gnu` since Rust 1.90 unless a linker or linker
/// flavor is configured (`-C linker-features=-lld`, `-fuse-ld=mold`; any
/// linker flag counts, to be safe). GNU ld has no symbol ordering file and
/// would refuse the flag.
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let configured = std::env::vars()
        .any(|(key, _)| key.starts_with("CARGO_TARGET_") && key.ends_with("_LINKER"))
        || flags.contains("linker")
        || flags.contains("fuse-ld");
    target == "x86_64-unknown-linux-gnu" && !configured
}
