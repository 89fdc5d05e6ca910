//! Small formatters every page shares: counts with their noun, page ranges, durations, job statuses.

use attune_shared::JobStatus;

/// `1 passage`, `3 passages`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// `p. 3`, `pp. 3–4`, or nothing without pages.
pub fn page_range(start: Option<u32>, end: Option<u32>) -> String {
    match (start, end) {
        (Some(a), Some(b)) if a != b => format!("pp. {a}–{b}"),
        (Some(a), _) => format!("p. {a}"),
        _ => String::new(),
    }
}

/// `45 s`, `1 min 15 s`, `2 h 1 min`.
pub fn duration_words(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// `812 bytes`, `3.4 kB`, `538 MB`, `1.2 GB` (decimal units, as file managers show them).
pub fn bytes_words(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1000 => format!("{bytes} bytes"),
        1000..1_000_000 => format!("{:.1} kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.0} MB", b / 1e6),
        _ => format!("{:.1} GB", b / 1e9),
    }
}

/// A job's status as its badge shows it (and its CSS class names it).
pub fn status_label(status: JobStatus) -> &'static str {
    status.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_decimal_units() {
        assert_eq!(bytes_words(812), "812 bytes");
        assert_eq!(bytes_words(3_400), "3.4 kB");
        assert_eq!(bytes_words(538_090_376), "538 MB");
        assert_eq!(bytes_words(1_240_000_000), "1.2 GB");
    }

    #[test]
    fn counts_pages_and_statuses_read_right() {
        assert_eq!(count(1, "passage"), "1 passage");
        assert_eq!(count(3, "page"), "3 pages");
        assert_eq!(page_range(Some(3), Some(4)), "pp. 3–4");
        assert_eq!(page_range(Some(7), Some(7)), "p. 7");
        assert_eq!(page_range(None, None), "");
        assert_eq!(status_label(JobStatus::Interrupted), "interrupted");
        assert_eq!(duration_words(75.0), "1 min 15 s");
        assert_eq!(duration_words(7300.0), "2 h 1 min");
    }
}
