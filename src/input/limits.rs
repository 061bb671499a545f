//! The limits every input is held to, checked by the readers before they size anything by a
//! number read from the image: [`InputLimits`] and [`check_virtual_size`].

use crate::error::{Error, ErrorKind, Result};
use crate::units::format_size;

/// The default virtual-size limit: 64 TiB.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Limits on what an input may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest virtual disk accepted, for every input format. Default
    /// [`DEFAULT_MAX_VIRTUAL_SIZE`] (64 TiB).
    pub max_virtual_size: u64,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_virtual_size: DEFAULT_MAX_VIRTUAL_SIZE,
        }
    }
}

/// Refuses a virtual size above `limit` (a [`ErrorKind::LimitExceeded`] error), before any
/// table sized by it is read.
pub fn check_virtual_size(virtual_size: u64, limit: u64) -> Result<()> {
    if virtual_size > limit {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "virtual size {} ({virtual_size} bytes) exceeds the limit of {} ({limit} bytes)",
                format_size(virtual_size),
                format_size(limit)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_itself_is_allowed() {
        check_virtual_size(10, 10).unwrap();
        let err = check_virtual_size(11, 10).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);
        assert_eq!(InputLimits::default().max_virtual_size, 64 << 40);
    }
}
