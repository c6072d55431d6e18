mod cli;

use clap::CommandFactory;

fn main() -> std::process::ExitCode {
    semcache::embed::configure_cpu_threads();
    // The matches, not only the parsed flags: `serve` asks them which settings were given.
    cli::run(&cli::Cli::command().get_matches())
}
