//! QR codes of payment URLs as inline SVG (no image files, no external assets).
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// An `<svg>` element encoding `text`; an empty string if the text is too long for a QR code
/// (a payment URL never is).
pub fn svg(text: &str) -> String {
    let Ok(code) = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M) else {
        return String::new();
    };
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    // Drop the XML declaration: the element is embedded in HTML and JSON.
    match image.find("<svg") {
        Some(i) => image[i..].to_string(),
        None => image,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_payment_url_becomes_an_inline_svg() {
        let s = super::svg("http://127.0.0.1:8080/pay/pay_01J");
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.contains("</svg>"));
    }
}
