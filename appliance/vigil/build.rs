//! The version `vigil --version`, the retained status and the A/B slots report: the crate's,
//! or `VIGIL_VERSION` when a packager sets it at build time (a Yocto `PV`, a pre-release such
//! as `0.2.0-rc.1+g1a2b3c`). It must be a semantic version: slots and OTA targets are compared
//! by it, so a build with anything else fails here rather than on a device.

fn main() {
    println!("cargo:rerun-if-env-changed=VIGIL_VERSION");
    let version = match std::env::var("VIGIL_VERSION") {
        Ok(v) if !v.is_empty() => v,
        _ => std::env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"),
    };
    if let Err(e) = semver::Version::parse(&version) {
        panic!("VIGIL_VERSION `{version}` is not a semantic version such as 0.2.0 or 0.2.0-rc.1 ({e})");
    }
    println!("cargo:rustc-env=VIGIL_BUILD_VERSION={version}");
}
