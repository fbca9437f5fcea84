//! The `lanyard` binary: arguments to the CLI, nothing else — and the two C math functions it needs.

fn main() -> std::process::ExitCode {
    lanyard::cli::main()
}

/// The agent's only calls into the C math library are `pow` (tokio's scheduler statistics) and `log`
/// (SQLite). Defined here, in the executable, from the pure-Rust `libm` crate, they are what the
/// linker binds those calls to, so `libm.so` is not loaded at all: its code, data and symbol tables
/// were about 0.5 MB of the agent's resident memory at idle. A dependency that needs any other libm
/// function brings `libm.so` back (the e2e bench prints the shared objects the agent maps).
/// `tests/cli.rs` checks that a running agent maps no `libm`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod math {
    /// `pow(3)`.
    #[unsafe(no_mangle)]
    extern "C" fn pow(x: f64, y: f64) -> f64 {
        libm::pow(x, y)
    }

    /// `log(3)`.
    #[unsafe(no_mangle)]
    extern "C" fn log(x: f64) -> f64 {
        libm::log(x)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn math_functions_agree_with_known_values() {
            assert_eq!(pow(2.0, 10.0), 1024.0);
            assert_eq!(pow(9.0, 0.5), 3.0);
            assert!((pow(0.9, 3.0) - 0.729).abs() < 1e-15);
            assert_eq!(log(1.0), 0.0);
            assert!((log(std::f64::consts::E) - 1.0).abs() < 1e-15);
            assert!(log(-1.0).is_nan());
            assert_eq!(log(0.0), f64::NEG_INFINITY);
        }
    }
}
