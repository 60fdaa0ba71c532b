//! PNG plots: labelled horizontal bars drawn with plotters' bitmap backend into a buffer, encoded
//! with `png`. Text uses a system TrueType font through ab_glyph (no fontconfig/freetype); when no
//! font is found, no plot is drawn and results.md says so.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// The figures of one run.
#[derive(Default)]
pub(crate) struct Figures {
    /// (endpoint, req/s)
    pub(crate) poll: Vec<(String, f64)>,
    /// (system, jobs/s)
    pub(crate) throughput: Vec<(String, f64)>,
    /// (variant, idle p99 ms, loaded p99 ms)
    pub(crate) isolation: Vec<(String, f64, f64)>,
    /// (job length, client, median delay ms)
    pub(crate) js: Vec<(String, String, f64)>,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

type Group = (String, Vec<(String, f64)>);

/// Draws the plots into `dir`; returns (title, file name) of those written, or the reason none was.
pub(crate) fn draw(f: &Figures, dir: &Path) -> Result<Vec<(String, String)>, String> {
    let font = FONTS.iter().find_map(|p| std::fs::read(p).ok()).ok_or(
        "no TrueType font found for plot labels (looked for DejaVu Sans / Liberation Sans)",
    )?;
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| "the font could not be read")?;
    let mut written = Vec::new();
    let mut plot = |file: &str, title: &str, unit: &str, log: bool, groups: Vec<Group>| {
        if groups.is_empty() {
            return;
        }
        match bars(&dir.join(file), title, unit, log, &groups) {
            Ok(()) => written.push((title.to_owned(), file.to_owned())),
            Err(e) => written.push((format!("{title} (not drawn: {e})"), String::new())),
        }
    };
    let single = |v: &[(String, f64)], series: &str| -> Vec<Group> {
        v.iter()
            .map(|(n, x)| (n.clone(), vec![(series.to_owned(), *x)]))
            .collect()
    };
    plot(
        "poll_cost.png",
        "Poll cost: requests per second (higher is better)",
        "req/s",
        false,
        single(&f.poll, "req/s"),
    );
    plot(
        "throughput.png",
        "Job throughput, one worker process (higher is better)",
        "jobs/s",
        false,
        single(&f.throughput, "jobs/s"),
    );
    plot(
        "isolation.png",
        "Fast handler p99 latency, idle vs 50 slow clients (log scale, lower is better)",
        "ms",
        true,
        f.isolation
            .iter()
            .map(|(n, i, l)| {
                (
                    n.clone(),
                    vec![("idle".to_owned(), *i), ("under load".to_owned(), *l)],
                )
            })
            .collect(),
    );
    let mut js: Vec<Group> = Vec::new();
    for (job, client, d) in &f.js {
        let name = match client.as_str() {
            "stream" => "async-endpoint JS client (stream)",
            "waiting" => "async-endpoint JS client (waiting polls)",
            _ => "original jQuery schedule",
        };
        match js.iter_mut().find(|g| &g.0 == job) {
            Some(g) => g.1.push((name.to_owned(), *d)),
            None => js.push((job.clone(), vec![(name.to_owned(), *d)])),
        }
    }
    plot(
        "js_delay.png",
        "Notification delay, median (lower is better)",
        "ms",
        false,
        js,
    );
    Ok(written)
}

fn bars(path: &Path, title: &str, unit: &str, log: bool, groups: &[Group]) -> Result<(), String> {
    let rows: usize = groups.iter().map(|g| g.1.len()).sum();
    let (w, bar_h, gap, top, left, right) = (1000u32, 22i32, 12i32, 70i32, 330i32, 130i32);
    let h = (top + rows as i32 * (bar_h + 4) + groups.len() as i32 * gap + 20) as u32;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        let e = |x: DrawingAreaErrorKind<_>| x.to_string();
        root.fill(&WHITE).map_err(e)?;
        let title_font = ("sans-serif", 20).into_font();
        let font = ("sans-serif", 15).into_font();
        root.draw(&Text::new(title.to_owned(), (15, 12), title_font))
            .map_err(e)?;
        let series = series(groups);
        if series.len() > 1 {
            legend(&root, &series, &font)?;
        }
        let max = groups
            .iter()
            .flat_map(|g| g.1.iter().map(|b| b.1))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let min_log = 0.1f64;
        let span = (w as i32 - left - right) as f64;
        let width = |v: f64| -> i32 {
            if !v.is_finite() || v <= 0.0 || max <= 0.0 {
                return 0;
            }
            let frac = if log {
                ((v.max(min_log) / min_log).log10() / (max.max(min_log * 10.0) / min_log).log10())
                    .max(0.02)
            } else {
                v / max
            };
            (frac * span) as i32
        };
        let mut y = top;
        for (label, bars) in groups {
            root.draw(&Text::new(label.clone(), (10, y + 3), font.clone()))
                .map_err(e)?;
            for (name, v) in bars {
                let i = series.iter().position(|s| s == name).unwrap_or(0);
                let c = COLORS[i % COLORS.len()];
                let x1 = left + width(*v);
                root.draw(&Rectangle::new(
                    [(left, y), (x1.max(left + 1), y + bar_h)],
                    c.filled(),
                ))
                .map_err(e)?;
                root.draw(&Text::new(value(*v, unit), (x1 + 6, y + 3), font.clone()))
                    .map_err(e)?;
                y += bar_h + 4;
            }
            y += gap;
        }
        root.present().map_err(e)?;
    }
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut wr| wr.write_image_data(&buf))
        .map_err(|e| e.to_string())
}

/// The series of the groups, in their first order.
fn series(groups: &[Group]) -> Vec<String> {
    let mut s: Vec<String> = Vec::new();
    for (_, bars) in groups {
        for (name, _) in bars {
            if !s.contains(name) {
                s.push(name.clone());
            }
        }
    }
    s
}

/// The legend, under the title: a coloured square and the name of each series.
fn legend(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    series: &[String],
    font: &FontDesc<'_>,
) -> Result<(), String> {
    let e = |x: DrawingAreaErrorKind<_>| x.to_string();
    let mut x = 15;
    for (i, name) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        root.draw(&Rectangle::new([(x, 44), (x + 14, 58)], c.filled()))
            .map_err(e)?;
        root.draw(&Text::new(name.clone(), (x + 20, 43), font.clone()))
            .map_err(e)?;
        x += 40 + 9 * name.len() as i32;
    }
    Ok(())
}

/// A bar's label.
fn value(v: f64, unit: &str) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}
