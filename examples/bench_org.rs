//! The organization scale benchmark (issue 10), driven by `scripts/bench-org`: `plan` then `run` over
//! 100 accounts x 16 regions on throttled fakes, on tokio's paused clock. Prints simulated time against
//! its lower bound, API calls against theirs, and the real CPU time and peak RSS of each mode.
//!
//! Exits 1, saying why, when a mode leaves an account unhandled or an instance short of `planned` /
//! `onboarded`. Options (all optional): `--accounts N --regions N --instances N --need-profile N --hot N
//! --max-concurrent-accounts N --latency-ms N`.

use std::collections::BTreeSet;
use std::time::Duration;

use arc_onboard::bench::org::{bounds, fleet, measure, Bounds, FleetSpec, Measured, Mode};
use arc_onboard::bench::throttle::Limits;

fn main() {
    let (spec, limits) = parse_args();
    let fleet = fleet(&spec);
    println!(
        "fleet: {} accounts x {} regions, {} instances, {} without a profile ({} in account {} region {})",
        spec.accounts,
        spec.regions,
        spec.instances,
        spec.need_profile,
        spec.hot,
        fleet[0].id,
        fleet[0].regions[0].region
    );
    println!(
        "limits per account and region: latency {:?} per call; AssociateIamInstanceProfile {} then {}/s; \
         EC2 describes {} then {}/s; SSM (all calls, our choice) {} then {}/s; SDK standard retry, {} attempts",
        limits.latency,
        limits.associate.burst,
        limits.associate.rate,
        limits.ec2_describe.burst,
        limits.ec2_describe.rate,
        limits.ssm.burst,
        limits.ssm.rate,
        limits.max_attempts
    );
    println!(
        "accounts at once: {} (the binary's orchestrator, run_accounts)",
        spec.max_concurrent_accounts
    );
    for mode in [Mode::Plan, Mode::Run] {
        reset_peak_rss();
        let cpu_before = cpu_time();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        let measured = runtime.block_on(measure(mode, &spec, &fleet, limits));
        drop(runtime);
        let cpu = cpu_time().saturating_sub(cpu_before);
        let bound = bounds(mode, &spec, &fleet, &limits);
        report(mode, &measured, &bound, cpu, peak_rss_kib());
        if let Some(why) = short_of_the_end(mode, &spec, &measured) {
            eprintln!("bench_org: giving up: {why}");
            std::process::exit(1);
        }
    }
}

/// Why `mode` did not reach the benchmark's end (every instance planned or onboarded), if it did not.
fn short_of_the_end(mode: Mode, spec: &FleetSpec, m: &Measured) -> Option<String> {
    let want = if mode == Mode::Run {
        "onboarded"
    } else {
        "planned"
    };
    let reached = m.by_status.get(want).copied().unwrap_or(0);
    (m.failed_accounts > 0 || reached != spec.instances as u64).then(|| {
        format!(
            "{reached} of {} instances {want}, {} accounts not handled; by status {:?}",
            spec.instances, m.failed_accounts, m.by_status
        )
    })
}

fn report(mode: Mode, m: &Measured, b: &Bounds, cpu: Duration, rss_kib: Option<u64>) {
    let name = if mode == Mode::Run { "run" } else { "plan" };
    println!("\n== {name}");
    println!(
        "simulated wall time {:.1} s; bound {:.1} s (throttle {:.1} s, critical path {:.2} s); ratio {:.3} (goal <= 1.15)",
        m.simulated.as_secs_f64(),
        b.time().as_secs_f64(),
        b.throttle.as_secs_f64(),
        b.critical_path.as_secs_f64(),
        m.simulated.as_secs_f64() / b.time().as_secs_f64().max(1e-9)
    );
    println!("accounts that could not be handled: {}", m.failed_accounts);
    println!("instances by status: {:?}", m.by_status);
    let total: u64 = m.calls.values().sum();
    println!(
        "AWS calls {total}; lower bound {}; ratio {:.3} (goal <= 1.2)",
        b.total_calls(),
        total as f64 / b.total_calls().max(1) as f64
    );
    let ops: BTreeSet<&String> = m.calls.keys().chain(b.calls.keys()).collect();
    println!(
        "  {:48} {:>8} {:>8} {:>8}",
        "operation", "calls", "bound", "throttled"
    );
    for op in ops {
        println!(
            "  {op:48} {:>8} {:>8} {:>8}",
            m.calls.get(op).copied().unwrap_or(0),
            b.calls.get(op).copied().unwrap_or(0),
            m.throttled.get(op).copied().unwrap_or(0)
        );
    }
    println!("Azure calls (fake, no latency): {:?}", m.azure);
    println!(
        "real CPU time {:.2} s; peak RSS {}",
        cpu.as_secs_f64(),
        rss_kib.map_or("unknown".into(), |k| format!(
            "{:.1} MiB (goal < 150 MiB)",
            k as f64 / 1024.0
        ))
    );
}

fn parse_args() -> (FleetSpec, Limits) {
    let mut spec = FleetSpec::default();
    let mut limits = Limits::default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{flag} needs a number")));
        match flag.as_str() {
            "--accounts" => spec.accounts = value,
            "--regions" => spec.regions = value.min(16),
            "--instances" => spec.instances = value,
            "--need-profile" => spec.need_profile = value,
            "--hot" => spec.hot = value,
            "--max-concurrent-accounts" => spec.max_concurrent_accounts = value,
            "--latency-ms" => limits.latency = Duration::from_millis(value as u64),
            other => usage(&format!("unknown option {other}")),
        }
    }
    if spec.need_profile > spec.instances || spec.hot > spec.need_profile || spec.accounts == 0 {
        usage("need --instances >= --need-profile >= --hot and at least one account");
    }
    (spec, limits)
}

fn usage(problem: &str) -> ! {
    eprintln!("bench_org: {problem}");
    eprintln!("options: --accounts N --regions N --instances N --need-profile N --hot N --max-concurrent-accounts N --latency-ms N");
    std::process::exit(2)
}

/// User + system CPU time of this process (`/proc/self/stat`, clock ticks of 1/100 s).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Peak resident set size (`VmHWM`) in KiB.
fn peak_rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak RSS so that each mode reports its own (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
