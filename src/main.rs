//! The `opsync` binary: parse the command line, set up logging, run a subcommand.

fn main() -> std::process::ExitCode {
    opsync::cli::main()
}
