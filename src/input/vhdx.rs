//! VHDX (Hyper-V): not read yet.

use super::blockmap::BlockTable;
use crate::error::{Error, Result};
use crate::read_at::ReadAt;

/// Opens a VHDX image.
pub fn open(_file: Box<dyn ReadAt>, _max_virtual_size: u64) -> Result<BlockTable> {
    Err(Error::unsupported("VHDX images are not supported yet"))
}
