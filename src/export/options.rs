//! What `export` can be asked for: the output formats and their options, each parsed from the
//! names qemu-img uses (`-O vpc` is accepted for `vhd`, `--compat 0.10` for qcow2 version 2).

use std::str::FromStr;

use crate::control::Control;

/// The default qcow2 cluster size (64 KiB), as qemu-img's.
pub const DEFAULT_CLUSTER_SIZE: u64 = 64 << 10;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// The raw disk, sparse.
    Raw,
    /// QEMU's qcow2.
    Qcow2,
    /// VMware's VMDK.
    Vmdk,
    /// Microsoft's VHD (qemu-img's `vpc`).
    Vhd,
    /// Microsoft's VHDX.
    Vhdx,
    /// imgpack's own single-file archive, byte for byte (`-O imgpack`): what a
    /// self-contained library image stores, or what a deduplicated one's index and chunks make.
    Imgpack,
}

impl ExportFormat {
    /// The name in reports (`vhd` for VHD, whatever it was asked as).
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Raw => "raw",
            ExportFormat::Qcow2 => "qcow2",
            ExportFormat::Vmdk => "vmdk",
            ExportFormat::Vhd => "vhd",
            ExportFormat::Vhdx => "vhdx",
            ExportFormat::Imgpack => "imgpack",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "raw" => ExportFormat::Raw,
            "qcow2" => ExportFormat::Qcow2,
            "vmdk" => ExportFormat::Vmdk,
            "vhd" | "vpc" => ExportFormat::Vhd,
            "vhdx" => ExportFormat::Vhdx,
            "imgpack" => ExportFormat::Imgpack,
            _ => {
                return Err(format!(
                    "unknown format {text:?} (raw, qcow2, vmdk, vhd or vpc, vhdx, imgpack)"
                ))
            }
        })
    }
}

/// A format's variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subformat {
    /// VMDK: deflate-compressed grains with markers, written in one pass (streams to a pipe).
    StreamOptimized,
    /// VMDK: plain grains with grain tables up front.
    MonolithicSparse,
    /// VHD, VHDX: blocks allocated only where the disk holds data.
    Dynamic,
    /// VHD, VHDX: every block allocated (the file is still written sparse).
    Fixed,
}

impl Subformat {
    /// The name as qemu-img spells it.
    pub fn name(self) -> &'static str {
        match self {
            Subformat::StreamOptimized => "streamOptimized",
            Subformat::MonolithicSparse => "monolithicSparse",
            Subformat::Dynamic => "dynamic",
            Subformat::Fixed => "fixed",
        }
    }
}

impl FromStr for Subformat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Ok(match text {
            "streamOptimized" => Subformat::StreamOptimized,
            "monolithicSparse" => Subformat::MonolithicSparse,
            "dynamic" => Subformat::Dynamic,
            "fixed" => Subformat::Fixed,
            _ => {
                return Err(format!(
                    "unknown subformat {text:?} (streamOptimized, monolithicSparse, dynamic, fixed)"
                ))
            }
        })
    }
}

/// The qcow2 version, by qemu-img's `compat` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qcow2Compat {
    /// `0.10`: version 2, for very old readers (zlib compression only).
    V2,
    /// `1.1`: version 3. The default.
    #[default]
    V3,
}

impl FromStr for Qcow2Compat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "0.10" | "v2" => Ok(Qcow2Compat::V2),
            "1.1" | "v3" => Ok(Qcow2Compat::V3),
            _ => Err(format!("unknown qcow2 compat level {text:?} (0.10 or 1.1)")),
        }
    }
}

/// How qcow2 clusters are compressed with `-c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// zstd (qcow2 version 3 only); the default.
    Zstd,
    /// deflate, which every qcow2 reader knows.
    Zlib,
}

impl FromStr for CompressionType {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "zstd" => Ok(CompressionType::Zstd),
            "zlib" => Ok(CompressionType::Zlib),
            _ => Err(format!("unknown compression type {text:?} (zstd or zlib)")),
        }
    }
}

/// qcow2 preallocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Only clusters holding data are allocated. The default.
    #[default]
    Off,
    /// Every cluster is allocated and mapped (its zeros left as holes in the file), as
    /// qemu-img's `preallocation=metadata`.
    Metadata,
}

impl FromStr for Preallocation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Preallocation::Off),
            "metadata" => Ok(Preallocation::Metadata),
            _ => Err(format!("unknown preallocation {text:?} (off or metadata)")),
        }
    }
}

/// Options for [`export`](super::export).
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The output format. Default raw.
    pub format: ExportFormat,
    /// VMDK: streamOptimized (default) or monolithicSparse; VHD and VHDX: dynamic (default) or
    /// fixed. `None` takes the format's default.
    pub subformat: Option<Subformat>,
    /// qcow2 version. Default 3.
    pub compat: Qcow2Compat,
    /// qcow2 cluster size, a power of two from 512 B to 2 MiB. Default 64 KiB.
    pub cluster_size: u64,
    /// qcow2: compress clusters. Default off.
    pub compress: bool,
    /// qcow2 compression; `None` is zstd for version 3 and zlib for version 2.
    pub compression_type: Option<CompressionType>,
    /// qcow2 preallocation. Default off.
    pub preallocation: Preallocation,
    /// VHD: round the virtual size up to a whole MiB, as Azure requires (reported in `note`).
    /// Default off: the size is kept exact (rounded to a sector only).
    pub force_size: bool,
    /// Also compute the SHA-256 of the written file (a second pass over it). Default off.
    pub sha256: bool,
    /// Worker threads; `None` uses the shared pool. Default `None`.
    pub threads: Option<usize>,
    /// Cancellation and progress.
    pub control: Control,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            format: ExportFormat::Raw,
            subformat: None,
            compat: Qcow2Compat::V3,
            cluster_size: DEFAULT_CLUSTER_SIZE,
            compress: false,
            compression_type: None,
            preallocation: Preallocation::Off,
            force_size: false,
            sha256: false,
            threads: None,
            control: Control::default(),
        }
    }
}
