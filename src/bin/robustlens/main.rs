//! The `robustlens` command line. Thin: `args.rs` parses the flags into the library's typed
//! options, and each command calls one function of `robustlens::commands`.

mod args;
mod errors;
mod grid;
mod process;

use anyhow::Result;
use args::{Cli, Command, DataCommand};
use clap::{CommandFactory, Parser};
use robustlens::commands::{self as cmd, train::TrainOptions};
use robustlens::config::Recipe;
use robustlens::interrupt::Interrupt;
use robustlens::train::cv::CvPart;

/// What the first Ctrl-C (or SIGTERM) prints while training.
const STOPPING: &str =
    "stop requested (Ctrl-C or SIGTERM): finishing the current step, then writing a checkpoint (Ctrl-C again stops at once)";

fn train(opts: &TrainOptions) -> Result<()> {
    cmd::train::run(opts, &Interrupt::install(STOPPING))?;
    Ok(())
}

fn data(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Synth {
            set,
            out,
            per_class,
            size,
            seed,
        } => cmd::data::synth(set, &out, per_class, size, seed)?,
        DataCommand::Split(a) => cmd::data::split(&a.data.source(), &a.spec(), &a.out)?,
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
        train: a.train.options(Recipe::TrainStandard)?,
        lrs: a.lrs.clone(),
        batch_sizes: a.batch_sizes.clone(),
        folds: a.folds,
        final_train: a.final_train,
        part: match (&a.grid.cell, a.grid.gather) {
            (Some(c), _) => CvPart::Cell(c.clone()),
            (None, true) => CvPart::Gather,
            (None, false) => CvPart::All,
        },
    };
    if !grid::submit("cv", || cmd::cv::grid(&opts), &a.grid)? {
        cmd::cv::run(&opts, &Interrupt::install(STOPPING))?;
    }
    Ok(())
}

fn evaluate(a: &args::EvaluateArgs) -> Result<()> {
    robustlens::run::check_arch(a.arch, &a.run)?;
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
        arch: a.arch,
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
        control: !a.no_control,
        tiny: false,
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
    runs.iter()
        .try_for_each(|(_, d)| robustlens::run::check_arch(a.arch, d))?;
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
        train: a.train.options(Recipe::TrainStandard)?,
        eps,
        train_attack_steps: a.train_attack_steps,
        compare: a.compare.settings(),
        cell: a.grid.cell.clone(),
        gather: a.grid.gather,
    };
    if !grid::submit("sweep-eps", || cmd::sweep::grid(&opts), &a.grid)? {
        cmd::sweep::run(&opts, &Interrupt::install(STOPPING))?;
    }
    Ok(())
}

fn benchmark(a: &args::BenchmarkArgs) -> Result<()> {
    let opts = a.options();
    if !grid::submit("benchmark", || cmd::benchmark_archs::grid(&opts), &a.grid)? {
        cmd::benchmark_archs::run(&opts, &Interrupt::install(STOPPING))?;
    }
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
        metric_methods: a
            .metric_method
            .as_deref()
            .map(cmd::list)
            .unwrap_or_default(),
        metrics: robustlens::eval::compare::Metric::parse_list(&a.metrics)?,
        adversarial_images: a.adversarial_images,
        failures: a.failures,
        shared_scale: a.shared_scale,
        ig_steps: a.ig_steps,
        ..Default::default()
    };
    cmd::report::run(&runs, &opts, &a.device.device.open()?)?;
    println!("wrote {}", a.out.join("report.html").display());
    Ok(())
}

fn predict(a: &args::PredictArgs) -> Result<()> {
    let opts = cmd::predict::PredictOptions {
        weights: a.weights.clone(),
        arch: a.arch,
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
        Command::Info(a) => Ok(cmd::predict::info(&a.weights, a.arch)?),
        Command::Saliency(a) => saliency(&a),
        Command::Data(c) => data(c),
        Command::TrainStandard(a) => train(&a.options(Recipe::TrainStandard)?),
        Command::TrainRobust(a) => train(&a.options()?),
        Command::Finetune(a) => train(&a.options()?),
        Command::Cv(a) => cv(&a),
        Command::Evaluate(a) => evaluate(&a),
        Command::Attack(a) => attack(&a),
        Command::Demo(a) => demo(&a),
        Command::Compare(a) => compare(&a),
        Command::SweepEps(a) => sweep(&a),
        Command::Benchmark(a) => benchmark(&a),
        Command::Status(a) => grid::status(&a),
        Command::Sanity(a) => sanity(&a),
        Command::Bench(a) => Ok(cmd::bench::run(&a.options()).map(|_| ())?),
        Command::DeviceCheck(a) => Ok(cmd::device_check::run(&a.options()).map(|_| ())?),
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

fn main() {
    process::tune();
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
    process::init(cli.verbose, cli.tf32, cli.deterministic);
    // on one of the kernels' own threads: no hand-off to the pool and back per operation
    if let Err(e) = robustlens::ops::on_pool_thread(|| run(cli)) {
        let (msg, code) = errors::report(&e);
        eprintln!("Error: {msg}");
        std::process::exit(code);
    }
}
