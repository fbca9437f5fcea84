//! The `lanyard` binary: arguments to the CLI, nothing else.

fn main() -> std::process::ExitCode {
    lanyard::cli::main()
}
