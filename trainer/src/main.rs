//! `vigil`: the guard model's command line. This file only dispatches.

mod cli;
mod commands;

use clap::Parser;

fn main() {
    keep_freed_memory();
    let cli = cli::Cli::parse();
    // candle reads RAYON_NUM_THREADS on every matmul (and counts CPUs through /proc when it is
    // unset); vigil's thread team and rayon's pool are sized from it too. Set it once, here.
    let threads = cli
        .global
        .threads
        .or_else(|| std::env::var("RAYON_NUM_THREADS").ok()?.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // candle's worker threads spin 25,000 rounds after each of its ops before they park; between
    // vigil's own kernels that spinning takes the core vigil's thread team needs (2 threads
    // trained no faster than 1). A short spin: `vigil bench train` 221 → ~300 tok/s on 2 cores
    // (a `vigil train` run on guard data, packed over shared prompts, showed no change either way).
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "500");
    }
    std::env::set_var("VIGIL_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    // The command runs on a worker of a rayon pool, not beside it: candle's matmuls and gemm's
    // parallel stages then split their work with that thread taking part, where a caller from
    // outside the pool sleeps on a latch and is woken for every one of them (~13k times per
    // training step). `vigil bench train`: f32 181 → 207 tok/s, bf16 290 → 322 on 2 cores.
    match rayon::ThreadPoolBuilder::new().num_threads(threads).stack_size(64 << 20).build() {
        Ok(pool) => pool.install(move || finish(dispatch(cli))),
        Err(_) => finish(dispatch(cli)),
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::FetchModel(a) => commands::fetch_model::run(a, &cli.global),
        cli::Command::Classify(a) => commands::classify::run(a, &cli.global),
        cli::Command::Bench(a) => commands::bench::run(a, &cli.global),
        cli::Command::Tokens(a) => commands::tokens::run(a, &cli.global),
        cli::Command::Train(a) => commands::train::run(a, &cli.global),
        cli::Command::Sweep(a) => commands::train::sweep(a),
        cli::Command::Dpo(c) => commands::train::dpo(c),
        cli::Command::Export(a) => commands::export::run(a, &cli.global),
        cli::Command::Data(c) => commands::data::run(c),
        cli::Command::Eval(a) => commands::eval::run(a),
        cli::Command::Probe(a) => commands::eval::probe(a),
        cli::Command::Stress(a) => commands::eval::stress(a),
    }
}

fn finish(result: anyhow::Result<()>) {
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

/// Training allocates and frees activation-sized buffers (MBs to a few hundred MB) every step.
/// glibc hands buffers over 128 KiB back to the kernel at once, so every step page-faults and
/// zeroes them again (a fifth of the CPU time in `vigil bench train`). Keep them in the heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it is called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed value
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
