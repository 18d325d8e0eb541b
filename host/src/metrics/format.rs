//! The two exposition formats. `prometheus-client` writes OpenMetrics 1.0;
//! Prometheus' own text format (0.0.4, what a scrape gets unless it asks
//! for OpenMetrics) differs in ways its parser does not forgive: a counter's
//! `# TYPE`/`# HELP` name the sample (`foo_total`), not the family (`foo`);
//! there is no `info` or `stateset` type, no `# UNIT` and no `# EOF`.

/// `Content-Type` of Prometheus text format 0.0.4.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of OpenMetrics 1.0.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// True when an `Accept` field asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|a| {
        a.split(|&b| b == b',').any(|item| {
            item.trim_ascii_start()
                .starts_with(b"application/openmetrics-text")
        })
    })
}

/// OpenMetrics text rewritten as Prometheus text format 0.0.4.
pub fn to_prometheus(openmetrics: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP, held until its TYPE says which name to give it.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, text)| text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (kind, suffix) = match kind {
                "counter" => ("counter", "_total"),
                "info" => ("gauge", "_info"),
                "gauge" | "histogram" | "summary" => (kind, ""),
                "stateset" => ("gauge", ""),
                _ => ("untyped", ""),
            };
            if let Some(help) = help.take() {
                let _ = writeln!(out, "# HELP {name}{suffix} {help}");
            }
            let _ = writeln!(out, "# TYPE {name}{suffix} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_families_become_prometheus_text() {
        let openmetrics = "\
# HELP gateway_failovers Requests retried on another backend.
# TYPE gateway_failovers counter
gateway_failovers_total 3
# HELP gateway_backend_healthy 1 when in rotation.
# TYPE gateway_backend_healthy gauge
gateway_backend_healthy{backend=\"b\"} 1
# HELP gateway_build Build.
# TYPE gateway_build info
gateway_build_info{version=\"1\"} 1
# HELP gateway_seconds Latency.
# TYPE gateway_seconds histogram
# UNIT gateway_seconds seconds
gateway_seconds_bucket{le=\"+Inf\"} 1
gateway_seconds_sum 0.1
gateway_seconds_count 1
# EOF
";
        let text = to_prometheus(openmetrics);
        assert_eq!(
            text,
            "\
# HELP gateway_failovers_total Requests retried on another backend.
# TYPE gateway_failovers_total counter
gateway_failovers_total 3
# HELP gateway_backend_healthy 1 when in rotation.
# TYPE gateway_backend_healthy gauge
gateway_backend_healthy{backend=\"b\"} 1
# HELP gateway_build_info Build.
# TYPE gateway_build_info gauge
gateway_build_info{version=\"1\"} 1
# HELP gateway_seconds Latency.
# TYPE gateway_seconds histogram
gateway_seconds_bucket{le=\"+Inf\"} 1
gateway_seconds_sum 0.1
gateway_seconds_count 1
"
        );
    }

    #[test]
    fn accept_chooses_openmetrics_only_when_asked() {
        assert!(wants_openmetrics(Some(
            b"application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some(b"text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(None));
    }
}
