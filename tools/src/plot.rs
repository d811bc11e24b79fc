//! Latency plots: the percentile distribution of an HDR histogram as an SVG (plotters),
//! latency on a log scale against "percentile" on the usual 1 / (1 - q) log scale, so the
//! tail (p99, p99.9, p99.99) is as readable as the median.

use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Writes `histogram` (nanoseconds) as a percentile plot to `path` (SVG).
pub fn latency_svg(histogram: &Histogram<u64>, title: &str, path: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!histogram.is_empty(), "no latency samples to plot");
    // x: -log10(1 - q), so 0 = p0, 1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99.
    let points: Vec<(f64, f64)> = (0..=400)
        .map(|i| {
            let x = f64::from(i) / 100.0;
            let q = 1.0 - 10f64.powf(-x);
            (x, histogram.value_at_quantile(q).max(1) as f64 / 1e3)
        })
        .collect();
    let y_max = points.iter().map(|p| p.1).fold(1.0, f64::max) * 1.5;
    let y_min = points.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(0.1) / 1.5;
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..4f64, (y_min..y_max).log_scale())
        .context("chart")?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(5)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            4 => "p99.99".into(),
            _ => String::new(),
        })
        .draw()
        .context("mesh")?;
    chart.draw_series(LineSeries::new(points, &BLUE)).context("series")?;
    root.present().context("writing the SVG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_the_curve() {
        let mut h = Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).unwrap();
        for v in 1..10_000u64 {
            h.record(v * 1_000).unwrap();
        }
        let path = std::env::temp_dir().join(format!("tickgate-plot-{}.svg", std::process::id()));
        latency_svg(&h, "test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline") && svg.contains("p99.9"));
        std::fs::remove_file(&path).unwrap();
        let empty = Histogram::<u64>::new(3).unwrap();
        assert!(latency_svg(&empty, "none", &path).is_err());
    }
}
