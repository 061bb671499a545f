//! Who may see and use which image, and which status changes are allowed.
//!
//! Visibility (the operator is an ordinary account here; it only differs in owning official
//! images):
//!
//! | caller             | list                                        | show / build                  |
//! |--------------------|---------------------------------------------|-------------------------------|
//! | owner              | every status but `deleted`                  | show: any; build: `available`, `deprecated` |
//! | other, public      | `available`; `deprecated` with `--show-all` | `available`, `deprecated`     |
//! | other, private     | never                                       | never (answered as unknown)   |
//!
//! Transitions (anything else is refused):
//!
//! | from         | to                                   |
//! |--------------|--------------------------------------|
//! | `creating`   | `available`, `failed`                |
//! | `available`  | `deprecated`, `deleted`              |
//! | `deprecated` | `available`, `deleted`               |
//! | `failed`     | `deleted`                            |
//! | `deleted`    | (none)                               |

use super::record::{catalog_error, ImageRecord, Status};
use crate::error::Result;

/// Whether the catalog may move an image from `from` to `to`.
pub fn transition_allowed(from: Status, to: Status) -> bool {
    use Status::*;
    matches!(
        (from, to),
        (Creating, Available)
            | (Creating, Failed)
            | (Available, Deprecated)
            | (Available, Deleted)
            | (Deprecated, Available)
            | (Deprecated, Deleted)
            | (Failed, Deleted)
    )
}

/// The statuses an image may be moved to `to` from.
pub fn sources_of(to: Status) -> Vec<Status> {
    Status::ALL
        .into_iter()
        .filter(|&from| transition_allowed(from, to))
        .collect()
}

/// Whether `caller` owns `record`.
pub fn owns(record: &ImageRecord, caller: &str) -> bool {
    record.owner == caller
}

/// Whether `caller` sees `record` in `images list` (`show_all`: `--show-all`).
pub fn listed(record: &ImageRecord, caller: &str, show_all: bool) -> bool {
    if owns(record, caller) {
        return record.status != Status::Deleted;
    }
    record.public
        && match record.status {
            Status::Available => true,
            Status::Deprecated => show_all,
            _ => false,
        }
}

/// Whether `caller` may know that `record` exists (`images show`). Others' private images, and
/// others' images that cannot be used, are answered exactly like unknown ids.
pub fn visible(record: &ImageRecord, caller: &str) -> bool {
    owns(record, caller) || (record.public && usable_status(record.status))
}

/// Whether servers can be built from an image in `status`.
pub fn usable_status(status: Status) -> bool {
    matches!(status, Status::Available | Status::Deprecated)
}

/// The deprecation rule, for an update of an image now in `current`: the statuses the
/// compare-and-swap expects and the status it sets (`None`: unchanged). Without a change of
/// deprecation any live status will do; deprecating takes an `available` image to
/// `deprecated` and reinstating takes it back, and asking for the status it already has is a
/// no-op rather than an error (another process may have just done the same).
pub fn update_transition(
    id: &str,
    current: Status,
    deprecate: Option<bool>,
) -> Result<(Vec<Status>, Option<Status>)> {
    let Some(deprecate) = deprecate else {
        let live = vec![
            Status::Creating,
            Status::Available,
            Status::Deprecated,
            Status::Failed,
        ];
        return Ok((live, None));
    };
    let (from, target) = if deprecate {
        (Status::Available, Status::Deprecated)
    } else {
        (Status::Deprecated, Status::Available)
    };
    if current == target {
        Ok((vec![target], None))
    } else if current == from {
        Ok((vec![from], Some(target)))
    } else {
        Err(catalog_error(format!(
            "{id} is {current}; only available images can be deprecated and only deprecated ones reinstated"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table() {
        use Status::*;
        let allowed = [
            (Creating, Available),
            (Creating, Failed),
            (Available, Deprecated),
            (Available, Deleted),
            (Deprecated, Available),
            (Deprecated, Deleted),
            (Failed, Deleted),
        ];
        for from in Status::ALL {
            for to in Status::ALL {
                assert_eq!(
                    transition_allowed(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert_eq!(sources_of(Deleted), vec![Available, Deprecated, Failed]);
        assert!(sources_of(Creating).is_empty());
    }
}
