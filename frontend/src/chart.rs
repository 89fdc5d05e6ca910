//! Line charts in SVG for the training dashboard: the geometry (scales, "nice" ticks, paths) is
//! plain functions with host tests; [`LineChart`] draws series that update as points arrive.

use leptos::prelude::*;

/// One line: its name in the legend, a CSS class for its colour, and (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: &'static str,
    pub class: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Drawing area in SVG units.
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
/// Room for the step ticks and, under them, the axis label.
const BOTTOM: f64 = 40.0;

/// Round tick values covering `[min, max]`, about `count` of them (1, 2 or 5 times a power of ten).
pub fn nice_ticks(min: f64, max: f64, count: usize) -> Vec<f64> {
    if !(min.is_finite() && max.is_finite()) || count == 0 {
        return Vec::new();
    }
    let (min, max) = if max - min < f64::EPSILON * max.abs().max(1.0) { (min - 0.5, max + 0.5) } else { (min, max) };
    let raw = (max - min) / count as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (min / step - 1e-9).ceil() as i64;
    let last = (max / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Round ticks about `count` of them whose first is at or below `min` and last at or above `max`,
/// so every point lies within the gridlines.
pub fn covering_ticks(min: f64, max: f64, count: usize) -> Vec<f64> {
    let inner = nice_ticks(min, max, count);
    let step = match inner.as_slice() {
        [a, b, ..] => b - a,
        _ => return inner,
    };
    let mut ticks = inner;
    while ticks.first().is_some_and(|&t| t > min + step * 1e-9) {
        ticks.insert(0, ticks[0] - step);
    }
    while ticks.last().is_some_and(|&t| t < max - step * 1e-9) {
        ticks.push(ticks[ticks.len() - 1] + step);
    }
    // 0.30000000000000004 reads as 0.3.
    ticks.iter().map(|t| (t / step).round() * step).collect()
}

/// The range the axes span: the data's; a flat series (one point) spans 0 to one and a half
/// times its value, so it does not sit on a 0.9–1.1 axis that says nothing.
pub fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    bounds_with(values, true)
}

/// [`bounds`]; with `from_zero` false a flat series spans its value ± 0.5 (the step axis).
fn bounds_with(values: impl Iterator<Item = f64>, from_zero: bool) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return None;
    }
    if hi - lo < 1e-12 * hi.abs().max(1e-300) {
        if !from_zero {
            return Some((lo - 0.5, hi + 0.5));
        }
        return Some(match lo {
            v if v > 0.0 => (0.0, v * 1.5),
            v if v < 0.0 => (v * 1.5, 0.0),
            _ => (0.0, 1.0),
        });
    }
    Some((lo, hi))
}

/// Maps data to SVG coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    pub x: (f64, f64),
    pub y: (f64, f64),
}

impl Frame {
    pub fn px(&self, x: f64) -> f64 {
        let (lo, hi) = self.x;
        LEFT + if hi > lo { (x - lo) / (hi - lo) } else { 0.5 } * (WIDTH - LEFT - RIGHT)
    }

    pub fn py(&self, y: f64) -> f64 {
        let (lo, hi) = self.y;
        HEIGHT - BOTTOM - if hi > lo { (y - lo) / (hi - lo) } else { 0.5 } * (HEIGHT - TOP - BOTTOM)
    }

    /// An SVG path through `points` (non-finite values break the line).
    pub fn path(&self, points: &[(f64, f64)]) -> String {
        let mut path = String::new();
        let mut pen_down = false;
        for &(x, y) in points {
            if !(x.is_finite() && y.is_finite()) {
                pen_down = false;
                continue;
            }
            path.push_str(&format!("{}{:.1} {:.1} ", if pen_down { "L" } else { "M" }, self.px(x), self.py(y)));
            pen_down = true;
        }
        path.trim_end().to_owned()
    }
}

