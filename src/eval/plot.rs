//! The precision/recall/false-hit curves as a picture, SVG or PNG.
//!
//! Text is laid out and (for PNG) drawn with an embedded Noto Sans, so plotting needs no font
//! installed and no fontconfig or freetype at build or run time. The SVG names the family
//! `sans-serif` and leaves the glyphs to the viewer.

use super::{EvalError, Point};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use std::path::Path;
use std::sync::OnceLock;

const SIZE: (u32, u32) = (960, 600);
const FAMILY: &str = "sans-serif";

/// Writes the curves of both guard settings to `path`, SVG or PNG by its extension: precision,
/// recall and false-hit rate against the threshold, guards off dashed and lighter, guards on
/// solid, with the legend beside the plot. Values that are only conventions are left out:
/// precision where nothing hit, recall on a set without duplicate pairs.
pub fn write(path: &Path, title: &str, off: &[Point], on: &[Point]) -> Result<(), EvalError> {
    let plot_error = |what: String| EvalError::Plot { path: path.to_owned(), what };
    if off.is_empty() && on.is_empty() {
        return Err(plot_error("no points to draw".into()));
    }
    register_fonts().map_err(|e| plot_error(e.into()))?;
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("svg") => {
            draw(SVGBackend::new(path, SIZE).into_drawing_area(), title, off, on).map_err(|e| plot_error(e.to_string()))
        }
        Some("png") => draw(BitMapBackend::new(path, SIZE).into_drawing_area(), title, off, on)
            .map_err(|e| plot_error(e.to_string())),
        _ => Err(plot_error("the file name must end in .svg or .png".into())),
    }
}

/// plotters looks fonts up by family name in a process-wide table; fill it once.
fn register_fonts() -> Result<(), &'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"]
            .into_iter()
            .all(|family| register_font(family, FontStyle::Normal, notosans::REGULAR_TTF).is_ok())
    });
    ok.then_some(()).ok_or("the embedded font could not be loaded")
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A curve's name, colour, and value at a point (None: not drawn there).
type Metric = (&'static str, RGBColor, fn(&Point) -> Option<f64>);

/// Width of the legend column, right of the plot, where it can never hide a curve.
const LEGEND_WIDTH: u32 = 230;

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, off: &[Point], on: &[Point]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (lo, hi) = off
        .iter()
        .chain(on)
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| (lo.min(p.threshold), hi.max(p.threshold)));
    // A single threshold still gets a readable axis.
    let (lo, hi) = if hi - lo < 0.01 { (lo - 0.05, hi + 0.05) } else { (lo, hi) };

    let body = root.margin(12, 12, 12, 12).titled(title, (FAMILY, 26))?;
    let (plot, legend) = body.split_horizontally(SIZE.0 - 24 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .margin(10)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(lo..hi, 0f32..1f32)?;
    chart
        .configure_mesh()
        .x_desc("threshold")
        .y_desc("rate")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .draw()?;

    // Precision is only drawn where something was served: with no hit it is 1 by convention,
    // which would show as a spike at the top thresholds.
    let metrics: [Metric; 3] = [
        ("precision", RGBColor(31, 119, 180), |p| (p.hits > 0).then_some(p.precision)),
        ("recall", RGBColor(44, 160, 44), |p| Some(p.recall).filter(|r| r.is_finite())),
        ("false-hit rate", RGBColor(214, 39, 40), |p| Some(p.false_hit_rate)),
    ];
    let mut y = 20;
    for (points, guards) in [(off, "off"), (on, "on")] {
        let mut points = points.to_vec();
        points.sort_by(|x, y| x.threshold.total_cmp(&y.threshold));
        let mut heading = false;
        for (name, color, value) in metrics {
            let line: Vec<(f32, f32)> = points.iter().filter_map(|p| Some((p.threshold, value(p)? as f32))).collect();
            if line.is_empty() {
                continue;
            }
            if !heading {
                legend.draw(&Text::new(format!("guards {guards}"), (12, y), (FAMILY, 16)))?;
                y += 26;
                heading = true;
            }
            let sample = vec![(12, y + 9), (44, y + 9)];
            if guards == "off" {
                let style = color.mix(0.55).stroke_width(2);
                chart.draw_series(DashedLineSeries::new(line, 8, 5, style))?;
                legend.draw(&DashedPathElement::new(sample, 8, 5, style))?;
            } else {
                let style = color.stroke_width(3);
                chart.draw_series(LineSeries::new(line, style))?;
                legend.draw(&PathElement::new(sample, style))?;
            }
            legend.draw(&Text::new(name, (52, y), (FAMILY, 15)))?;
            y += 24;
        }
        y += 14;
    }
    root.present()
}

/// One policy's cumulative curve: `(lookups, hit rate, error rate)` after each step.
pub type Cumulative = (String, Vec<(f64, f64, f64)>);

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// `semcache eval --stream --plot`: cumulative hit rate (top) and error rate (bottom) over the
/// stream, one colour per policy, SVG or PNG by the extension.
pub fn cumulative(path: &Path, title: &str, series: &[Cumulative]) -> Result<(), EvalError> {
    let plot_error = |what: String| EvalError::Plot { path: path.to_owned(), what };
    if series.iter().all(|(_, points)| points.is_empty()) {
        return Err(plot_error("no points to draw".into()));
    }
    register_fonts().map_err(|e| plot_error(e.into()))?;
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("svg") => draw_cumulative(SVGBackend::new(path, SIZE).into_drawing_area(), title, series)
            .map_err(|e| plot_error(e.to_string())),
        Some("png") => draw_cumulative(BitMapBackend::new(path, SIZE).into_drawing_area(), title, series)
            .map_err(|e| plot_error(e.to_string())),
        _ => Err(plot_error("the file name must end in .svg or .png".into())),
    }
}

