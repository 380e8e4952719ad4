//! `pacmesh`: one binary, many subcommands. Exit codes: 0 success, 1 failure (one-line reason
//! on stderr), 2 usage error.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = pacmesh_node::cli::Cli::parse();
    pacmesh_node::cli::init_tracing(cli.verbose);
    match pacmesh_node::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pacmesh: {}", one_line(&e));
            std::process::ExitCode::from(1)
        }
    }
}

/// The error chain on one line, leaving out causes whose text an outer message already
/// includes (library errors often say "path: cause" and also expose the cause).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}
