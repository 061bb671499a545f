//! Shared body of the block-mapped format targets: open the bytes as `format`, then walk the
//! disk as the pipeline does, reading a bounded number of chunks. Any panic is a bug; errors
//! are the expected answer to most inputs.

use imgpack::input::blockmap::open_native;

pub fn exercise(format: &str, data: &[u8]) {
    let Some(Ok(source)) = open_native(format, Box::new(data.to_vec()), 1 << 30) else {
        return;
    };
    let size = source.virtual_size();
    let mut scratch = Vec::new();
    let mut position = 0;
    for _ in 0..16 {
        match source.next_data(position) {
            Ok(Some(at)) if at < size => {
                let len = (64u64 << 10).min(size - at) as usize;
                if source.read(at, len, &mut scratch).is_err() {
                    return;
                }
                assert_eq!(scratch.len(), len);
                position = at + len as u64;
            }
            _ => return,
        }
    }
}
