//! Server counters in the Prometheus text exposition format.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the time-to-first-token histogram.
const TTFT_BUCKETS: [f64; 10] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    /// (route, status) -> count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub queue_depth: AtomicI64,
    pub in_flight: AtomicI64,
    ttft: Mutex<Histogram>,
    decode: Mutex<DecodeStats>,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; TTFT_BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct DecodeStats {
    steps: u64,
    tokens: u64,
    seconds: f64,
    last_tokens_per_second: f64,
}

impl Metrics {
    pub fn count_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    pub fn observe_ttft(&self, d: Duration) {
        if let Ok(mut h) = self.ttft.lock() {
            let s = d.as_secs_f64();
            for (i, &b) in TTFT_BUCKETS.iter().enumerate() {
                if s <= b {
                    h.counts[i] += 1;
                }
            }
            h.sum += s;
            h.count += 1;
        }
    }

    /// One batched decode step over `rows` sequences.
    pub fn observe_step(&self, rows: usize, d: Duration) {
        if let Ok(mut s) = self.decode.lock() {
            let secs = d.as_secs_f64();
            s.steps += 1;
            s.tokens += rows as u64;
            s.seconds += secs;
            if secs > 0.0 {
                s.last_tokens_per_second = rows as f64 / secs;
            }
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# HELP biomistral_requests_total HTTP requests by route and status.");
        let _ = writeln!(o, "# TYPE biomistral_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    o,
                    "biomistral_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "biomistral_prompt_tokens_total",
            "Prompt tokens accepted.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut o,
            "biomistral_completion_tokens_total",
            "Tokens generated.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        gauge(
            &mut o,
            "biomistral_queue_depth",
            "Requests waiting for a batch slot.",
            self.queue_depth.load(Ordering::Relaxed).max(0) as f64,
        );
        gauge(
            &mut o,
            "biomistral_in_flight_sequences",
            "Sequences being prefilled or decoded.",
            self.in_flight.load(Ordering::Relaxed).max(0) as f64,
        );
        if let Ok(h) = self.ttft.lock() {
            let name = "biomistral_time_to_first_token_seconds";
            let _ = writeln!(o, "# HELP {name} Time from queueing to the first generated token.");
            let _ = writeln!(o, "# TYPE {name} histogram");
            for (i, b) in TTFT_BUCKETS.iter().enumerate() {
                let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(o, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
        }
        if let Ok(s) = self.decode.lock() {
            counter(
                &mut o,
                "biomistral_decode_steps_total",
                "Batched decode steps.",
                s.steps,
            );
            gauge(
                &mut o,
                "biomistral_decode_seconds_total",
                "Time spent in decode steps.",
                s.seconds,
            );
            let avg = if s.seconds > 0.0 {
                s.tokens as f64 / s.seconds
            } else {
                0.0
            };
            gauge(
                &mut o,
                "biomistral_tokens_per_second",
                "Decode throughput over the server's life (tokens/s, all sequences).",
                avg,
            );
            gauge(
                &mut o,
                "biomistral_last_step_tokens_per_second",
                "Decode throughput of the latest step.",
                s.last_tokens_per_second,
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.count_request("/v1/models", 200);
        m.observe_ttft(Duration::from_millis(30));
        m.observe_step(4, Duration::from_millis(100));
        let t = m.render();
        assert!(t.contains("biomistral_requests_total{route=\"/v1/models\",status=\"200\"} 1"));
        assert!(t.contains("biomistral_time_to_first_token_seconds_bucket{le=\"0.05\"} 1"));
        assert!(t.contains("biomistral_in_flight_sequences 0"));
        assert!(t.contains("biomistral_tokens_per_second 40"));
    }
}
