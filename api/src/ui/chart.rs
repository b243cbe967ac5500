//! The throughput chart, drawn on the server as SVG: no chart library, no script, and
//! colours from the stylesheet (classes, not inline styles, for the CSP).

use chrono::{DurationRound, TimeDelta};
use maud::{Markup, html};
use turnq_core::{stats::MinuteCounts, time::Timestamp};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 120.0;
const MINUTES: i64 = 60;

/// Completed (stacked under failed) per minute over the hour before `now`.
pub(crate) fn throughput(now: Timestamp, minutes: &[MinuteCounts]) -> Markup {
    let this_minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
    let first = this_minute - TimeDelta::minutes(MINUTES - 1);
    let mut slots = vec![(0i64, 0i64); MINUTES as usize];
    for m in minutes {
        let index = (m.minute - first).num_minutes();
        if (0..MINUTES).contains(&index) {
            slots[index as usize] = (m.completed, m.failed);
        }
    }
    let peak = slots.iter().map(|(c, f)| c + f).max().unwrap_or(0).max(1) as f64;
    let bar = WIDTH / MINUTES as f64;
    let total_completed: i64 = slots.iter().map(|s| s.0).sum();
    let total_failed: i64 = slots.iter().map(|s| s.1).sum();
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {}", HEIGHT + 14.0)) role="img"
                aria-label=(format!("{total_completed} completed and {total_failed} failed in the last hour, per minute")) {
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for (i, (completed, failed)) in slots.iter().enumerate() {
                    @let x = i as f64 * bar;
                    @let hc = *completed as f64 / peak * HEIGHT;
                    @let hf = *failed as f64 / peak * HEIGHT;
                    @let at = first + TimeDelta::minutes(i as i64);
                    g {
                        title { (at.format("%H:%M")) " UTC: " (completed) " completed, " (failed) " failed" }
                        rect.hit x=(x) y="0" width=(bar) height=(HEIGHT) {}
                        @if *completed > 0 {
                            rect.completed x=(x + 1.0) y=(HEIGHT - hc) width=(bar - 2.0) height=(hc) {}
                        }
                        @if *failed > 0 {
                            rect.failed x=(x + 1.0) y=(HEIGHT - hc - hf) width=(bar - 2.0) height=(hf) {}
                        }
                    }
                }
                text.label x="0" y=(HEIGHT + 12.0) { "60 min ago" }
                text.label x=(WIDTH) y=(HEIGHT + 12.0) text-anchor="end" { "now" }
                text.label x=(WIDTH) y="10" text-anchor="end" { "peak " (peak as i64) "/min" }
            }
            figcaption {
                span.key-completed { "■" } " completed " (total_completed) "  "
                span.key-failed { "■" } " failed " (total_failed) " in the last hour"
            }
        }
    }
}
