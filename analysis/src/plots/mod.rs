//! Figures with `plotters`, each written as SVG and PNG (text drawn with a bundled font, so no
//! system font library is needed). Files are written atomically (`supermask_core::fsio`).

use anyhow::Result;
use plotters::{
    coord::{types::RangedCoordf64, Shift},
    prelude::*,
    style::FontStyle,
};
use std::path::{Path, PathBuf};

/// Registers the bundled font under the family names plotters asks for.
fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The font is a valid TTF shipped by epaint_default_fonts; a failure would leave
            // text undrawn, which the PNG tests would show.
            let _ = plotters::style::register_font(
                family,
                FontStyle::Normal,
                epaint_default_fonts::UBUNTU_LIGHT,
            );
        }
    });
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing: {e}")
}

type Area<'a, DB> = DrawingArea<DB, Shift>;

/// Writes one figure as `<stem>.svg` and `<stem>.png` with the drawing function `draw`, which
/// is told whether it draws the SVG (large matrices are binned there to keep the file small).
macro_rules! save_both {
    ($stem:expr, $size:expr, |$root:ident, $svg:ident| $body:expr) => {{
        fonts();
        let stem: &Path = $stem;
        let mut written = Vec::new();
        for ext in ["svg", "png"] {
            // Appended, not `with_extension`: a stem like `report-keep-0.5` keeps its `.5`.
            let mut path = stem.as_os_str().to_owned();
            path.push(format!(".{ext}"));
            let path = std::path::PathBuf::from(path);
            supermask_core::fsio::write_atomic_with(&path, |tmp| {
                let $svg = ext == "svg";
                if $svg {
                    let $root = SVGBackend::new(&tmp, $size).into_drawing_area();
                    $root.fill(&WHITE).map_err(err)?;
                    $body?;
                    $root.present().map_err(err)?;
                } else {
                    let $root = BitMapBackend::new(&tmp, $size).into_drawing_area();
                    $root.fill(&WHITE).map_err(err)?;
                    $body?;
                    $root.present().map_err(err)?;
                }
                Ok(())
            })?;
            written.push(path);
        }
        Ok(written)
    }};
}

/// One curve with its band: mean and 5%/95% quantiles per epoch.
#[derive(Clone, Debug)]
pub struct BandSeries {
    /// Legend label.
    pub label: String,
    /// x values (epochs).
    pub x: Vec<f64>,
    /// Mean per x.
    pub mean: Vec<f64>,
    /// Lower band per x.
    pub lo: Vec<f64>,
    /// Upper band per x.
    pub hi: Vec<f64>,
}

mod matrix;
use matrix::draw_matrix;
pub use matrix::{matrix_chart, Matrix};

fn padded_range(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = (hi - lo).max(1e-6);
    (lo - 0.05 * span)..(hi + 0.05 * span)
}

/// Curves over epochs with shaded 5-95% bands (Figures 4-6).
pub fn band_chart(
    stem: &Path,
    title: &str,
    y_label: &str,
    series: &[BandSeries],
) -> Result<Vec<PathBuf>> {
    anyhow::ensure!(!series.is_empty(), "no series to plot for {title}");
    let xmax = series
        .iter()
        .flat_map(|s| s.x.iter().copied())
        .fold(1.0, f64::max);
    let lo = series
        .iter()
        .flat_map(|s| s.lo.iter().copied())
        .fold(f64::INFINITY, f64::min);
    let hi = series
        .iter()
        .flat_map(|s| s.hi.iter().copied())
        .fold(f64::NEG_INFINITY, f64::max);
    save_both!(stem, (900, 560), |root, _svg| draw_bands(
        &root,
        title,
        y_label,
        series,
        xmax,
        padded_range(lo, hi)
    ))
}

fn draw_bands<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    y_label: &str,
    series: &[BandSeries],
    xmax: f64,
    y: std::ops::Range<f64>,
) -> Result<()> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut poly: Vec<(f64, f64)> = s.x.iter().copied().zip(s.hi.iter().copied()).collect();
        poly.extend(s.x.iter().copied().zip(s.lo.iter().copied()).rev());
        chart
            .draw_series(std::iter::once(Polygon::new(
                poly,
                color.mix(0.18).filled(),
            )))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(
                s.x.iter().copied().zip(s.mean.iter().copied()),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    // The legend goes in the corner the curves leave free: below them when they end high.
    let ends: Vec<f64> = series
        .iter()
        .filter_map(|s| s.mean.last().copied())
        .collect();
    let end = ends.iter().sum::<f64>() / ends.len().max(1) as f64;
    let (y0, y1) = (chart.y_range().start, chart.y_range().end);
    let position = if end > (y0 + y1) / 2.0 {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    };
    legend(&mut chart, position)
}

