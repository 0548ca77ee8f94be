//! Percentiles and the printed figures table.

use std::time::Duration;

/// One line of the final table.
pub struct Row {
    pub section: &'static str,
    pub case: String,
    pub metric: &'static str,
    pub value: String,
}

/// Collects rows and echoes each one as soon as it is measured, so a partial run still shows
/// what it got.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

impl Table {
    pub fn add(
        &mut self,
        section: &'static str,
        case: impl Into<String>,
        metric: &'static str,
        value: impl Into<String>,
    ) {
        let row = Row {
            section,
            case: case.into(),
            metric,
            value: value.into(),
        };
        eprintln!(
            "  [{}] {} — {}: {}",
            row.section, row.case, row.metric, row.value
        );
        self.rows.push(row);
    }

    pub fn print(&self) {
        let w =
            |f: fn(&Row) -> usize, min: usize| self.rows.iter().map(f).max().unwrap_or(0).max(min);
        let (ws, wc, wm) = (
            w(|r| r.section.len(), 7),
            w(|r| r.case.chars().count(), 4),
            w(|r| r.metric.len(), 6),
        );
        println!(
            "| {:ws$} | {:wc$} | {:wm$} | value",
            "section", "case", "metric"
        );
        println!(
            "|{}|{}|{}|------",
            "-".repeat(ws + 2),
            "-".repeat(wc + 2),
            "-".repeat(wm + 2)
        );
        for r in &self.rows {
            println!(
                "| {:ws$} | {:wc$} | {:wm$} | {}",
                r.section, r.case, r.metric, r.value
            );
        }
    }
}

/// Nearest-rank percentile of `samples` (sorted in place); `None` when empty.
pub fn percentile(samples: &mut [Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    Some(samples[rank.clamp(1, samples.len()) - 1])
}

pub fn ms(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.2} ms", d.as_secs_f64() * 1000.0),
        None => "n/a".into(),
    }
}

/// "p50 / p99 / max" of the samples.
pub fn summary(samples: &mut [Duration]) -> String {
    format!(
        "p50 {} · p99 {} · max {} (n={})",
        ms(percentile(samples, 50.0)),
        ms(percentile(samples, 99.0)),
        ms(percentile(samples, 100.0)),
        samples.len()
    )
}
