//! The figures: rows grouped with their ratio to the group's limit, the
//! printed table line, and the SVG chart.

use anyhow::{anyhow, Result};

/// One figure. `ratio` is to the first row of its group (the limit).
pub struct Row {
    pub group: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub ratio: Option<f64>,
    pub note: String,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Adds a row; the first row of a group is its limit (ratio 1).
    pub fn add(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        note: impl Into<String>,
    ) {
        let limit = self
            .rows
            .iter()
            .find(|r| r.group == group && r.value.is_finite())
            .map(|r| r.value);
        let ratio = match limit {
            _ if !value.is_finite() => None,
            Some(l) if l > 0.0 => Some(value / l),
            Some(_) => None,
            None => Some(1.0),
        };
        let row = Row {
            group,
            name: name.into(),
            value,
            unit,
            ratio,
            note: note.into(),
        };
        println!("  {}", fmt_row(&row));
        self.rows.push(row);
    }

    /// A contender that could not run: no value, the reason as its note.
    pub fn skip(&mut self, group: &'static str, name: impl Into<String>, why: impl Into<String>) {
        self.add(group, name, f64::NAN, "", why);
    }
}

pub fn fmt_row(r: &Row) -> String {
    let value = if r.value.is_finite() {
        format!("{:>12.1} {:<9}", r.value, r.unit)
    } else {
        format!("{:>12} {:<9}", "-", "")
    };
    let ratio = r
        .ratio
        .map(|x| {
            if x < 0.1 {
                format!("x{x:.4}")
            } else {
                format!("x{x:.2}")
            }
        })
        .unwrap_or_else(|| "-".into());
    format!("{:<44}{value}{ratio:>8}  {}", r.name, r.note)
}

// The chart: one bar per figure, its ratio to the limit of its group.

pub fn chart(report: &Report, path: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let rows: Vec<&Row> = report.rows.iter().collect();
    let line = 20i32;
    let mut height = 60i32;
    let mut last = "";
    for r in &rows {
        if r.group != last {
            height += line + 6;
            last = r.group;
        }
        height += line;
    }
    let width = 1200i32;
    let root = SVGBackend::new(path, (width as u32, height as u32)).into_drawing_area();
    let e = |e| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let title = ("sans-serif", 18).into_font();
    let label = ("sans-serif", 12).into_font();
    let head = ("sans-serif", 13).into_font().style(FontStyle::Bold);
    root.draw(&Text::new("canary-bench: each figure as a ratio to the limit of its group (bar = 1.0 at the grey line)", (10, 10), title)).map_err(e)?;
    let (x0, x1) = (470i32, width - 160);
    let max = rows
        .iter()
        .filter_map(|r| r.ratio)
        .fold(1.0f64, f64::max)
        .min(50.0);
    let scale = |v: f64| x0 + ((v.min(max) / max) * (x1 - x0) as f64) as i32;
    let mut y = 44;
    let mut last = "";
    for r in &rows {
        if r.group != last {
            y += 6;
            root.draw(&Text::new(r.group.to_string(), (10, y), head.clone()))
                .map_err(e)?;
            y += line;
            last = r.group;
        }
        root.draw(&Text::new(r.name.clone(), (20, y), label.clone()))
            .map_err(e)?;
        match r.ratio {
            Some(ratio) => {
                let color = if ratio <= 1.0 + 1e-9 {
                    RGBColor(80, 140, 200)
                } else {
                    RGBColor(220, 120, 60)
                };
                root.draw(&Rectangle::new(
                    [(x0, y + 2), (scale(ratio), y + line - 4)],
                    color.filled(),
                ))
                .map_err(e)?;
                let text = format!("x{ratio:.2}  ({:.1} {})", r.value, r.unit);
                root.draw(&Text::new(text, (scale(ratio) + 6, y), label.clone()))
                    .map_err(e)?;
            }
            None => {
                root.draw(&Text::new(
                    format!("n/a: {}", r.note),
                    (x0, y),
                    label.clone(),
                ))
                .map_err(e)?;
            }
        }
        y += line;
    }
    let one = scale(1.0);
    root.draw(&PathElement::new(
        vec![(one, 40), (one, height - 10)],
        RGBColor(150, 150, 150),
    ))
    .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