fn draw_cumulative<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Cumulative],
) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let lookups = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.0)).fold(1.0, f64::max);
    let top_error = series.iter().flat_map(|(_, p)| p.iter().map(|x| x.2)).fold(0.01, f64::max) * 1.1;
    let body = root.margin(12, 12, 12, 12).titled(title, (FAMILY, 26))?;
    let (plots, legend) = body.split_horizontally(SIZE.0 - 24 - LEGEND_WIDTH);
    let (upper, lower) = plots.split_vertically((SIZE.1 - 60) / 2);
    for (area, name, high, pick) in [
        (&upper, "hit rate", 1.0, (|p: &(f64, f64, f64)| p.1) as fn(&(f64, f64, f64)) -> f64),
        (&lower, "error rate (wrong / lookups)", top_error, |p: &(f64, f64, f64)| p.2),
    ] {
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..lookups, 0f64..high)?;
        chart
            .configure_mesh()
            .x_desc("lookups")
            .y_desc(name)
            .label_style((FAMILY, 13))
            .axis_desc_style((FAMILY, 15))
            .draw()?;
        for (i, (_, points)) in series.iter().enumerate() {
            let style = PALETTE[i % PALETTE.len()].stroke_width(2);
            chart.draw_series(LineSeries::new(points.iter().map(|p| (p.0, pick(p))), style))?;
        }
    }
    for (i, (label, _)) in series.iter().enumerate() {
        let y = 20 + 24 * i as i32;
        legend.draw(&PathElement::new(vec![(12, y + 9), (44, y + 9)], PALETTE[i % PALETTE.len()].stroke_width(3)))?;
        legend.draw(&Text::new(label.clone(), (52, y), (FAMILY, 15)))?;
    }
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::score::{curve, thresholds, Match, Observation};

    fn curves() -> (Vec<Point>, Vec<Point>) {
        let obs: Vec<Observation> = (0..40)
            .map(|i| {
                let similarity = 0.5 + i as f32 / 80.0;
                let m = Some(Match { similarity, own: i % 3 != 0 });
                Observation { duplicate: i % 2 == 0, nearest: m, guarded: m.filter(|_| i % 5 != 0) }
            })
            .collect();
        let ts = thresholds(0.5, 1.0, 0.05);
        (curve(&obs, false, &ts), curve(&obs, true, &ts))
    }

    #[test]
    fn writes_an_svg_with_the_title_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.svg");
        let (off, on) = curves();
        write(&path, "qqp <sample> & co", &off, &on).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("qqp &lt;sample&gt; &amp; co"), "title escaped and present");
        // The SVG backend writes each text on a line of its own.
        let lines: Vec<&str> = svg.lines().map(str::trim).collect();
        for label in ["guards off", "guards on", "precision", "recall", "false-hit rate", "threshold"] {
            assert!(lines.contains(&label), "missing {label:?}");
        }
        // Three solid curves are one polyline each; each dash of the dashed ones is another.
        assert!(svg.matches("<polyline").count() > 20, "dashed guards-off curves");
    }

    #[test]
    fn writes_a_png_with_lettering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curve.PNG");
        let (off, on) = curves();
        write(&path, "mock", &off, &on).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    }

    #[test]
    fn bitmap_text_is_drawn_with_the_embedded_font() {
        register_fonts().unwrap();
        let (off, on) = curves();
        let (w, h) = SIZE;
        let title_band_ink = |title: &str| {
            let mut pixels = vec![0u8; (w * h * 3) as usize];
            draw(BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area(), title, &off, &on).unwrap();
            // Rows 12..44 hold only the title.
            pixels[(12 * w * 3) as usize..(44 * w * 3) as usize].iter().filter(|&&v| v < 128).count()
        };
        assert_eq!(title_band_ink(""), 0);
        assert!(title_band_ink("gptcache_qqp") > 100);
    }

    #[test]
    fn cumulative_curves_draw_every_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.svg");
        let line = |h: f64| (1..=10).map(|i| (f64::from(i) * 10.0, h, h / 20.0)).collect::<Vec<_>>();
        cumulative(&path, "b77", &[("static 0.860".into(), line(0.3)), ("verified δ=0.01".into(), line(0.4))]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(lines.contains(&"static 0.860") && lines.contains(&"hit rate"), "{svg}");
        assert!(cumulative(&dir.path().join("x.svg"), "t", &[]).is_err());
    }

    #[test]
    fn undefined_recall_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("contextual.svg");
        let obs =
            [Observation { duplicate: false, nearest: Some(Match { similarity: 0.9, own: true }), guarded: None }];
        let ts = thresholds(0.8, 0.95, 0.05);
        write(&path, "contextual", &curve(&obs, false, &ts), &curve(&obs, true, &ts)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(lines.contains(&"precision") && !lines.contains(&"recall"));
    }

    #[test]
    fn other_extensions_and_empty_curves_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (off, on) = curves();
        for name in ["curve.jpg", "curve"] {
            let path = dir.path().join(name);
            let error = write(&path, "t", &off, &on).unwrap_err();
            assert!(error.to_string().ends_with("the file name must end in .svg or .png"), "{error}");
            assert!(!path.exists());
        }
        let error = write(&dir.path().join("x.svg"), "t", &[], &[]).unwrap_err();
        assert!(matches!(error, EvalError::Plot { .. }));
    }
}
