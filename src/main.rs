//! The `llm-sandbox` command line.

mod cli;

fn main() {
    // The hidden sandbox helper must run before anything else (single-threaded).
    llm_sandbox::sandbox::maybe_run_helper();
    std::process::exit(cli::main());
}
