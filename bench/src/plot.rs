//! The latency percentile plot (PNG).
//!
//! The x axis is the percentile spectrum: `1/(1-p)` on a log scale, so 90 %, 99 %, 99.9 % and
//! 99.99 % are evenly spaced and the tail gets as much room as the median. The y axis is latency
//! in microseconds, also log-scaled, because a stall is orders of magnitude above the median.
//!
//! Text is drawn with a TrueType font read from the system at run time (no font is compiled in);
//! Debian's `fonts-dejavu-core` provides one.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::BenchError;
use crate::latency::{LatencySummary, SpectrumPoint};

/// Fonts tried in order; the first readable one is used for all text.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Image size in pixels.
const WIDTH_PX: u32 = 1000;
const HEIGHT_PX: u32 = 600;
/// The x axis reaches at least the 99.99th percentile.
const X_AXIS_MIN_REACH: f64 = 10_000.0;
/// Series colours (matplotlib's tab10), cycled: distinct up to ten series.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line on the plot.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Its summary (the sample count places the maximum on the x axis).
    pub summary: &'a LatencySummary,
    /// Its spectrum.
    pub spectrum: &'a [SpectrumPoint],
}

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|path| std::fs::read(path).ok())
                .ok_or_else(|| format!("no TrueType font found in {FONT_PATHS:?} (apt-get install fonts-dejavu-core)"))?;
            // plotters keeps registered fonts for the life of the process; one font, leaked once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| "the font file is not a valid TrueType font".to_string())
        })
        .clone()
}

/// `1/(1-q)`; the maximum (q = 1) sits at the sample count, where a spectrum of that many
/// samples ends.
fn spectrum_x(quantile: f64, count: u64) -> f64 {
    if quantile >= 1.0 {
        (count as f64).max(1.0)
    } else {
        1.0 / (1.0 - quantile)
    }
}

/// Axis label of `1/(1-p)` as a percentile, with as many decimals as the decade needs
/// (x = 10^k is 100 - 10^(2-k) %: k - 2 decimals).
fn percentile_label(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 1.0 / x);
    let decimals = std::iter::successors(Some(1_000.0f64), |d| Some(d * 10.0))
        .take(12)
        .take_while(|d| *d <= x * 1.001)
        .count();
    let text = format!("{percentile:.decimals$}");
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}%")
}

/// Draws `series` to a PNG at `path`.
pub fn write_percentile_plot(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), BenchError> {
    let fail = |reason: String| BenchError::Plot { path: path.into(), reason };
    register_font().map_err(fail)?;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.spectrum
                .iter()
                .map(|p| (spectrum_x(p.quantile, s.summary.count), p.latency_us.max(0.001)))
                .collect()
        })
        .collect();
    let all = points.iter().flatten();
    let x_reach = all.clone().map(|p| p.0).fold(X_AXIS_MIN_REACH, f64::max);
    let x_max = 10f64.powf(x_reach.log10().ceil());
    let y_max = all.clone().map(|p| p.1).fold(1.0, f64::max) * 2.0;
    let y_min = all.map(|p| p.1).fold(f64::MAX, f64::min).min(y_max / 4.0) / 2.0;

    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    // One labelled tick per decade: 0 %, 90 %, 99 %, ... (x_max < 1e20: the sample count is a u64).
    let key_points: Vec<f64> =
        std::iter::successors(Some(1.0f64), |x| Some(x * 10.0)).take_while(|x| *x <= x_max * 1.001).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        // Room for the last percentile label, which is centred on the right edge.
        .margin_right(50)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale().with_key_points(key_points), (y_min..y_max).log_scale())
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (index, (s, line)) in series.iter().zip(points).enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(line, colour.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(s.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencyHistogram;

    #[test]
    fn axis_maps_percentiles_to_powers_of_ten() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10_000.0), "99.99%");
        assert_eq!(percentile_label(1e8), "99.999999%");
        assert!((spectrum_x(0.99, 5) - 100.0).abs() < 1e-9);
        assert_eq!(spectrum_x(1.0, 5000), 5000.0);
        assert_eq!(spectrum_x(1.0, 0), 1.0);
    }

    #[test]
    fn writes_a_png() {
        let mut h = LatencyHistogram::new();
        for i in 0..10_000u64 {
            h.record_ns(100_000 + i * 10);
        }
        let summary = h.summary();
        let spectrum = h.spectrum();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        let series = [Series { name: "produce ack", summary: &summary, spectrum: &spectrum }];
        write_percentile_plot(&path, "test", &series).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5_000, "a drawn plot, not an empty image: {} bytes", bytes.len());
    }
}