/// The mask-value colors: -1 red, 0 light gray (white in pattern plots), +1 green.
const NEG: RGBColor = RGBColor(214, 39, 40);
const ZERO: RGBColor = RGBColor(220, 220, 220);
const POS: RGBColor = RGBColor(44, 160, 44);

/// One horizontal bar of mask shares: `label` and the shares of -1, 0, +1.
#[derive(Clone, Debug)]
pub struct SharesBar {
    /// Text left of the bar (`group / layer`).
    pub label: String,
    /// Shares of -1, 0 and +1 (summing to 1).
    pub shares: [f64; 3],
}

/// Stacked horizontal bars of the -1/0/+1 shares per layer (Figures 2a, 7).
pub fn shares_chart(stem: &Path, title: &str, bars: &[SharesBar]) -> Result<Vec<PathBuf>> {
    let h = 90 + 26 * bars.len() as u32;
    save_both!(stem, (1000, h), |root, _svg| draw_shares(
        &root, title, bars
    ))
}

fn draw_shares<DB: DrawingBackend>(root: &Area<DB>, title: &str, bars: &[SharesBar]) -> Result<()> {
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .build_cartesian_2d(-0.62f64..1.0, n..0.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .y_labels(0)
        .x_labels(6)
        .x_label_formatter(&|x| {
            if *x >= -1e-9 {
                format!("{:.0}%", x * 100.0)
            } else {
                String::new()
            }
        })
        .x_desc("share of the layer's weights: -1 (red), 0 (gray), +1 (green)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let (y0, y1) = (i as f64 + 0.15, i as f64 + 0.85);
        let mut x = 0.0;
        for (share, color) in b.shares.iter().zip([NEG, ZERO, POS]) {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y0), (x + share, y1)],
                    color.filled(),
                )))
                .map_err(err)?;
            x += share;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                b.label.clone(),
                (-0.6, i as f64 + 0.25),
                ("sans-serif", 14),
            )))
            .map_err(err)?;
    }
    Ok(())
}

/// One bar of a grouped bar chart: value with an interval.
#[derive(Clone, Debug)]
pub struct Bar {
    /// Category (x group), e.g. the layer.
    pub category: String,
    /// Series (legend), e.g. the run group.
    pub series: String,
    /// Bar height.
    pub value: f64,
    /// Whisker from `interval.0` to `interval.1`.
    pub interval: (f64, f64),
}

/// Grouped vertical bars with whiskers, y from 0 to 1 (Figures 2b, 8).
pub fn bar_chart(stem: &Path, title: &str, y_label: &str, bars: &[Bar]) -> Result<Vec<PathBuf>> {
    save_both!(stem, (1000, 560), |root, _svg| draw_bars(
        &root, title, y_label, bars
    ))
}

fn unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in items {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn draw_bars<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    y_label: &str,
    bars: &[Bar],
) -> Result<()> {
    let cats = unique(bars.iter().map(|b| b.category.clone()));
    let series = unique(bars.iter().map(|b| b.series.clone()));
    let width = 1.0 / (series.len() as f64 + 1.0);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(10)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..cats.len() as f64, -0.08f64..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_label)
        .y_label_formatter(&|y| {
            if *y >= -1e-9 {
                format!("{:.0}%", y * 100.0)
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(err)?;
    for (ci, c) in cats.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Text::new(
                c.clone(),
                (ci as f64 + 0.4, -0.03),
                ("sans-serif", 15),
            )))
            .map_err(err)?;
    }
    for (si, s) in series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let mine: Vec<&Bar> = bars.iter().filter(|b| &b.series == s).collect();
        let x0 = |b: &Bar| {
            let ci = cats.iter().position(|c| c == &b.category).unwrap_or(0);
            ci as f64 + width * (si as f64 + 0.5)
        };
        chart
            .draw_series(mine.iter().map(|b| {
                Rectangle::new(
                    [(x0(b), 0.0), (x0(b) + width * 0.9, b.value)],
                    color.filled(),
                )
            }))
            .map_err(err)?
            .label(s.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(mine.iter().map(|b| {
                let xm = x0(b) + width * 0.45;
                PathElement::new(
                    vec![(xm, b.interval.0), (xm, b.interval.1)],
                    BLACK.stroke_width(1),
                )
            }))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

type Chart2d<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series legend, upper right.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart2d<'a, DB>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(err)
}

