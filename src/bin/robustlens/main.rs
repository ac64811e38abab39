//! The `robustlens` command line. Thin: `args.rs` parses the flags into the library's typed
//! options, and each command calls one function of `robustlens::commands`.

mod args;

use anyhow::Result;
use args::{Cli, Command, DataCommand};
use clap::{CommandFactory, Parser};
use robustlens::commands::{self as cmd, train::TrainOptions};
use robustlens::config::Recipe;
use robustlens::interrupt::Interrupt;

/// What the first Ctrl-C (or SIGTERM) prints while training.
const STOPPING: &str =
    "Ctrl-C: finishing the current step, then writing a checkpoint (again to stop at once)";

fn train(opts: &TrainOptions) -> Result<()> {
    cmd::train::run(opts, &Interrupt::install(STOPPING))?;
    Ok(())
}

fn data(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Synth {
            out,
            per_class,
            size,
            seed,
        } => cmd::data::synth(&out, per_class, size, seed)?,
        DataCommand::Split {
            data,
            train_per_class,
            test_per_class,
            val_per_class,
            folds,
            seed,
            out,
        } => {
            let spec = robustlens::data::split::SplitSpec {
                train_per_class,
                test_per_class,
                val_per_class,
                folds,
                seed,
            };
            cmd::data::split(&data.source(), &spec, &out)?
        }
        DataCommand::Inspect { data, check_images } => {
            cmd::data::inspect(&data.source(), check_images)?
        }
        DataCommand::Bench {
            data,
            image_size,
            batch_size,
            per_class,
            epochs,
        } => cmd::data::bench(&data.source(), image_size, batch_size, per_class, epochs)?,
    }
    Ok(())
}

fn saliency(a: &args::SaliencyArgs) -> Result<()> {
    cmd::saliency::command(&a.options()?)?;
    Ok(())
}

fn cv(a: &args::CvArgs) -> Result<()> {
    let opts = cmd::cv::CvOptions {
        train: a.train.options(Recipe::TrainStandard),
        lrs: a.lrs.clone(),
        batch_sizes: a.batch_sizes.clone(),
        folds: a.folds,
        final_train: a.final_train,
    };
    cmd::cv::run(&opts, &Interrupt::install(STOPPING))?;
    Ok(())
}

fn evaluate(a: &args::EvaluateArgs) -> Result<()> {
    let opts = cmd::evaluate::EvaluateOptions {
        run: a.run.clone(),
        data: a.data.clone(),
        part: a.split,
        attack: a.pgd(),
        device: a.device.device,
    };
    cmd::evaluate::evaluate(&opts)?;
    Ok(())
}

fn attack(a: &args::AttackArgs) -> Result<()> {
    let model = match (&a.weights, &a.run) {
        (Some(w), None) => w.clone(),
        (None, Some(r)) => r.to_string_lossy().to_string(),
        _ => anyhow::bail!("attack: give --weights FILE or --run DIR"),
    };
    let opts = cmd::evaluate::AttackOptions {
        model,
        images: a.images.clone(),
        image_size: a.image_size,
        pgd: a.pgd(),
        target_class: a.target_class,
        labels: a.label.clone(),
        raw_out: a.raw_out.clone(),
        out: a.out.clone(),
        seed: a.seed,
        device: a.device.device,
    };
    cmd::evaluate::attack(&opts)?;
    Ok(())
}

fn demo(a: &args::DemoArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let opts = cmd::demo::DemoOptions {
        out: a.out.clone(),
        image_size: a.image_size,
        eps_at_224: a.eps_at_224.clone(),
        seed: a.seed,
        device: a.device.device,
        robust_epochs: a.robust_epochs,
    };
    cmd::demo::run(&opts, &Interrupt::install(STOPPING))?;
    println!(
        "demo finished in {:.0} s: open {}",
        t0.elapsed().as_secs_f64(),
        a.out.join("report.html").display()
    );
    Ok(())
}

fn compare(a: &args::CompareArgs) -> Result<()> {
    let runs = robustlens::run::name_runs(&a.runs);
    let opts = a
        .opts
        .settings()
        .options(Some(a.data.clone()), a.split, a.seed)?;
    cmd::compare::run(&runs, &opts, a.device.device, &a.out)?;
    Ok(())
}

fn sweep(a: &args::SweepArgs) -> Result<()> {
    use cmd::sweep::EpsList;
    let eps = match (&a.eps, &a.eps_at_224) {
        (Some(v), _) => EpsList::Working(v.clone()),
        (None, Some(v)) => EpsList::At224(v.clone()),
        (None, None) => anyhow::bail!(
            "sweep-eps needs --eps 0,0.5,1 (working size) or --eps-at-224 0,1,2,3,4,5,7,9"
        ),
    };
    let opts = cmd::sweep::SweepOptions {
        train: a.train.options(Recipe::TrainStandard),
        eps,
        train_attack_steps: a.train_attack_steps,
        compare: a.compare.settings(),
    };
    cmd::sweep::run(&opts, &Interrupt::install(STOPPING))?;
    Ok(())
}

