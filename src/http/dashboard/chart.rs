//! Time-series charts as SVG (plotters): a bar per window and series, side by side, axes
//! with the unit and with ticks on whole hours or days of the time zone, and a legend. Values
//! become `f64` here, for pixel positions only.

use chrono::{DateTime, TimeZone as _, Timelike as _};
use chrono_tz::Tz;
use plotters::prelude::*;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// One series of a chart: a value per window.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<Point>,
}

/// A window's value; its bounds in epoch seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) value: Decimal,
}

/// What a chart shows and how its axes read.
pub(crate) struct ChartSpec<'a> {
    pub(crate) title: &'a str,
    /// The unit of the values (`events`, `calls`…), the y axis' caption.
    pub(crate) unit: &'a str,
    pub(crate) tz: Tz,
    /// The x axis' range, epoch seconds.
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// A series per customer (when `by_customer`) and group of a meter's series, largest first.
pub(crate) fn lines(series: &crate::http::usage::MeterSeries, by_customer: bool) -> Vec<Series> {
    let mut lines: Vec<(Series, Decimal)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for row in &series.rows {
        let mut parts: Vec<String> = Vec::new();
        if by_customer {
            parts.push(row.customer.clone());
        }
        for key in &series.group_by {
            let value = row.group.get(key).and_then(|v| v.as_str()).unwrap_or("");
            parts.push(format!("{key}={value}"));
        }
        let name = if parts.is_empty() {
            series.meter.clone()
        } else {
            parts.join(" ")
        };
        let point = Point {
            start: row.window_start.timestamp(),
            end: row.window_end.timestamp(),
            value: row.value,
        };
        let at = *index.entry(name.clone()).or_insert_with(|| {
            lines.push((
                Series {
                    name,
                    points: Vec::new(),
                },
                Decimal::ZERO,
            ));
            lines.len() - 1
        });
        let (line, total) = &mut lines[at];
        line.points.push(point);
        *total += row.value;
    }
    lines.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.name.cmp(&b.0.name)));
    lines.into_iter().map(|(line, _)| line).collect()
}

/// Lines beyond this many are left out of a chart (the table has them all).
pub(crate) const MAX_SERIES: usize = 8;

/// The chart as an SVG document; a note in SVG when it cannot be drawn.
pub(crate) fn time_series(spec: &ChartSpec<'_>, series: &[Series]) -> String {
    let mut svg = String::new();
    if let Err(e) = draw(&mut svg, spec, series) {
        tracing::warn!(error = %e, "a chart could not be drawn");
        return format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"320\" height=\"40\"><text x=\"4\" \
             y=\"24\">chart unavailable: {}</text></svg>",
            maud::html! { (e) }.into_string()
        );
    }
    // Scales with the page's width (CSS sets width 100%, height auto).
    svg.replacen(
        "<svg ",
        "<svg role=\"img\" preserveAspectRatio=\"xMinYMin meet\" ",
        1,
    )
}

fn draw(svg: &mut String, spec: &ChartSpec<'_>, series: &[Series]) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (860, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let shown = &series[..series.len().min(MAX_SERIES)];
    let top = shown
        .iter()
        .flat_map(|s| s.points.iter().map(|p| pixels(p.value)))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let to = spec.to.max(spec.from + 1);
    let ticks = ticks(spec.from, to, spec.tz);
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, ("sans-serif", 24))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(
            (spec.from..to).with_key_points(ticks.instants.clone()),
            0.0..top,
        )
        .map_err(fail)?;
    let tz = spec.tz;
    let x_label = |x: &i64| {
        DateTime::from_timestamp(*x, 0)
            .map(|t| t.with_timezone(&tz).format(ticks.format).to_string())
            .unwrap_or_default()
    };
    let y_label = |y: &f64| group_float(*y);
    chart
        .configure_mesh()
        .x_labels(ticks.instants.len().max(2))
        .y_labels(6)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(format!("time ({})", spec.tz.name()))
        .y_desc(spec.unit)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(fail)?;
    let count = shown.len() as i64;
    for (i, line) in shown.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let bars = line.points.iter().map(|p| {
            // The window split in `count` slots, this series in slot `i`.
            let width = (p.end - p.start).max(1);
            let left = p.start + width * i as i64 / count;
            let right = (p.start + width * (i as i64 + 1) / count).max(left + 1);
            Rectangle::new([(left, 0.0), (right, pixels(p.value))], color.filled())
        });
        chart
            .draw_series(bars)
            .map_err(fail)?
            .label(line.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    if !shown.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(fail)?;
    }
    root.present().map_err(fail)?;
    Ok(())
}

