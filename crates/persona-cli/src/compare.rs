//! `persona compare`: several methods and identities evaluated with one command, shardable across machines.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use persona_eval::compare::{merge, run_on, Shard};
use persona_eval::results::Results;

/// Reads a TOML manifest of methods × identities × prompt sets (see docs/evaluation.md), trains the identities
/// that are missing, generates and scores every prompt, and writes results.json, results.csv and report.html
/// (method table, ID-vs-prompt scatter, image grids) into --out. Re-running skips finished work.
///
/// --shard k/n runs only the k-th of n equal blocks of the work (a Slurm array: --shard $SLURM_ARRAY_TASK_ID/n
/// with --array=1-n; a Kubernetes indexed job: --shard $((JOB_COMPLETION_INDEX+1))/n), all writing into the
/// same --out (or copied together afterwards); --merge then joins them into one report.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  persona compare --manifest compare.toml --out cmp/ --shard 1/4   # … up to 4/4, then:\n  \
persona compare --manifest compare.toml --out cmp/ --merge"
)]
pub struct CompareArgs {
    #[arg(long)]
    manifest: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Run the k-th of n shards (1-based).
    #[arg(long, conflicts_with = "merge")]
    shard: Option<Shard>,
    /// Join the shards' outputs into results.json and report.html.
    #[arg(long)]
    merge: bool,
    /// (The manifest may set `device` and `dtype` too; these flags win.)
    #[command(flatten)]
    device: crate::device_flags::DeviceArgs,
}

pub fn run(a: CompareArgs) -> Result<()> {
    let results = if a.merge {
        Some(merge(&a.manifest, &a.out)?)
    } else {
        let bar = crate::progress::bar(0, "comparing");
        let r = run_on(
            &a.manifest,
            &a.out,
            a.shard,
            (a.device.device, a.device.dtype),
            &bar,
        )?;
        bar.finish_and_clear();
        r
    };
    match (results, a.shard) {
        (Some(r), _) => {
            print_table(&r);
            eprintln!(
                "wrote {}/results.json, results.csv, report.html",
                a.out.display()
            );
        }
        (None, Some(s)) => eprintln!(
            "shard {}/{} done; run `persona compare --merge` once every shard has finished",
            s.k, s.n
        ),
        (None, None) => {}
    }
    Ok(())
}

/// The method table on stdout.
pub fn print_table(r: &Results) {
    let fmt = |i: &Option<persona_eval::stats::Interval>| {
        i.map_or("missing".to_string(), |i| {
            format!("{:.3} [{:.3}, {:.3}]", i.mean, i.lo, i.hi)
        })
    };
    println!(
        "{:<14} {:<12} {:>7} {:>9} {:<24} {:<24}",
        "method", "prompts", "images", "detected", "ID", "prompt score"
    );
    for m in &r.methods {
        let rows = std::iter::once(("all".to_string(), &m.overall))
            .chain(m.classes.iter().map(|(c, s)| (c.clone(), s)));
        for (class, s) in rows {
            println!(
                "{:<14} {:<12} {:>7} {:>9.2} {:<24} {:<24}",
                m.method,
                class,
                s.images,
                s.detection_rate,
                fmt(&s.id),
                fmt(&s.prompt_score)
            );
        }
    }
}
