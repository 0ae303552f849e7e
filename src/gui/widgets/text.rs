//! Text the panels show: counts written short (`1.23M`), and model output made drawable by
//! the body font.

/// 1234567 → "1.23M".
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

/// `text` with every character the body font cannot draw written as `\u{..}` (a model may
/// produce any Unicode, or a lone replacement character from a split UTF-8 sequence).
pub fn displayable(ui: &egui::Ui, text: &str) -> String {
    let font = egui::TextStyle::Body.resolve(ui.style());
    ui.ctx().fonts_mut(|f| {
        if f.has_glyphs(&font, text) {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if c.is_control() || f.has_glyph(&font, c) {
                out.push(c);
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        }
        out
    })
}
