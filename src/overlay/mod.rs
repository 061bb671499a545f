//! Copy-on-write overlays: a writable disk over a read-only archive.
//!
//! An [`Overlay`] is a sparse file holding the 4 KiB blocks written to a served archive, with
//! a persistent map of which blocks it holds ([`format`](mod@format) and `docs/OVERLAY.md` give the
//! layout) and the identity of the base archive it belongs to. `imgpack serve --overlay`
//! writes into it ([`Overlay::write`], [`Overlay::write_zeroes`], [`Overlay::trim`],
//! [`Overlay::flush`]); [`commit()`] writes base plus overlay into a new archive through the
//! conversion pipeline, reading them as one disk ([`MergedDisk`]).

pub mod commit;
pub mod file;
pub mod format;
pub mod map;
pub mod merged;

pub use commit::{commit, CommitOptions, CommitReport};
pub use file::{Access, Overlay};
pub use format::BaseIdentity;
pub use map::{BlockState, Run};
pub use merged::MergedDisk;
