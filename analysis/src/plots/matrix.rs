//! Matrix plots (Figures 3 and 9): a heat map (with a colour bar) or a ternary mask pattern,
//! one cell per entry, with the rows and columns as axes.

use super::*;

/// A matrix to draw cell by cell.
#[derive(Clone, Debug)]
pub enum Matrix<'a> {
    /// Values in `[0, max]` drawn from white (0) to black (max), e.g. a sum of |mask| over runs.
    Heat {
        /// Row-major values.
        values: &'a [u32],
        /// The value drawn black.
        max: u32,
    },
    /// A ternary mask: +1 green, -1 red, 0 white (Figure 9).
    Pattern(&'a [i8]),
}

/// A matrix plot (Figures 3 and 9): one cell per entry in the PNG; the SVG bins a heat map to
/// at most about 2,500 cells and draws only the non-zero cells of a pattern (binned beyond that).
pub fn matrix_chart(
    stem: &Path,
    title: &str,
    rows: usize,
    cols: usize,
    m: Matrix,
) -> Result<Vec<PathBuf>> {
    let scale = (1200.0 / cols as f64).clamp(0.25, 8.0);
    let bar = if matches!(m, Matrix::Heat { .. }) {
        COLOUR_BAR
    } else {
        0
    };
    let w = (cols as f64 * scale) as u32 + 40 + AXIS_Y + bar;
    let h = (rows as f64 * scale) as u32 + 70 + AXIS_X;
    save_both!(stem, (w, h), |root, svg| {
        let area = root.titled(title, ("sans-serif", 20)).map_err(err)?;
        let area = area.margin(6, 6, 6, 6);
        if let Matrix::Heat { max, .. } = m {
            let (main, right) = area.split_horizontally(area.dim_in_pixel().0 - bar);
            draw_matrix(&main, rows, cols, &m, svg, true)?;
            colour_bar(&right, max)
        } else {
            draw_matrix(&area, rows, cols, &m, svg, true)
        }
    })
}

/// Pixels for the axes' labels and descriptions, and for a heat map's colour bar.
const AXIS_X: u32 = 40;
const AXIS_Y: u32 = 60;
const COLOUR_BAR: u32 = 90;

/// The grey of a heat-map value `v` in `[0, 1]`: white at 0, black at 1.
fn heat_colour(v: f64) -> RGBColor {
    let g = (255.0 * (1.0 - v.clamp(0.0, 1.0))) as u8;
    RGBColor(g, g, g)
}