fn sanity(a: &args::SanityArgs) -> Result<()> {
    let opts = cmd::evaluate::SanityOptions {
        run: a.run.clone(),
        method: a.method.clone(),
        part: a.split,
        count: a.count,
        seed: a.seed,
        json: a.json.clone(),
        device: a.device.device,
    };
    cmd::evaluate::sanity(&opts)?;
    Ok(())
}

fn report(a: &args::ReportArgs) -> Result<()> {
    let runs = robustlens::run::name_runs(&a.runs);
    let opts = cmd::report::ReportOptions {
        out: a.out.clone(),
        robust_images: a.robust_images,
        methods: cmd::list(&a.method),
        ..Default::default()
    };
    cmd::report::run(&runs, &opts, &a.device.device.open()?)?;
    println!("wrote {}", a.out.join("report.html").display());
    Ok(())
}

fn predict(a: &args::PredictArgs) -> Result<()> {
    let opts = cmd::predict::PredictOptions {
        weights: a.weights.clone(),
        num_classes: a.num_classes,
        image_size: a.image_size,
        json: a.json,
        batch_size: a.batch_size,
        device: a.device.device,
        images: a.images.clone(),
    };
    cmd::predict::predict(&opts)?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Predict(a) => predict(&a),
        Command::Info(a) => Ok(cmd::predict::info(&a.weights)?),
        Command::Saliency(a) => saliency(&a),
        Command::Data(c) => data(c),
        Command::TrainStandard(a) => train(&a.options(Recipe::TrainStandard)),
        Command::TrainRobust(a) => train(&a.options()),
        Command::Finetune(a) => train(&a.options()),
        Command::Cv(a) => cv(&a),
        Command::Evaluate(a) => evaluate(&a),
        Command::Attack(a) => attack(&a),
        Command::Demo(a) => demo(&a),
        Command::Compare(a) => compare(&a),
        Command::SweepEps(a) => sweep(&a),
        Command::Sanity(a) => sanity(&a),
        Command::Bench(a) => Ok(cmd::bench::run(&a.options()).map(|_| ())?),
        Command::Report(a) => report(&a),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "robustlens",
                &mut std::io::stdout(),
            );
            Ok(())
        }
    }
}

/// The message of an error chain, with a bad setting shown as its flag (`--lr 0: ...`), and
/// the exit status: 130 for an interrupted run, 1 otherwise.
fn report_error(e: &anyhow::Error) -> (String, i32) {
    let mut parts = Vec::new();
    let mut code = 1;
    for cause in e.chain() {
        match cause.downcast_ref::<robustlens::Error>() {
            Some(robustlens::Error::Interrupted { resume }) => {
                code = 130;
                parts.push(match resume {
                    Some(d) => format!(
                        "interrupted: checkpoint written to {}; continue with --resume {}",
                        d.display(),
                        d.display()
                    ),
                    None => {
                        "interrupted: checkpoints written; run the same command again to continue"
                            .into()
                    }
                });
            }
            Some(le) => match le.setting() {
                Some(s) => parts.push(s.render("--")),
                None => parts.push(le.to_string()),
            },
            None => parts.push(cause.to_string()),
        }
        // A library error prints its whole message; its sources are part of it.
        if cause.downcast_ref::<robustlens::Error>().is_some() {
            break;
        }
    }
    (parts.join(": "), code)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
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
        .try_init();
}

/// glibc returns every large buffer to the kernel on free and page-faults a fresh one on the
/// next allocation; tensors of tens of MB are allocated and freed every step, so keep them in
/// the heap instead (measured: system time of a training step falls from more than the user
/// time to a few percent). Buffers above 32 MB (the stem's activations at 224 px) would still
/// be mapped fresh each time, so no buffer is: train step @224 9.8 → 10.3 images/s, page
/// faults per run 473k → 254k (the first touches of the working set).
fn tune_allocator() {
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
fn tune_candle_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

fn main() {
    tune_allocator();
    tune_candle_threads();
    // A file-size limit (ulimit -f) must give a clear "File too large" error on the write that
    // crosses it, not kill the process with SIGXFSZ.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // A bad value is an error like any other (status 1); a malformed command line (an
    // unknown flag, a missing argument) keeps clap's status 2; --help and --version 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::{InvalidValue, ValueValidation};
            let code = match e.kind() {
                InvalidValue | ValueValidation => 1,
                _ => e.exit_code(),
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        let (msg, code) = report_error(&e);
        eprintln!("Error: {msg}");
        std::process::exit(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every option and positional argument of every subcommand has a description.
    #[test]
    fn every_option_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "robustlens", &mut missing);
        assert!(missing.is_empty(), "options without help: {missing:#?}");
    }

    #[test]
    fn settings_are_shown_as_flags() {
        let e: anyhow::Error = robustlens::config::Preset::Quick
            .base(Recipe::TrainStandard)
            .validate()
            .map(|_| ())
            .and_then(|_| robustlens::adversarial::Pgd::evaluation(0.0, 3).validate())
            .unwrap_err()
            .into();
        assert_eq!(
            report_error(&e),
            ("--eps 0: must be a number > 0".into(), 1)
        );
        let e: anyhow::Error = robustlens::Error::Interrupted {
            resume: Some("models/x".into()),
        }
        .into();
        let (msg, code) = report_error(&e);
        assert_eq!(code, 130);
        assert!(msg.contains("--resume models/x"), "{msg}");
    }
}
