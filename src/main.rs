//! The `posd` binary: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    posd::cli::main()
}