/// A vertical colour bar from 0 (white, bottom) to `max` (black, top) with a value axis.
fn colour_bar<DB: DrawingBackend>(area: &Area<DB>, max: u32) -> Result<()> {
    let top = f64::from(max.max(1));
    let mut chart = ChartBuilder::on(area)
        .margin_left(10)
        .margin_bottom(AXIS_X)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..1.0, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_desc("value")
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    let steps = 64;
    chart
        .draw_series((0..steps).map(|i| {
            let (a, b) = (i as f64 / steps as f64, (i + 1) as f64 / steps as f64);
            Rectangle::new(
                [(0.0, a * top), (1.0, b * top)],
                heat_colour((a + b) / 2.0).filled(),
            )
        }))
        .map_err(err)?;
    chart
        .plotting_area()
        .draw(&Rectangle::new(
            [(0.0, 0.0), (1.0, top)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    Ok(())
}

/// Draws `m` into `area`; with `axes`, row and column indices and their descriptions around it
/// (Figure 1 draws its mask without, under the input strip whose columns it shares).
pub(super) fn draw_matrix<DB: DrawingBackend>(
    area: &Area<DB>,
    rows: usize,
    cols: usize,
    m: &Matrix,
    svg: bool,
    axes: bool,
) -> Result<()> {
    let mut builder = ChartBuilder::on(area);
    if axes {
        builder.x_label_area_size(AXIS_X).y_label_area_size(AXIS_Y);
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..cols as f64, rows as f64..0.0)
        .map_err(err)?;
    if axes {
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(8)
            .y_labels(6)
            .x_label_formatter(&|v| format!("{}", *v as usize))
            .y_label_formatter(&|v| format!("{}", *v as usize))
            .x_desc("column (input)")
            .y_desc("row (output)")
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(err)?;
    }
    match m {
        Matrix::Heat { values, max } => {
            anyhow::ensure!(
                values.len() == rows * cols,
                "heat map is not {rows} x {cols}"
            );
            let max = (*max).max(1) as f64;
            // Bin to at most ~10k cells in SVG; one cell per entry in the PNG.
            let b = if svg {
                ((rows * cols) as f64 / SVG_CELLS as f64)
                    .sqrt()
                    .ceil()
                    .max(1.0) as usize
            } else {
                1
            };
            let mut cells = Vec::new();
            for r0 in (0..rows).step_by(b) {
                for c0 in (0..cols).step_by(b) {
                    let (r1, c1) = ((r0 + b).min(rows), (c0 + b).min(cols));
                    let mut s = 0.0;
                    for r in r0..r1 {
                        for c in c0..c1 {
                            s += values[r * cols + c] as f64;
                        }
                    }
                    let v = s / ((r1 - r0) * (c1 - c0)) as f64 / max;
                    if v > 0.0 {
                        cells.push(Rectangle::new(
                            [(c0 as f64, r0 as f64), (c1 as f64, r1 as f64)],
                            heat_colour(v).filled(),
                        ));
                    }
                }
            }
            chart.draw_series(cells).map_err(err)?;
        }
        Matrix::Pattern(values) => {
            anyhow::ensure!(
                values.len() == rows * cols,
                "pattern is not {rows} x {cols}"
            );
            let nnz = values.iter().filter(|&&v| v != 0).count();
            if svg && nnz > SVG_CELLS {
                // b x b blocks: the majority sign, opacity by the share of kept entries.
                let b = ((rows * cols) as f64 / SVG_CELLS as f64).sqrt().ceil() as usize;
                let mut cells = Vec::new();
                for r0 in (0..rows).step_by(b) {
                    for c0 in (0..cols).step_by(b) {
                        let (r1, c1) = ((r0 + b).min(rows), (c0 + b).min(cols));
                        let (mut sum, mut kept) = (0i64, 0usize);
                        for r in r0..r1 {
                            for c in c0..c1 {
                                let v = values[r * cols + c];
                                sum += v as i64;
                                kept += (v != 0) as usize;
                            }
                        }
                        if kept > 0 {
                            let color = if sum >= 0 { POS } else { NEG };
                            let alpha = (kept as f64 / ((r1 - r0) * (c1 - c0)) as f64).sqrt();
                            cells.push(Rectangle::new(
                                [(c0 as f64, r0 as f64), (c1 as f64, r1 as f64)],
                                color.mix(alpha).filled(),
                            ));
                        }
                    }
                }
                chart.draw_series(cells).map_err(err)?;
                return frame(&chart, rows, cols);
            }
            let cells = values
                .iter()
                .enumerate()
                .filter(|(_, &v)| v != 0)
                .map(|(i, &v)| {
                    let (r, c) = ((i / cols) as f64, (i % cols) as f64);
                    Rectangle::new(
                        [(c, r), (c + 1.0, r + 1.0)],
                        if v > 0 { POS } else { NEG }.filled(),
                    )
                });
            chart.draw_series(cells).map_err(err)?;
        }
    }
    frame(&chart, rows, cols)
}

/// Cells an SVG matrix plot draws at most (about 90 bytes each).
const SVG_CELLS: usize = 2500;

fn frame<DB: DrawingBackend>(
    chart: &ChartContext<
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    rows: usize,
    cols: usize,
) -> Result<()> {
    chart
        .plotting_area()
        .draw(&Rectangle::new(
            [(0.0, 0.0), (cols as f64, rows as f64)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?;
    Ok(())
}
