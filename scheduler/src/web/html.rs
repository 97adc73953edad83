//! What every page shares: the layout, links to other pages, and how
//! times, ages and digests are written. maud escapes every value put in
//! a page, so a command line or a file name shows as text, never as HTML.

use std::time::{Duration, SystemTime};

use corral_metrics::axum::response::Html;
use corral_proto::protobuf::Timestamp;
use corral_proto::reapi::Digest;
use maud::{html, Markup, DOCTYPE};

/// Plain and small: tables and monospace, no script.
const STYLE: &str = "body{font-family:sans-serif;margin:1em 2em;color:#222}\
table{border-collapse:collapse;margin:.5em 0}\
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}\
code,pre{font-family:monospace}pre{background:#f4f4f4;padding:.5em;overflow-x:auto;max-height:40em}\
nav a{margin-right:1em}.refusal{color:#a00}";

/// A whole page titled `title`.
pub fn layout(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " — Corral" }
                    style { (maud::PreEscaped(STYLE)) }
                }
                body {
                    nav { a href="/" { "Corral" } a href="/metrics" { "metrics" } a href="/readyz" { "ready?" } }
                    h1 { (title) }
                    (body)
                }
            }
        }
        .into_string(),
    )
}

/// `hash-size`, as in page addresses.
pub fn digest_text(digest: &Digest) -> String {
    format!("{}-{}", digest.hash, digest.size_bytes)
}

/// `text` with what may not stand in a URL path percent-encoded; `/`
/// is kept (instance names hold slashes).
pub fn path_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `/<kind>/<instance>/<hash>-<size>`, or without the instance when it
/// is empty.
fn href(kind: &str, instance: &str, digest: &Digest) -> String {
    if instance.is_empty() {
        format!("/{kind}/{}", digest_text(digest))
    } else {
        format!("/{kind}/{}/{}", path_encode(instance), digest_text(digest))
    }
}

/// A link to the action page of `digest`.
pub fn action_link(instance: &str, digest: &Digest) -> Markup {
    html! { a href=(href("action", instance, digest)) { code { (digest_text(digest)) } } }
}

/// A link to the directory page of `digest`, showing `label`.
pub fn tree_link(instance: &str, digest: &Digest, label: &str) -> Markup {
    html! { a href=(href("tree", instance, digest)) { (label) } }
}

/// A link downloading the blob `digest`, showing its digest.
pub fn blob_link(instance: &str, digest: &Digest) -> Markup {
    html! { a href=(href("blob", instance, digest)) { code { (digest_text(digest)) } } }
}

/// A link to the operation page of `name`.
pub fn operation_link(name: &str) -> Markup {
    html! { a href=(format!("/operation/{}", path_encode(name))) { code { (name) } } }
}

/// `t` as UTC, to the millisecond: `2026-12-07 19:55:30.123Z`.
pub fn time(t: &Timestamp) -> String {
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        t.nanos.clamp(0, 999_999_999) / 1_000_000
    )
}

/// How long ago `t` was, roughly: `4s`, `3m 12s`, `2h 5m`.
pub fn age(t: &Timestamp) -> String {
    let then = corral_proto::time::system_time(t);
    duration(SystemTime::now().duration_since(then).unwrap_or_default())
}

/// `d` roughly: `4s`, `3m 12s`, `2h 5m`; below a second, in ms.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s / 60 % 60),
    }
}

/// The time between two timestamps, if both are set and in order.
pub fn between(from: Option<&Timestamp>, to: Option<&Timestamp>) -> Option<Duration> {
    let (from, to) = (from?, to?);
    let nanos = |t: &Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    u64::try_from(nanos(to) - nanos(from))
        .ok()
        .map(Duration::from_nanos)
}

/// (year, month, day) of the day `days` after 1970-01-01 (the proleptic
/// Gregorian calendar's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        let t = |seconds| Timestamp {
            seconds,
            nanos: 5_000_000,
        };
        assert_eq!(time(&t(0)), "1970-01-01 00:00:00.005Z");
        assert_eq!(time(&t(1_796_673_330)), "2026-12-07 19:55:30.005Z");
        assert_eq!(time(&t(951_782_400)), "2000-02-29 00:00:00.005Z");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(Duration::from_millis(42)), "42ms");
        assert_eq!(duration(Duration::from_secs(192)), "3m 12s");
        assert_eq!(duration(Duration::from_secs(7500)), "2h 5m");
    }

    #[test]
    fn paths_keep_slashes_and_encode_the_rest() {
        assert_eq!(path_encode("team a/x<y>"), "team%20a/x%3Cy%3E");
    }
}