/// Figure 1: a flattened input (one column per pixel, yellow where blank, dark where the digit
/// is) above a first-layer mask whose columns are the same pixels.
pub fn input_and_mask_chart(
    stem: &Path,
    title: &str,
    pixels: &[f32],
    rows: usize,
    mask: &[i8],
) -> Result<Vec<PathBuf>> {
    let cols = pixels.len();
    anyhow::ensure!(mask.len() == rows * cols, "mask is not {rows} x {cols}");
    let scale = (1200.0 / cols as f64).clamp(0.25, 8.0);
    let w = (cols as f64 * scale) as u32 + 40;
    let h = (rows as f64 * scale) as u32 + 170;
    save_both!(stem, (w, h), |root, svg| {
        let area = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let (top, bottom) = area.split_vertically(90);
        let top = top.margin(6, 6, 6, 6);
        let mut chart = ChartBuilder::on(&top)
            .build_cartesian_2d(0.0..cols as f64, 0.0..1.0)
            .map_err(err)?;
        // Blank pixels yellow, ink from mauve to dark purple; runs of one color are one
        // rectangle.
        let color = |p: f32| {
            let p = p.clamp(0.0, 1.0) as f64;
            if p <= 0.0 {
                RGBColor(253, 231, 37)
            } else {
                let t = 1.0 - p;
                RGBColor(
                    (68.0 + 150.0 * t) as u8,
                    (1.0 + 120.0 * t) as u8,
                    (84.0 + 20.0 * t) as u8,
                )
            }
        };
        let mut strips = Vec::new();
        let mut start = 0;
        for c in 1..=cols {
            if c == cols || color(pixels[c]) != color(pixels[start]) {
                strips.push(Rectangle::new(
                    [(start as f64, 0.0), (c as f64, 1.0)],
                    color(pixels[start]).filled(),
                ));
                start = c;
            }
        }
        chart.draw_series(strips).map_err(err)?;
        let bottom = bottom.margin(6, 6, 6, 6);
        draw_matrix(&bottom, rows, cols, &Matrix::Pattern(mask), svg, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width and height from a PNG's IHDR chunk (bytes 16..24, big-endian).
    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is not a PNG",
            path.display()
        );
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn figures_are_written_as_svg_and_png() {
        let dir = std::env::temp_dir().join(format!("supermask-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = BandSeries {
            label: "a".into(),
            x: vec![1.0, 2.0, 3.0],
            mean: vec![0.5, 0.6, 0.7],
            lo: vec![0.4, 0.5, 0.6],
            hi: vec![0.6, 0.7, 0.8],
        };
        // Stems with dots (a grid value as a label) keep them, so two values give two figures.
        let other = band_chart(
            &dir.join("bands-keep-0.25"),
            "t",
            "y",
            std::slice::from_ref(&s),
        )
        .unwrap();
        let files = band_chart(&dir.join("bands-keep-0.5"), "t", "y", &[s]).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0], dir.join("bands-keep-0.5.svg"));
        assert_eq!(other[1], dir.join("bands-keep-0.25.png"));
        assert!(other.iter().chain(&files).all(|f| f.is_file()));
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("epoch"),
            "SVG has the axis label"
        );
        assert_eq!(png_size(&files[1]), (900, 560));
        let mask = [1i8, 0, -1, 0, 0, 1];
        let files = matrix_chart(&dir.join("pattern"), "p", 2, 3, Matrix::Pattern(&mask)).unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        // Three non-zero cells: two green, one red.
        assert_eq!(
            svg.matches("#2CA02C").count() + svg.matches("#2ca02c").count(),
            2,
            "{svg}"
        );
        assert!(
            svg.contains("column (input)") && svg.contains("row (output)"),
            "axes"
        );
        // A heat map has the axes and a colour bar with its value axis up to `max`.
        let heat = [0u32, 1, 2, 3, 4, 5];
        let files = matrix_chart(
            &dir.join("heat"),
            "h",
            2,
            3,
            Matrix::Heat {
                values: &heat,
                max: 5,
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(
            svg.contains("row (output)") && svg.contains("\nvalue\n</text>"),
            "{svg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
