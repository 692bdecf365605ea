//! PNG line charts of accuracies (plotters' bitmap backend, with an embedded DejaVu Sans font so
//! that text renders on machines without system fonts), written atomically.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// Width and height of every chart, in pixels.
pub const SIZE: (u32, u32) = (960, 640);
/// Font family name under which the embedded font is registered.
const FONT: &str = "sans-serif";
/// Line colors (matplotlib's first four, as in the reference's figures).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// One line of a chart: a label and (x, mean, error-bar half-height) points.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// A chart's texts.
pub struct Texts<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    /// The y values are shares such as accuracies: the axis stays within [0, 1].
    pub shares: bool,
}

/// Lines over categories: point x = i is drawn at category i, labeled `categories[i]`. The
/// lines are shifted slightly apart so that their error bars stay visible.
pub fn category_chart(
    path: &Path,
    texts: &Texts,
    categories: &[String],
    lines: &[Line],
) -> Result<()> {
    let n = categories.len().max(1);
    let spread = 0.06;
    let shifted: Vec<Line> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let offset = (i as f64 - (lines.len() as f64 - 1.0) / 2.0) * spread;
            Line {
                label: line.label.clone(),
                points: line
                    .points
                    .iter()
                    .map(|&(x, m, e)| (x + offset, m, e))
                    .collect(),
            }
        })
        .collect();
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    draw_lines(path, texts, (-0.5, n as f64 - 0.5), n + 1, &label, &shifted)
}

/// Lines over a numeric x axis.
pub fn xy_chart(path: &Path, texts: &Texts, lines: &[Line]) -> Result<()> {
    let xs = lines.iter().flat_map(|l| l.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(0.5);
    draw_lines(
        path,
        texts,
        (lo - pad, hi + pad),
        12,
        &|x| format!("{x}"),
        lines,
    )
}

/// Draws `lines` (points with error bars) over the x range `x`, with about `x_labels` ticks
/// labeled by `x_label`.
fn draw_lines(
    path: &Path,
    texts: &Texts,
    x: (f64, f64),
    x_labels: usize,
    x_label: &dyn Fn(&f64) -> String,
    lines: &[Line],
) -> Result<()> {
    render(path, |root| {
        let (y0, y1) = y_range(lines, texts.shares);
        let mut chart = ChartBuilder::on(root)
            .caption(texts.title, (FONT, 26))
            .margin(24)
            .x_label_area_size(56)
            .y_label_area_size(72)
            .build_cartesian_2d(x.0..x.1, y0..y1)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc(texts.x)
            .y_desc(texts.y)
            .x_labels(x_labels)
            .x_label_formatter(x_label)
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 20))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(draw_error)?;
        for (i, line) in lines.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let points: Vec<(f64, f64)> = line.points.iter().map(|&(x, m, _)| (x, m)).collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
                .map_err(draw_error)?
                .label(line.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart
                .draw_series(line.points.iter().map(|&(x, m, e)| {
                    ErrorBar::new_vertical(x, m - e, m, m + e, color.mix(0.6).stroke_width(2), 8)
                }))
                .map_err(draw_error)?;
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(draw_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 17))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .margin(12)
            .draw()
            .map_err(draw_error)
    })
}

type Root<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Draws with `draw` on a white RGB canvas, encodes it as PNG and writes it atomically.
fn render(path: &Path, draw: impl FnOnce(&Root) -> Result<()>) -> Result<()> {
    register_font();
    let (w, h) = SIZE;
    let mut pixels = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        draw(&root)?;
        root.present().map_err(draw_error)?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().context("encoding PNG")?;
        writer.write_image_data(&pixels).context("encoding PNG")?;
    }
    lore_io::write_bytes_atomic(path, &png_bytes)?;
    Ok(())
}

/// The y range covering every mean +- error, padded, within [0, 1], at least 0.1 tall, with
/// room at the bottom for the legend (drawn in the lower right, below the data).
fn y_range(lines: &[Line], shares: bool) -> (f64, f64) {
    let (lo, hi) = lines.iter().flat_map(|l| l.points.iter()).fold(
        (f64::INFINITY, f64::NEG_INFINITY),
        |(lo, hi), &(_, m, e)| (lo.min(m - e), hi.max(m + e)),
    );
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(0.01);
    let ceiling = if shares { 1.0 } else { f64::INFINITY };
    let (mut lo, hi) = (lo - pad, (hi + pad).min(ceiling));
    if hi - lo < 0.1 {
        lo = hi - 0.1;
    }
    // The legend takes about 26 px per line plus 40 of the plot's ~500 px.
    let legend = (26.0 * lines.len() as f64 + 40.0) / 500.0;
    lo -= (hi - lo) * legend / (1.0 - legend);
    (if shares { lo.max(0.0) } else { lo }, hi)
}

/// Registers the embedded DejaVu Sans as the charts' font, once.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // A failure shows up as an error when text is drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn draw_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart failed: {e:?}")
}