/// A value as a bar's height.
fn pixels(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(0.0)
}

/// The x axis' ticks: instants on whole local hours or days, and their label format.
struct Ticks {
    instants: Vec<i64>,
    format: &'static str,
}

/// At most about 8 ticks in `[from, to]`, each on a whole local hour (every 1, 3, 6 or 12) or
/// local midnight (every 1, 2, 7 or 14 days, or 30).
fn ticks(from: i64, to: i64, tz: Tz) -> Ticks {
    const HOUR: i64 = 3600;
    let span = to - from;
    let steps_h = [1, 3, 6, 12, 24, 48, 168, 336, 720];
    let step_h = steps_h
        .iter()
        .copied()
        .find(|h| span / (h * HOUR) <= 8)
        .unwrap_or(720);
    let days = step_h >= 24;
    let Some(start) = DateTime::from_timestamp(from, 0) else {
        return Ticks {
            instants: vec![],
            format: "%m-%d",
        };
    };
    let local = start.with_timezone(&tz).naive_local();
    let mut at = if days {
        local.date().and_hms_opt(0, 0, 0).unwrap_or(local)
    } else {
        let hour = local.hour() - local.hour() % step_h as u32;
        local.date().and_hms_opt(hour, 0, 0).unwrap_or(local)
    };
    let mut instants = Vec::new();
    while instants.len() < 32 {
        if let Some(instant) = tz.from_local_datetime(&at).earliest() {
            let t = instant.timestamp();
            if t > to {
                break;
            }
            if t >= from {
                instants.push(t);
            }
        }
        at += chrono::TimeDelta::hours(step_h);
    }
    Ticks {
        instants,
        format: if days { "%m-%d" } else { "%m-%d %H:%M" },
    }
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// An axis label: whole numbers grouped by thousands, small ones with two decimals.
fn group_float(value: f64) -> String {
    if value.abs() >= 10.0 || value == value.trunc() {
        let whole = Decimal::from_f64_retain(value.round()).unwrap_or_default();
        super::view::number(whole.trunc())
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_has_its_title_axes_bars_and_legend() {
        let spec = ChartSpec {
            title: "Calls per hour",
            unit: "calls",
            tz: chrono_tz::Europe::Paris,
            from: 1_700_000_000,
            to: 1_700_036_000,
        };
        let point = |start: i64, value: u32| Point {
            start,
            end: start + 3600,
            value: Decimal::from(value),
        };
        let series = [Series {
            name: "model=gpt".into(),
            points: vec![point(1_700_000_000, 1200), point(1_700_003_600, 5)],
        }];
        let svg = time_series(&spec, &series);
        for text in [
            "<svg",
            "Calls per hour",
            "calls",
            "Europe/Paris",
            "model=gpt",
            "1,000",
            "<rect",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
    }

    #[test]
    fn ticks_fall_on_whole_local_hours_or_midnights() {
        let paris = chrono_tz::Europe::Paris;
        // Ten hours: every 3 hours, on Paris's whole hours.
        let hourly = ticks(1_700_000_000, 1_700_036_000, paris);
        assert_eq!(hourly.format, "%m-%d %H:%M");
        assert!(hourly.instants.len() >= 3, "{:?}", hourly.instants);
        for t in &hourly.instants {
            let local = DateTime::from_timestamp(*t, 0)
                .unwrap()
                .with_timezone(&paris);
            assert_eq!((local.minute(), local.hour() % 3), (0, 0), "{local}");
        }
        // A month: local midnights.
        let daily = ticks(1_700_000_000, 1_700_000_000 + 30 * 86_400, paris);
        assert_eq!(daily.format, "%m-%d");
        assert!(daily.instants.len() >= 4, "{:?}", daily.instants);
        for t in &daily.instants {
            let local = DateTime::from_timestamp(*t, 0)
                .unwrap()
                .with_timezone(&paris);
            assert_eq!((local.hour(), local.minute()), (0, 0), "{local}");
        }
    }
}
