//! `pacmesh`: one binary, many subcommands. Exit codes: 0 success, 1 failure (one-line reason
//! on stderr), 2 usage error.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = pacmesh_node::cli::Cli::parse();
    pacmesh_node::cli::init_tracing(cli.verbose);
    match pacmesh_node::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pacmesh: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
