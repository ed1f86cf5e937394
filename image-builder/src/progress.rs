//! Progress display: one spinner line per phase with its elapsed time and the latest output
//! line of whatever runs, and the per-phase timings at the end.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    current: Option<(String, Instant)>,
    started: Instant,
    pub(crate) timings: Vec<(String, Duration)>,
    quiet: bool,
}

impl Progress {
    /// A spinner on stderr when it is a terminal; plain "==> phase" lines otherwise (CI logs).
    pub(crate) fn new() -> Progress {
        let quiet = !std::io::IsTerminal::is_terminal(&std::io::stderr());
        Progress {
            bar: None,
            current: None,
            started: Instant::now(),
            timings: Vec::new(),
            quiet,
        }
    }

    /// Starts a phase (ending the previous one).
    pub(crate) fn phase(&mut self, name: &str) {
        self.finish_phase();
        self.current = Some((name.to_string(), Instant::now()));
        if self.quiet {
            eprintln!("==> {name}");
            return;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed:>3}] {prefix:.bold} {wide_msg}")
                .expect("valid template"),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    /// Shows the latest output line of the running step.
    pub(crate) fn message(&self, line: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(line.trim().chars().take(120).collect::<String>());
        }
    }

    /// Prints a line above the spinner.
    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish_phase(&mut self) {
        if let Some((name, start)) = self.current.take() {
            let took = start.elapsed();
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            eprintln!("    {name}: {:.1} s", took.as_secs_f64());
            self.timings.push((name, took));
        }
    }

    /// Ends the last phase and prints the table of timings.
    pub(crate) fn summary(&mut self) -> String {
        self.finish_phase();
        let mut out = String::from("phase timings:\n");
        for (name, took) in &self.timings {
            out.push_str(&format!("  {name:<34} {:>7.1} s\n", took.as_secs_f64()));
        }
        out.push_str(&format!(
            "  {:<34} {:>7.1} s\n",
            "total",
            self.started.elapsed().as_secs_f64()
        ));
        out
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
