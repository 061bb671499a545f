//! Decodes a compressed input with imgpack's own decoders and discards the result, printing
//! the bytes and seconds: the serial part of a conversion, to set beside `pigz -dc` or
//! `xz -T2 -dc` when measuring (`cargo run --release --example decode -- disk.raw.gz`).

use std::io::Read;
use std::time::Instant;

fn main() -> Result<(), imgpack::Error> {
    let path = std::env::args_os().nth(1).expect("usage: decode FILE");
    let start = Instant::now();
    let opened = imgpack::input::open(path.as_ref(), &imgpack::input::OpenOptions::default())?;
    let format = opened.format_name();
    let imgpack::input::Body::Stream(mut reader) = opened.body else {
        eprintln!("{format}: not a stream");
        return Ok(());
    };
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut buffer)
            .map_err(imgpack::input::stream::unwrap_io)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    println!(
        "{format}: {total} bytes in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
