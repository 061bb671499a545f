//! Compressed qcow2 clusters: raw deflate (compression_type 0) or zstd (1).
//!
//! A compressed L2 descriptor gives the host byte offset of the data and an upper bound on its
//! length (whole 512-byte sectors); the stored bytes may be followed by the start of the next
//! compressed cluster, so decoding stops once a full cluster has been produced, exactly as QEMU
//! does: deflate may leave input unread, zstd must have finished its frame at that point.
//! Each worker thread keeps its own inflater and zstd context ([`decompress`]).

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

use super::header::Compression;
use crate::error::{Error, Result};

/// Largest zstd window accepted: clusters are at most 2 MiB, so a frame that asks for more
/// is hostile (and would cost memory per worker).
const ZSTD_WINDOW_LOG_MAX: u32 = 22;

struct Decoders {
    inflater: Decompress,
    zstd: Option<DCtx<'static>>,
}

thread_local! {
    static DECODERS: RefCell<Option<Decoders>> = const { RefCell::new(None) };
}

/// Decompresses `input` (the compressed cluster at host offset `at`) into all of `output`
/// (one cluster), with this thread's decoder.
pub fn decompress(compression: Compression, input: &[u8], output: &mut [u8], at: u64) -> Result<()> {
    DECODERS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let decoders = slot.get_or_insert_with(|| Decoders {
            inflater: Decompress::new(false),
            zstd: None,
        });
        match compression {
            Compression::Zlib => inflate(&mut decoders.inflater, input, output, at),
            Compression::Zstd => {
                if decoders.zstd.is_none() {
                    let mut context = DCtx::try_create().ok_or_else(|| {
                        Error::io("creating a zstd decoder", std::io::Error::other("out of memory"))
                    })?;
                    context
                        .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                        .map_err(|code| zstd_error(at, code))?;
                    decoders.zstd = Some(context);
                }
                let context = decoders.zstd.as_mut().expect("created above");
                unzstd(context, input, output, at)
            }
        }
    })
}

fn inflate(inflater: &mut Decompress, input: &[u8], output: &mut [u8], at: u64) -> Result<()> {
    inflater.reset(false);
    loop {
        let before = (inflater.total_in(), inflater.total_out());
        let read = before.0 as usize;
        let written = before.1 as usize;
        let status = inflater
            .decompress(&input[read..], &mut output[written..], FlushDecompress::Finish)
            .map_err(|e| Error::corrupt(at, format!("compressed cluster does not inflate: {e}")))?;
        let written = inflater.total_out() as usize;
        if written == output.len() {
            return Ok(());
        }
        let stuck = (inflater.total_in(), inflater.total_out()) == before;
        if status == Status::StreamEnd || stuck {
            return Err(Error::corrupt(
                at,
                format!(
                    "compressed cluster inflates to {written} bytes, less than the cluster size {}",
                    output.len()
                ),
            ));
        }
    }
}

fn unzstd(context: &mut DCtx<'static>, input: &[u8], output: &mut [u8], at: u64) -> Result<()> {
    context
        .reset(zstd_safe::ResetDirective::SessionOnly)
        .map_err(|code| zstd_error(at, code))?;
    let size = output.len();
    let mut input = InBuffer::around(input);
    let mut output = OutBuffer::around(output);
    let mut remaining_hint = 1;
    while output.pos() < size {
        let before = (input.pos(), output.pos());
        remaining_hint = context
            .decompress_stream(&mut output, &mut input)
            .map_err(|code| zstd_error(at, code))?;
        if (input.pos(), output.pos()) == before {
            return Err(Error::corrupt(
                at,
                format!(
                    "compressed cluster decodes to {} bytes, less than the cluster size {size}",
                    output.pos()
                ),
            ));
        }
    }
    if remaining_hint != 0 {
        // The frame goes on past a full cluster: damaged, as QEMU judges it.
        return Err(Error::corrupt(
            at,
            "compressed cluster decodes to more than the cluster size",
        ));
    }
    Ok(())
}

fn zstd_error(at: u64, code: usize) -> Error {
    Error::corrupt(
        at,
        format!(
            "compressed cluster does not decode (zstd: {})",
            zstd_safe::get_error_name(code)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression as Level, FlushCompress};

    fn deflate_raw(data: &[u8]) -> Vec<u8> {
        let mut compressor = Compress::new_with_window_bits(Level::default(), false, 12);
        let mut out = Vec::with_capacity(data.len() + 1024);
        compressor
            .compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn inflates_with_trailing_bytes_of_the_next_cluster() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 / 3) as u8).collect();
        let mut stored = deflate_raw(&data);
        stored.extend_from_slice(&[0xAB; 300]);
        let mut out = vec![0u8; data.len()];
        decompress(Compression::Zlib, &stored, &mut out, 0).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn zstd_frame_then_garbage() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut stored = zstd::bulk::compress(&data, 3).unwrap();
        stored.extend_from_slice(&[0x55; 100]);
        let mut out = vec![0u8; data.len()];
        decompress(Compression::Zstd, &stored, &mut out, 0).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn short_or_long_output_is_corrupt() {
        let data = vec![3u8; 4096];
        let mut out = vec![0u8; 8192];
        let e = decompress(Compression::Zlib, &deflate_raw(&data), &mut out, 7).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let e = decompress(
            Compression::Zstd,
            &zstd::bulk::compress(&data, 1).unwrap(),
            &mut out,
            7,
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let mut small = vec![0u8; 1024];
        let e = decompress(
            Compression::Zstd,
            &zstd::bulk::compress(&data, 1).unwrap(),
            &mut small,
            7,
        )
        .unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let e = decompress(Compression::Zlib, &[0xff; 64], &mut out, 7).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        let e = decompress(Compression::Zstd, &[0u8; 64], &mut out, 7).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
    }
}
