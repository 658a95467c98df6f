//! The `llm-sandbox` command line.

mod cli;

fn main() {
    // The hidden sandbox helper must run before anything else (single-threaded).
    llm_sandbox::sandbox::maybe_run_helper();
    llm_sandbox::backend::docker::agent::maybe_run_agent();
    std::process::exit(cli::main());
}
