//! Identifiers: new image ids (`img-` and 5 random lowercase base-36 characters) and the checks
//! that image and account ids are well formed before they name a file or a directory.

use crate::error::{Error, ErrorKind, Result};

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const SUFFIX_LEN: usize = 5;

/// A new random image id. Uniqueness is the catalog's job: it refuses a duplicate and the
/// caller draws again.
pub fn new_image_id() -> Result<String> {
    Ok(format!("img-{}", random_suffix()?))
}

fn random_suffix() -> Result<String> {
    let mut out = String::with_capacity(SUFFIX_LEN);
    let mut bytes = [0u8; 16];
    while out.len() < SUFFIX_LEN {
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot get random bytes for an id: {e}")))?;
        // 252 = 7 * 36: dropping larger bytes keeps every character equally likely.
        for &b in bytes.iter().filter(|&&b| b < 252) {
            if out.len() == SUFFIX_LEN {
                break;
            }
            out.push(char::from(ALPHABET[usize::from(b % 36)]));
        }
    }
    Ok(out)
}

fn has_suffix(text: &str, prefix: &str) -> bool {
    text.strip_prefix(prefix)
        .is_some_and(|rest| rest.len() == SUFFIX_LEN && rest.bytes().all(|b| ALPHABET.contains(&b)))
}

/// Whether `text` is an image id (`img-` and 5 lowercase base-36 characters).
pub fn is_image_id(text: &str) -> bool {
    has_suffix(text, "img-")
}

/// Whether `text` is a customer account id (`acc-` and 5 lowercase base-36 characters).
pub fn is_account_id(text: &str) -> bool {
    has_suffix(text, "acc-")
}

/// Whether `text` can name the operator account: 2 to 32 characters of lowercase letters,
/// digits and `-`, starting with a letter (so it is a safe directory name).
pub fn is_operator_name(text: &str) -> bool {
    (2..=32).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_well_formed_and_vary() {
        let ids: std::collections::HashSet<String> = (0..200).map(|_| new_image_id().unwrap()).collect();
        assert!(ids.iter().all(|id| is_image_id(id)), "{ids:?}");
        // 200 draws from 36^5 ids: a repeat is a one-in-three-hundred-thousand event.
        assert!(ids.len() >= 199);
        let chars: std::collections::HashSet<char> = ids.iter().flat_map(|id| id[4..].chars()).collect();
        assert!(chars.len() > 30, "{chars:?}");
    }

    #[test]
    fn checks_ids() {
        assert!(is_image_id("img-7geqi"));
        assert!(!is_image_id("img-7GEQI"));
        assert!(!is_image_id("img-7geq"));
        assert!(!is_image_id("img-../..a"));
        assert!(is_account_id("acc-xxxxx"));
        assert!(!is_account_id("acc-xx/xx"));
        assert!(is_operator_name("brightbox"));
        assert!(!is_operator_name("../x"));
        assert!(!is_operator_name("b"));
    }
}
