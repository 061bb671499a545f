//! Sizes as people write them (`4M`, `50G`, `53687091200`) and as they read them (`1.2 GiB`).

use crate::error::{Error, Result};

/// Parses a size: plain bytes, or a number with a binary suffix K, M, G, T, P or E (optionally
/// followed by `i`, `iB` or `B`, any case): `4M` is 4 MiB. Refuses overflow, empty and
/// fractional input.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        return Err(Error::invalid_argument(format!(
            "size {text:?} does not start with a number"
        )));
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kib" | "kb" => 10,
        "m" | "mi" | "mib" | "mb" => 20,
        "g" | "gi" | "gib" | "gb" => 30,
        "t" | "ti" | "tib" | "tb" => 40,
        "p" | "pi" | "pib" | "pb" => 50,
        "e" | "ei" | "eib" | "eb" => 60,
        _ => {
            return Err(Error::invalid_argument(format!(
                "size {text:?} has an unknown suffix {suffix:?} (use K, M, G, T)"
            )))
        }
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| Error::invalid_argument(format!("size {text:?} is too large")))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| Error::invalid_argument(format!("size {text:?} is too large")))
}

/// Formats a byte count for people, in binary units: `512 B`, `1.50 MiB`, `4.00 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        for (text, want) in [
            ("0", 0),
            ("4096", 4096),
            ("4K", 4096),
            ("4M", 4 << 20),
            ("50G", 53_687_091_200),
            ("1t", 1 << 40),
            ("2MiB", 2 << 20),
            (" 8k ", 8192),
        ] {
            assert_eq!(parse_size(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_garbage_and_overflow() {
        for text in ["", "M", "-1", "1.5G", "4X", "99999999999999999999", "16E", "1 G"] {
            assert!(parse_size(text).is_err(), "{text}");
        }
    }

    #[test]
    fn formats_binary_units() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536 * 1024), "1.50 MiB");
        assert_eq!(format_size(4 << 30), "4.00 GiB");
    }
}
