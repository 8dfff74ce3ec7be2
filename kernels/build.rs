//! `edgeq_arm_dsp`: the target has the Armv7E-M / Armv8-M Mainline DSP
//! extension (SMLAD, SXTB16). Stable Rust exposes no `dsp` target-feature
//! cfg, so the target name decides: every `thumbv7em-*` and
//! `thumbv8m.main-*` core (Cortex-M4/M7/M33/M55) has it, `thumbv6m`,
//! `thumbv7m` and `thumbv8m.base` do not.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(edgeq_arm_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    let t = std::env::var("TARGET").unwrap_or_default();
    if t.starts_with("thumbv7em") || t.starts_with("thumbv8m.main") {
        println!("cargo::rustc-cfg=edgeq_arm_dsp");
    }
}
