//! The `.imgpack` archive: [`format`](mod@format) (byte layout), [`chunk`] (one chunk's encoding),
//! [`writer`] (streaming writer with the compressed-size limit) and [`reader`] (validated
//! random access).

pub mod chunk;
pub mod format;
pub mod reader;
pub mod writer;
