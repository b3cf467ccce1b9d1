//! `vigil`: the guard model's command line. This file only dispatches.

mod cli;
mod commands;
mod fetch;
mod progress;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Some(n) = cli.global.threads {
        // candle's kernels read RAYON_NUM_THREADS; rayon's pool is sized here before first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    let result = match cli.command {
        cli::Command::FetchModel(a) => commands::fetch_model::run(a, &cli.global),
        cli::Command::Classify(a) => commands::classify::run(a, &cli.global),
        cli::Command::Bench(a) => commands::bench::run(a, &cli.global),
    };
    if let Err(e) = result {
        // A closed pipe (`vigil … | head`) is not an error.
        if e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
        {
            std::process::exit(0);
        }
        eprintln!("vigil: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
