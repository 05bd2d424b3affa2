//! Shared pieces of kiln's benchmarks: the machine description every result carries, timing
//! helpers, and writing one bench's section into `benches/RESULTS.md` without touching the
//! others.

pub mod external;
pub mod inproc;
pub mod load;
pub mod svg;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `benches/RESULTS.md`.
pub fn results_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

/// One line describing this machine: CPU model, cores, memory, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let sha_ni = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "sha_ni"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores available, {:.0} GiB RAM, SHA-NI {}, Linux {}",
        mem_kib as f64 / 1048576.0,
        if sha_ni { "yes" } else { "no" },
        kernel.trim()
    )
}

/// Replaces the section between `<!-- NAME:start -->` and `<!-- NAME:end -->` in
/// RESULTS.md with `body` (appending the section if it is not there yet).
pub fn write_section(name: &str, body: &str) -> std::io::Result<()> {
    let path = results_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|_| "# kiln benchmark results\n".to_owned());
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->"),
    );
    let section = format!("{start}\n{}\n{end}", body.trim_end());
    let new = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{}{}", &text[..s], section, &text[e + end.len()..])
        }
        _ => format!("{}\n{}\n", text.trim_end(), section),
    };
    std::fs::write(path, new)
}

/// Runs `f` `runs` times and returns each run's duration, sorted.
pub fn time_runs(runs: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

/// The median of sorted durations.
pub fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
