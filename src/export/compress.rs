//! Cluster compressors for the compressed outputs, one reused context per worker thread:
//! zstd frames and raw deflate for qcow2 (qemu inflates with a 4 KiB window, so deflate is
//! limited to one), zlib streams for VMDK grains.

use std::cell::RefCell;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::error::{Error, ErrorKind, Result};

/// The zstd level qemu-img's qcow2 zstd compression uses (zstd's default).
const ZSTD_LEVEL: i32 = 3;

/// How a cluster is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One zstd frame (qcow2 compression type 1).
    Zstd,
    /// Raw deflate with a 4 KiB window (qcow2 compression type 0).
    RawDeflate,
    /// A zlib stream (VMDK's deflate grains).
    Zlib,
}

thread_local! {
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static RAW_DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
    static ZLIB: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Compresses `data` with `codec`; `None` if the result would not be smaller than `limit`
/// bytes (the caller then stores the data as it is).
pub fn compress(codec: Codec, data: &[u8], limit: usize) -> Result<Option<Vec<u8>>> {
    match codec {
        Codec::Zstd => ZSTD.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(compress_error)?);
            }
            let compressor = slot.as_mut().expect("initialised above");
            let out = compressor.compress(data).map_err(compress_error)?;
            Ok((out.len() < limit).then_some(out))
        }),
        Codec::RawDeflate => RAW_DEFLATE.with(|cell| {
            deflate(cell, data, limit, || {
                Compress::new_with_window_bits(Compression::default(), false, 12)
            })
        }),
        Codec::Zlib => {
            ZLIB.with(|cell| deflate(cell, data, limit, || Compress::new(Compression::default(), true)))
        }
    }
}

fn deflate(
    cell: &RefCell<Option<Compress>>,
    data: &[u8],
    limit: usize,
    make: impl FnOnce() -> Compress,
) -> Result<Option<Vec<u8>>> {
    let mut slot = cell.borrow_mut();
    let compressor = slot.get_or_insert_with(make);
    compressor.reset();
    let mut out = Vec::with_capacity(limit);
    let status = compressor
        .compress_vec(data, &mut out, FlushCompress::Finish)
        .map_err(compress_error)?;
    // The output buffer has room for `limit` bytes only: anything but the end of the stream
    // means the data did not fit in less.
    Ok((status == Status::StreamEnd && out.len() < limit).then_some(out))
}

fn compress_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::Io, "compressing a cluster").with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_codec_round_trips_and_incompressible_data_is_declined() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i / 7) as u8).collect();
        let zstd_out = compress(Codec::Zstd, &data, data.len()).unwrap().unwrap();
        assert_eq!(zstd::bulk::decompress(&zstd_out, data.len()).unwrap(), data);
        let raw = compress(Codec::RawDeflate, &data, data.len()).unwrap().unwrap();
        let mut back = Vec::with_capacity(data.len());
        flate2::Decompress::new_with_window_bits(false, 12)
            .decompress_vec(&raw, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, data);
        let zlib = compress(Codec::Zlib, &data, data.len()).unwrap().unwrap();
        let mut back = Vec::with_capacity(data.len());
        flate2::Decompress::new(true)
            .decompress_vec(&zlib, &mut back, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(back, data);
        let mut noise = vec![0u8; 4096];
        let mut x = 0x1234_5678u32;
        for b in noise.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        for codec in [Codec::Zstd, Codec::RawDeflate, Codec::Zlib] {
            assert!(
                compress(codec, &noise, noise.len()).unwrap().is_none(),
                "{codec:?}"
            );
        }
    }
}
