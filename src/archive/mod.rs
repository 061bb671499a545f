//! The `.imgpack` archive: [`format`](mod@format) (the byte layout, drawn in its module doc and
//! in `docs/FORMAT.md`; the footer in [`footer`]), [`digest`] (the image digest,
//! `sha256-tree`) and [`reader`] ([`ArchiveReader`](reader::ArchiveReader): a validated archive
//! with random access to its disk). The chunk codec and the streaming writer are the engine's
//! own (`convert` writes archives).

#[doc(hidden)]
pub mod chunk;
pub mod digest;
pub mod footer;
pub mod format;
pub mod reader;
#[doc(hidden)]
pub mod writer;
