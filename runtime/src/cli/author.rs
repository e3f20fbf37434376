//! `sluice new` and `sluice test`: the handler author's loop.

use std::path::PathBuf;
use std::process::ExitCode;

use sluice::authoring::new::{self, Lang};
use sluice::authoring::{fixtures, harness, report};

/// Arguments of `sluice new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The project's folder (created); its name is the handler's name.
    path: PathBuf,
    /// The handler's language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The guest SDK the project builds with (the `guest-sdk` folder of a
    /// Sluice source tree). Default: the one this binary was built from.
    #[arg(long, value_name = "PATH", env = "SLUICE_SDK")]
    sdk: Option<PathBuf>,
}

/// `sluice new`: writes the project and says how to build, test and run it.
pub fn new(args: NewArgs) -> anyhow::Result<ExitCode> {
    let sdk = args.sdk.unwrap_or_else(new::default_sdk);
    let made = new::create(&args.path, args.lang, &sdk)?;
    let dir = made.dir.display();
    println!(
        "created {} ({} handler) in {dir}",
        made.name,
        args.lang.as_str()
    );
    println!(
        "build:  bash {dir}/build.sh    ({})",
        args.lang.build_command()
    );
    println!("test:   sluice test {dir}/fixtures.toml");
    println!("run:    sluice run {dir}/pipeline.toml");
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `sluice test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Fixtures files (default: `fixtures.toml` in the current folder).
    fixtures: Vec<PathBuf>,
    /// One JSON object per case (and a last one with the totals) instead of text.
    #[arg(long)]
    json: bool,
}

/// `sluice test`: every case of every file; exit 1 if one failed or a file
/// could not be read.
pub async fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let files = if args.fixtures.is_empty() {
        vec![PathBuf::from("fixtures.toml")]
    } else {
        args.fixtures
    };
    let engine = super::engine()?;
    let (mut passed, mut failed, mut bad_files) = (0usize, 0usize, 0usize);
    for file in &files {
        let f = match fixtures::load(file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                bad_files += 1;
                continue;
            }
        };
        let setup = match harness::Setup::of(&f) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                bad_files += 1;
                continue;
            }
        };
        for case in &f.cases {
            let case = case.get_ref();
            let got = harness::run(&engine, &setup, &f, case).await;
            let diff = report::judge(case.expect.get_ref(), &got);
            if diff.is_empty() {
                passed += 1;
            } else {
                failed += 1;
            }
            if args.json {
                let mut v = report::json(&case.name, &got, &diff);
                v["file"] = file.display().to_string().into();
                println!("{v}");
            } else if diff.is_empty() {
                println!("ok    {} ({})", case.name, report::summary(&got));
            } else {
                println!("FAIL  {}", case.name);
                for d in &diff {
                    println!("      {d}");
                }
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({"passed": passed, "failed": failed, "unreadable_files": bad_files})
        );
    } else {
        println!("{passed} passed, {failed} failed");
    }
    Ok(if failed == 0 && bad_files == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