/// The frame that holds every series, with ticks on both axes.
pub fn frame(series: &[Series]) -> Option<(Frame, Vec<f64>, Vec<f64>)> {
    let xs = bounds_with(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)), false)?;
    let ys = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)))?;
    let y_ticks = covering_ticks(ys.0, ys.1, 4);
    let y = (ys.0.min(y_ticks.first().copied().unwrap_or(ys.0)), ys.1.max(y_ticks.last().copied().unwrap_or(ys.1)));
    // Steps are whole numbers: so are their ticks.
    let mut x_ticks: Vec<f64> = nice_ticks(xs.0, xs.1, 6).into_iter().filter(|t| t.fract() == 0.0).collect();
    if x_ticks.is_empty() {
        x_ticks = (xs.0.ceil() as i64..=xs.1.floor() as i64).map(|t| t as f64).collect();
    }
    Some((Frame { x: xs, y }, x_ticks, y_ticks))
}

/// A compact tick label with `digits` significant decimals: 0.0003 → 3e-4, 1200 → 1200, 0.25 → 0.25.
fn label_with(value: f64, digits: usize) -> String {
    if value == 0.0 {
        return "0".into();
    }
    if value.abs() < 1e-2 || value.abs() >= 1e5 {
        let text = format!("{value:.digits$e}", digits = digits.saturating_sub(1));
        // 2.50e-4 → 2.5e-4
        return match text.split_once('e') {
            Some((mantissa, exponent)) if mantissa.contains('.') => {
                format!("{}e{exponent}", mantissa.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => text,
        };
    }
    let text = format!("{value:.prec$}", prec = digits.max(3));
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A compact tick label: 0.0003 → 3e-4, 1200 → 1200, 0.25 → 0.25.
pub fn tick_label(value: f64) -> String {
    label_with(value, 1)
}

/// Labels for `ticks` with just enough digits that no two read the same.
pub fn tick_labels(ticks: &[f64]) -> Vec<String> {
    for digits in 1..=8 {
        let labels: Vec<String> = ticks.iter().map(|&t| label_with(t, digits)).collect();
        if labels.windows(2).all(|w| w[0] != w[1]) {
            return labels;
        }
    }
    ticks.iter().map(|t| format!("{t}")).collect()
}

/// A chart of `series` against steps, with a dashed vertical line at each of `marks` (steps where
/// something happened, e.g. hard negatives mined again) and their count in `data-marks`; `testid`
/// names it for tests, and `data-points` counts the points of its first series.
#[component]
pub fn LineChart(
    title: &'static str,
    testid: &'static str,
    #[prop(into)] series: Signal<Vec<Series>>,
    #[prop(optional, into)] marks: Signal<Vec<f64>>,
    /// What a mark means, for its tooltip.
    #[prop(optional)]
    marks_label: &'static str,
) -> impl IntoView {
    view! {
        <figure class="chart" data-testid=testid
            data-points=move || series.with(|s| s.first().map(|s| s.points.len()).unwrap_or(0).to_string())
            data-marks=move || marks.with(|m| m.len().to_string())>
            <figcaption>
                <span class="chart-title">{title}</span>
                <span class="legend">
                    {move || series.get().into_iter().filter(|s| !s.points.is_empty()).map(|s| view! {
                        <span class=format!("key {}", s.class)>{s.label}</span>
                    }).collect_view()}
                </span>
            </figcaption>
            {move || {
                let all = series.get();
                match frame(&all) {
                    None => view! { <p class="muted chart-empty">"Waiting for the first step…"</p> }.into_any(),
                    Some((f, x_ticks, y_ticks)) => view! {
                        <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label=title preserveAspectRatio="none">
                            {y_ticks.iter().zip(tick_labels(&y_ticks)).map(|(&t, label)| view! {
                                <g class="tick">
                                    <line x1=LEFT x2=WIDTH - RIGHT y1=f.py(t) y2=f.py(t) />
                                    <text x=LEFT - 6.0 y=f.py(t) + 4.0 text-anchor="end">{label}</text>
                                </g>
                            }).collect_view()}
                            {x_ticks.iter().zip(tick_labels(&x_ticks)).map(|(&t, label)| view! {
                                <text class="tick" x=f.px(t) y=HEIGHT - BOTTOM + 16.0 text-anchor="middle">{label}</text>
                            }).collect_view()}
                            <text class="axis-label" x=LEFT + (WIDTH - LEFT - RIGHT) / 2.0 y=HEIGHT - 4.0 text-anchor="middle">"step"</text>
                            {marks.get().into_iter().filter(|&m| m >= f.x.0 && m <= f.x.1).map(|m| view! {
                                <line class="mark" x1=f.px(m) x2=f.px(m) y1=TOP y2=HEIGHT - BOTTOM>
                                    <title>{format!("{marks_label} (after step {m})")}</title>
                                </line>
                            }).collect_view()}
                            // Drawn last to first, so the first series (the total) lies on top.
                            {all.iter().rev().map(|s| {
                                let single = s.points.len() == 1;
                                let (x, y) = s.points.first().copied().unwrap_or_default();
                                view! {
                                    <path class=format!("line {}", s.class) d=f.path(&s.points) />
                                    {single.then(|| view! { <circle class=format!("dot {}", s.class) cx=f.px(x) cy=f.py(y) r="3" /> })}
                                }
                            }).collect_view()}
                        </svg>
                    }.into_any(),
                }
            }}
        </figure>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.13, 0.87, 4), vec![0.2, 0.4, 0.6000000000000001, 0.8]);
        let small = nice_ticks(1e-5, 3e-4, 4);
        assert!(small.len() >= 3 && small.windows(2).all(|w| w[0] < w[1]), "{small:?}");
        assert!(nice_ticks(f64::NAN, 1.0, 4).is_empty());
        assert!(!nice_ticks(3.0, 3.0, 4).is_empty(), "a flat series still gets ticks");
    }

    #[test]
    fn paths_map_data_into_the_plot_area_and_break_at_gaps() {
        let f = Frame { x: (1.0, 3.0), y: (0.0, 2.0) };
        assert_eq!(f.px(1.0), LEFT);
        assert_eq!(f.px(3.0), WIDTH - RIGHT);
        assert_eq!(f.py(0.0), HEIGHT - BOTTOM);
        assert_eq!(f.py(2.0), TOP);
        let path = f.path(&[(1.0, 0.0), (2.0, f64::NAN), (3.0, 2.0)]);
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert!(!path.contains('L'));
        assert_eq!(f.path(&[(1.0, 0.0), (3.0, 2.0)]).matches('L').count(), 1);
    }

    #[test]
    fn frame_spans_all_series_and_labels_are_short() {
        let series = vec![
            Series { label: "a", class: "a", points: vec![(1.0, 5.0), (2.0, 3.0)] },
            Series { label: "b", class: "b", points: vec![(1.0, 1.0), (4.0, 2.0)] },
        ];
        let (f, xs, ys) = frame(&series).unwrap();
        assert_eq!(f.x, (1.0, 4.0));
        assert!(f.y.0 <= 1.0 && f.y.1 >= 5.0);
        assert!(!xs.is_empty() && !ys.is_empty());
        assert!(frame(&[]).is_none());
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(3e-4), "3e-4");
        assert_eq!(tick_label(1200.0), "1200");
    }

    #[test]
    fn the_axes_cover_every_point_with_whole_steps_and_distinct_labels() {
        // Every point within the gridlines: none above the top one.
        let series = vec![Series { label: "a", class: "a", points: vec![(1.0, 0.87), (2.0, 1.93), (3.0, 1.41)] }];
        let (f, xs, ys) = frame(&series).unwrap();
        assert!(*ys.first().unwrap() <= 0.87 && *ys.last().unwrap() >= 1.93, "{ys:?}");
        assert_eq!((f.y.0, f.y.1), (*ys.first().unwrap(), *ys.last().unwrap()));
        assert_eq!(xs, vec![1.0, 2.0, 3.0], "whole steps only");
        // One point: an axis from 0, not 0.9–1.1.
        let one = vec![Series { label: "a", class: "a", points: vec![(1.0, 1.0)] }];
        let (f, xs, _) = frame(&one).unwrap();
        assert_eq!(f.y.0, 0.0);
        assert!(f.y.1 >= 1.5);
        assert_eq!(xs, vec![1.0]);
        // A learning rate warming up to 3e-4: labels that differ.
        let labels = tick_labels(&covering_ticks(2.9e-4, 3.0e-4, 4));
        assert!(labels.windows(2).all(|w| w[0] != w[1]), "{labels:?}");
        assert_eq!(tick_labels(&[0.0, 0.5, 1.0]), ["0", "0.5", "1"]);
    }
}
