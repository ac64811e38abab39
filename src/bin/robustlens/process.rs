//! Process-wide settings made once at start, before any tensor work.

/// glibc returns every large buffer to the kernel on free and page-faults a fresh one on the
/// next allocation; tensors of tens of MB are allocated and freed every step, so keep them in
/// the heap instead (measured: system time of a training step falls from more than the user
/// time to a few percent). Buffers above 32 MB (the stem's activations at 224 px) would still
/// be mapped fresh each time, so no buffer is: train step @224 9.8 → 10.3 images/s, page
/// faults per run 473k → 254k (the first touches of the working set).
fn allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// candle's CPU thread pool (used for its element-wise ops) busy-waits 25,000 spins after
/// each op before it sleeps; with the convolutions on rayon's threads, that spinning took
/// 7-10% of the CPU on a 2-core machine (train step @64: 67 → 75 images/s without it).
/// Set before any candle op starts the pool; a value the user set is kept.
fn candle_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

/// candle asks for its thread count on every matrix product and, without
/// `RAYON_NUM_THREADS`, parses `/proc/cpuinfo` each time (`num_cpus::get_physical`): 17% of
/// a ConvNeXt-atto training step at 64 px, whose layers are mostly matrix products. Set it
/// to rayon's own default (the available parallelism) before any pool starts; a value the
/// user set is kept.
fn thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// rayon's global pool, which runs the kernels and, through `robustlens::ops::on_pool_thread`,
/// each command itself. Its threads get the stack of a main thread and more (16 MiB: candle's
/// backward pass walks the graph recursively; rayon's default is 2 MiB), and names that
/// show in a debugger or `top -H`. Built before anything starts the pool; the thread count is
/// `RAYON_NUM_THREADS`, set above.
fn thread_pool() {
    let built = rayon::ThreadPoolBuilder::new()
        .stack_size(16 << 20)
        .thread_name(|i| format!("robustlens-{i}"))
        .build_global();
    if let Err(e) = built {
        tracing::debug!("rayon's global pool was already built: {e}");
    }
}

/// robustlens's own kernels run their AVX-512 code and routing on a CPU that has it;
/// `ROBUSTLENS_AVX512=0` keeps them on their AVX2 code and routing (the default of the
/// releases before issue 23, bit for bit), see `robustlens::ops::set_avx512`.
fn instruction_sets() {
    if let Ok(v) = std::env::var("ROBUSTLENS_AVX512") {
        robustlens::ops::set_avx512(v.trim() != "0");
    }
    // a diagnostic switch of `cudnn` builds: candle's CUDA convolution instead of the op
    if let Ok(v) = std::env::var("ROBUSTLENS_CUDNN") {
        robustlens::ops::set_cudnn(v.trim() != "0");
    }
}

/// All of the above, subnormal floats flushed to zero (`robustlens::ops::flush_denormals`: a
/// confident model's PGD gradients are subnormal, and run several times slower), and: a
/// file-size limit (ulimit -f) must give a clear "File too large"
/// error on the write that crosses it, not kill the process with SIGXFSZ.
pub fn tune() {
    allocator();
    candle_threads();
    thread_count();
    thread_pool();
    instruction_sets();
    robustlens::ops::flush_denormals();
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Logging to standard error (`-v`, `-vv`, `RUST_LOG`) and the GPU settings of the global
/// flags `--tf32` and `--deterministic`.
pub fn init(verbose: u8, tf32: bool, deterministic: bool) {
    use tracing_subscriber::EnvFilter;
    robustlens::device::set_tf32(tf32);
    robustlens::device::set_deterministic(deterministic);
    let default = match verbose {
        0 => "warn,robustlens=info",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
