//! Figures a reader can take in without the command's output beside them: SVG with the picture
//! embedded (PNG, base64), its colour bar, labels and legend.

use anyhow::{Context, Result};
use cnnkit::stability::{SIGNED_NEGATIVE, SIGNED_POSITIVE};
use std::fmt::Write as _;

/// `rgb` (`w·h·3`) encoded as PNG.
pub fn png_bytes(w: usize, h: usize, rgb: Vec<u8>) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(w as u32, h as u32, rgb).context("image size")?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .context("cannot encode the picture")?;
    Ok(bytes.into_inner())
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= c.len() {
                s.push(A[(n >> shift & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// `s` with the characters XML gives a meaning escaped.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hex(c: [f32; 3]) -> String {
    let b = c.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8);
    format!("#{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

fn image(x: usize, y: usize, w: usize, h: usize, png: &[u8]) -> String {
    format!(
        "<image x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" style=\"image-rendering:pixelated\" \
         href=\"data:image/png;base64,{}\"/>\n",
        base64(png)
    )
}

fn text(x: usize, y: usize, anchor: &str, s: &str) -> String {
    format!(
        "<text x=\"{x}\" y=\"{y}\" text-anchor=\"{anchor}\">{}</text>\n",
        esc(s)
    )
}

fn open(w: usize, h: usize) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n"
    )
}

/// The saliency figure: `title`, the signed map (`png`, `w`x`h` pixels) with a colour bar from
/// `−scale` (blue) through the image (no attribution) to `+scale` (red), and a legend naming
/// the class.
pub fn saliency_svg(
    title: &str,
    png: &[u8],
    w: usize,
    h: usize,
    scale: f32,
    class: &str,
) -> String {
    let (top, bar_x) = (26, w + 16);
    let width = (w + 110).max(520);
    let height = top + h + 58;
    let mut s = open(width, height);
    s += &text(6, 16, "start", title);
    s += &image(6, top, w, h, png);
    let _ = write!(
        s,
        "<defs><linearGradient id=\"bar\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">\
         <stop offset=\"0\" stop-color=\"{}\"/><stop offset=\"0.5\" stop-color=\"#808080\"/>\
         <stop offset=\"1\" stop-color=\"{}\"/></linearGradient></defs>\n\
         <rect x=\"{bar_x}\" y=\"{top}\" width=\"14\" height=\"{h}\" fill=\"url(#bar)\" stroke=\"black\"/>\n",
        hex(SIGNED_NEGATIVE),
        hex(SIGNED_POSITIVE)
    );
    let label = |v: f32| {
        if (1e-2..1e4).contains(&v.abs()) {
            format!("{v:+.3}")
        } else {
            format!("{v:+.2e}")
        }
    };
    s += &text(bar_x + 20, top + 10, "start", &label(scale));
    s += &text(bar_x + 20, top + h / 2 + 4, "start", "0");
    s += &text(bar_x + 20, top + h, "start", &label(-scale));
    s += &text(
        6,
        top + h + 20,
        "start",
        &format!("red: raises the score of class {class}; blue: lowers it"),
    );
    s += &text(
        6,
        top + h + 38,
        "start",
        "grey: the image, where the map is 0 (black is background);",
    );
    s += &text(
        6,
        top + h + 54,
        "start",
        "full colour at the map's 99th percentile of |value| (the bar's ends)",
    );
    s + "</svg>\n"
}

/// The perturbation figure: the input, the perturbation drawn as `0.5 + k·r` (grey is zero; the
/// labels state `k`, a magnification when above 1), the perturbed input, and the class
/// probabilities before and after with the class names; `notes` below. Panels are `png`s of
/// `w`x`h` pixels.
#[allow(clippy::too_many_arguments)]
pub fn perturb_svg(
    panels: [&[u8]; 3],
    w: usize,
    h: usize,
    labels: [String; 3],
    classes: &[String],
    before: &[f32],
    after: &[f32],
    notes: &[String],
) -> String {
    let (gap, top) = (16, 30);
    let slot = 26usize;
    let bars_w = (classes.len() * slot).max(120);
    let width = 3 * (w + gap) + bars_w + 12;
    let height = top + h + 46 + 18 * notes.len();
    let mut s = open(width, height);
    for (k, (png, label)) in panels.iter().zip(&labels).enumerate() {
        let x = 6 + k * (w + gap);
        s += &image(x, top, w, h, png);
        s += &text(x, top - 8, "start", label);
    }
    // Probability bars: grey before, red after, each class named under its pair.
    let x0 = 6 + 3 * (w + gap);
    s += &text(x0, top - 8, "start", "class probabilities");
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        top + h,
        x0 + bars_w,
        top + h
    );
    for (i, name) in classes.iter().enumerate() {
        let x = x0 + i * slot;
        for (j, (p, col)) in [(before[i], "#787878"), (after[i], "#c82828")]
            .into_iter()
            .enumerate()
        {
            let bh = (p.clamp(0.0, 1.0) * h as f32).round() as usize;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"{col}\"/>",
                x + 2 + j * (slot / 2 - 2),
                top + h - bh,
                slot / 2 - 3
            );
        }
        s += &text(x + slot / 2, top + h + 14, "middle", name);
    }
    s += &text(
        6,
        top + h + 36,
        "start",
        "bars: grey before, red after the perturbation",
    );
    for (i, note) in notes.iter().enumerate() {
        s += &text(6, top + h + 54 + 18 * i, "start", note);
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_is_rfc_4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(super::esc("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
