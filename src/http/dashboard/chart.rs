//! Time-series charts as SVG (plotters): axes with the time zone and the unit, a line per
//! series and a legend. Values become `f64` here, for pixel positions only.

use chrono::DateTime;
use chrono_tz::Tz;
use plotters::prelude::*;
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

/// One line of a chart.
pub(crate) struct Series {
    pub(crate) name: String,
    /// (window start in epoch seconds, value).
    pub(crate) points: Vec<(i64, Decimal)>,
}

/// What a chart shows and how its axes read.
pub(crate) struct ChartSpec<'a> {
    pub(crate) title: &'a str,
    /// The unit of the values (`events`, `calls`…), the y axis' caption.
    pub(crate) unit: &'a str,
    pub(crate) tz: Tz,
    /// The x axis' label format (`%m-%d %H:%M`).
    pub(crate) time_format: &'a str,
    /// The x axis' range, epoch seconds.
    pub(crate) from: i64,
    pub(crate) to: i64,
}

/// A line per customer (when `by_customer`) and group of a meter's series, largest first.
pub(crate) fn lines(series: &crate::http::usage::MeterSeries, by_customer: bool) -> Vec<Series> {
    let mut lines: Vec<(Series, Decimal)> = Vec::new();
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
        let point = (row.window_start.timestamp(), row.value);
        match lines.iter_mut().find(|(line, _)| line.name == name) {
            Some((line, total)) => {
                line.points.push(point);
                *total += row.value;
            }
            None => lines.push((
                Series {
                    name,
                    points: vec![point],
                },
                row.value,
            )),
        }
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
    let values = |s: &Series| {
        s.points
            .iter()
            .map(|(_, v)| v.to_f64().unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let top = series
        .iter()
        .flat_map(values)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let to = spec.to.max(spec.from + 1);
    let mut chart = ChartBuilder::on(&root)
        .caption(spec.title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(spec.from..to, 0.0..top)
        .map_err(fail)?;
    let tz = spec.tz;
    let x_label = |x: &i64| {
        DateTime::from_timestamp(*x, 0)
            .map(|t| t.with_timezone(&tz).format(spec.time_format).to_string())
            .unwrap_or_default()
    };
    let y_label = |y: &f64| group_float(*y);
    let x_desc = format!("time ({})", spec.tz.name());
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(6)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(x_desc)
        .y_desc(spec.unit)
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(fail)?;
    for (i, line) in series.iter().take(MAX_SERIES).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(i64, f64)> = line
            .points
            .iter()
            .map(|(t, v)| (*t, v.to_f64().unwrap_or(0.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(2))
            .map_err(fail)?
            .label(line.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
            });
    }
    if !series.is_empty() {
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
    fn a_chart_has_its_title_axes_and_legend() {
        let spec = ChartSpec {
            title: "Calls per hour",
            unit: "calls",
            tz: chrono_tz::Europe::Paris,
            time_format: "%H:%M",
            from: 1_700_000_000,
            to: 1_700_036_000,
        };
        let series = [Series {
            name: "model=gpt".into(),
            points: vec![
                (1_700_000_000, Decimal::from(1200)),
                (1_700_003_600, Decimal::from(5)),
            ],
        }];
        let svg = time_series(&spec, &series);
        for text in [
            "<svg",
            "Calls per hour",
            "calls",
            "Europe/Paris",
            "model=gpt",
            "1,000",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
    }
}
