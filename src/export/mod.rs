//! `export`: an archive out to the disk formats other hypervisors and clouds read: raw,
//! qcow2 (KVM, OpenStack), VMDK (VMware, AWS VM Import), VHD (Azure, Virtual PC) and VHDX
//! (Hyper-V).
//!
//! [`export`] validates the request against the archive before writing anything (`plan`:
//! options that do not apply, sizes a format cannot hold, each refused naming the limit), then
//! hands the archive to one module per format. Uncompressed formats plan their whole layout
//! from the archive's index and write data in parallel with positional writes, leaving zeros
//! as holes (`data::write_positional`); compressed ones (qcow2 `-c`, streamOptimized VMDK)
//! compress clusters in parallel a window at a time and write them in order
//! (`data::walk_clusters`). Memory stays within a window of 32 MiB plus the block tables,
//! whatever the disk's size.
//!
//! A file output is written unnamed and appears, fsynced, only when complete
//! (`AtomicFile`); a corrupt chunk, a full disk, a file-size limit or a cancellation leaves
//! nothing. Standard output (`-`) takes the formats written in one pass only: raw and
//! streamOptimized VMDK.

mod allocation;
mod appender;
mod archive_copy;
mod compress;
mod data;
mod options;
mod qcow2;
mod raw;
mod sha256;
mod unique;
mod vhd;
mod vhdx;
mod vmdk;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::archive::reader::ArchiveReader;
use crate::control::Control;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::output::AtomicFile;
use crate::pipeline::with_pool;
use crate::read_at::ReadAt;
use data::Disk;

pub use options::{
    CompressionType, ExportFormat, ExportOptions, Preallocation, Qcow2Compat, Subformat, DEFAULT_CLUSTER_SIZE,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// What an export did. Field names are part of the CLI's `--json` contract.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportReport {
    /// The archive read.
    pub input: String,
    /// The file written (`-` for standard output).
    pub output: String,
    /// The format written (`raw`, `qcow2`, `vmdk`, `vhd`, `vhdx`).
    pub format: String,
    /// Its variant (VMDK, VHD, VHDX).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subformat: Option<String>,
    /// qcow2: the cluster size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_size: Option<u64>,
    /// qcow2: the compat level (`1.1` or `0.10`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compat: Option<String>,
    /// qcow2 with `-c`: the compression type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_type: Option<String>,
    /// The virtual size of the disk written (the archive's, unless the format rounds it up:
    /// then `note` says so).
    pub virtual_size: u64,
    /// Bytes written: the output file's length, or the bytes sent to standard output.
    pub bytes_written: u64,
    /// Wall time.
    pub seconds: f64,
    /// With `sha256`: the SHA-256 of the written file, as `sha256sum` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Anything the user should know about the output, such as a rounded virtual size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Writes the disk in `archive` (with feature `s3`, also an object, `s3://BUCKET/KEY`) to
/// `output` (a path, or `-` for standard output where the format can stream) in
/// `options.format`.
pub fn export(archive: &Path, output: &Path, options: &ExportOptions) -> Result<ExportReport> {
    with_pool(options.threads, || {
        let start = Instant::now();
        // An `s3://BUCKET/KEY` archive is read in place by ranged GETs, as `verify` does.
        #[cfg(feature = "s3")]
        if let Some(object) = crate::remote::open_url(archive)? {
            let reader = ArchiveReader::open(object).map_err(|e| e.in_file(archive))?;
            return export_reader(&reader, archive, output, options, start);
        }
        let reader = ArchiveReader::open_path(archive)?;
        export_reader(&reader, archive, output, options, start)
    })
}

/// [`export`] from an archive already opened (the image library opens it from its store).
/// `input` names it in the report and in errors about its chunks. Runs on the current pool.
pub fn export_reader<R: ReadAt>(
    reader: &ArchiveReader<R>,
    input: &Path,
    output: &Path,
    options: &ExportOptions,
    start: Instant,
) -> Result<ExportReport> {
    let plan = plan(reader.virtual_size(), options).map_err(|e| e.in_file(input))?;
    if plan.format == ExportFormat::Imgpack {
        return archive_copy::copy_archive(reader, input, output, options, start);
    }
    let control = &options.control;
    let disk = Disk { reader, path: input };
    let (bytes_written, sha256) = if output == Path::new("-") {
        if !plan.streams() {
            return Err(Error::invalid_argument(format!(
                "{} is written with seeks, to a file only; standard output (-o -) takes raw and vmdk streamOptimized",
                plan.describe()
            )));
        }
        let stdout = std::io::stdout();
        let mut out = sha256::Hashing::new(stdout, options.sha256);
        let written = write_stream(&disk, &plan, &mut out, control).map_err(|e| e.in_file(output))?;
        out.flush()
            .map_err(|e| Error::io("writing to standard output", e))?;
        (written, out.hex())
    } else {
        let file = AtomicFile::create(output)?;
        write_file(&disk, &plan, file.file(), control).map_err(|e| e.in_file(output))?;
        control.check()?;
        let length = file
            .file()
            .metadata()
            .context("measuring the output", output)?
            .len();
        let sha256 = if options.sha256 {
            Some(sha256::of_file(file.file(), control).map_err(|e| e.in_file(output))?)
        } else {
            None
        };
        file.commit()?;
        (length, sha256)
    };
    Ok(ExportReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        format: plan.format.name().to_string(),
        subformat: plan.subformat.map(|s| s.name().to_string()),
        cluster_size: (plan.format == ExportFormat::Qcow2).then_some(plan.qcow2.cluster_size),
        compat: (plan.format == ExportFormat::Qcow2).then(|| {
            match plan.qcow2.compat {
                Qcow2Compat::V2 => "0.10",
                Qcow2Compat::V3 => "1.1",
            }
            .to_string()
        }),
        compression_type: plan.qcow2.compression.map(|c| {
            match c {
                CompressionType::Zstd => "zstd",
                CompressionType::Zlib => "zlib",
            }
            .to_string()
        }),
        virtual_size: plan.virtual_size,
        bytes_written,
        seconds: start.elapsed().as_secs_f64(),
        sha256,
        note: plan.note,
    })
}

/// An export request checked against the archive: what will be written, before anything is.
#[derive(Debug, Clone)]
struct Plan {
    format: ExportFormat,
    subformat: Option<Subformat>,
    /// The output's virtual size (the archive's, rounded up where the format needs it).
    virtual_size: u64,
    qcow2: qcow2::Settings,
    note: Option<String>,
}

impl Plan {
    fn streams(&self) -> bool {
        matches!(
            (self.format, self.subformat),
            (ExportFormat::Raw, _) | (ExportFormat::Vmdk, Some(Subformat::StreamOptimized))
        )
    }

    fn describe(&self) -> String {
        match self.subformat {
            Some(sub) => format!("{} {}", self.format.name(), sub.name()),
            None => self.format.name().to_string(),
        }
    }
}

/// Checks `options` for a disk of `virtual_size` bytes: every option must apply to the
/// format, and the format must hold the disk.
fn plan(virtual_size: u64, options: &ExportOptions) -> Result<Plan> {
    let format = options.format;
    let qcow2_only = [
        (options.compress, "-c"),
        (options.compression_type.is_some(), "--compression-type"),
        (options.preallocation != Preallocation::Off, "--preallocation"),
        (options.compat != Qcow2Compat::V3, "--compat"),
        (options.cluster_size != DEFAULT_CLUSTER_SIZE, "--cluster-size"),
    ];
    if format != ExportFormat::Qcow2 {
        if let Some((_, flag)) = qcow2_only.iter().find(|(given, _)| *given) {
            return Err(Error::invalid_argument(format!(
                "{flag} applies to qcow2 only, not {}",
                format.name()
            )));
        }
    }
    if options.force_size && format != ExportFormat::Vhd {
        return Err(Error::invalid_argument(format!(
            "--force-size applies to vhd only, not {}",
            format.name()
        )));
    }
    let subformat = match (format, options.subformat) {
        (ExportFormat::Raw | ExportFormat::Qcow2 | ExportFormat::Imgpack, None) => None,
        (ExportFormat::Vmdk, None) => Some(Subformat::StreamOptimized),
        (ExportFormat::Vhd | ExportFormat::Vhdx, None) => Some(Subformat::Dynamic),
        (ExportFormat::Vmdk, Some(s @ (Subformat::StreamOptimized | Subformat::MonolithicSparse)))
        | (ExportFormat::Vhd | ExportFormat::Vhdx, Some(s @ (Subformat::Dynamic | Subformat::Fixed))) => {
            Some(s)
        }
        (_, Some(s)) => {
            return Err(Error::invalid_argument(format!(
                "{} has no subformat {}",
                format.name(),
                s.name()
            )))
        }
    };
    let mut note = None;
    let mut size = virtual_size;
    if !matches!(format, ExportFormat::Raw | ExportFormat::Imgpack) && !size.is_multiple_of(512) {
        size = size.next_multiple_of(512);
        note = Some(format!(
            "virtual size rounded up from {virtual_size} to {size} bytes: {} counts whole 512-byte sectors",
            format.name()
        ));
    }
    if options.force_size && !size.is_multiple_of(MIB) {
        size = size.next_multiple_of(MIB);
        note = Some(format!(
            "virtual size rounded up from {virtual_size} to {size} bytes, a whole MiB, as Azure requires"
        ));
    }
    let limit = |max: u64, what: &str| -> Result<()> {
        if size > max {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("a {size}-byte disk does not fit in {what}"),
            ));
        }
        Ok(())
    };
    if size == 0
        && matches!(
            format,
            ExportFormat::Vmdk | ExportFormat::Vhd | ExportFormat::Vhdx
        )
    {
        // A VMDK of capacity 0 defers to its descriptor, a fixed VHD's lone footer reads as a
        // dynamic disk's copy, and qemu refuses a VHDX of size 0.
        return Err(Error::unsupported(format!(
            "{} cannot hold an empty disk (virtual size 0)",
            format.name()
        )));
    }
    match format {
        ExportFormat::Vhd => limit(2040 * GIB, "a VHD (at most 2040 GiB)")?,
        ExportFormat::Vhdx => limit(64 * TIB, "a VHDX (at most 64 TiB)")?,
        ExportFormat::Vmdk => limit(
            vmdk::MAX_VIRTUAL_SIZE,
            "a VMDK sparse extent (at most 2 TiB - 64 KiB: its grain offsets are 32-bit sector numbers)",
        )?,
        ExportFormat::Raw | ExportFormat::Qcow2 | ExportFormat::Imgpack => {}
    }
    let qcow2 = qcow2::Settings::new(options, size)?;
    Ok(Plan {
        format,
        subformat,
        virtual_size: size,
        qcow2,
        note,
    })
}

/// Writes the planned format into a fresh file.
fn write_file<R: ReadAt>(disk: &Disk<R>, plan: &Plan, file: &File, control: &Control) -> Result<()> {
    let fixed = plan.subformat == Some(Subformat::Fixed);
    match plan.format {
        ExportFormat::Raw => raw::write_file(disk, file, control),
        ExportFormat::Qcow2 => qcow2::write(disk, file, &plan.qcow2, control),
        ExportFormat::Vmdk if plan.subformat == Some(Subformat::MonolithicSparse) => {
            vmdk::write_monolithic(disk, file, plan.virtual_size, control)
        }
        ExportFormat::Vmdk => vmdk::write_stream(
            disk,
            appender::WritebackFile::new(file),
            plan.virtual_size,
            control,
        )
        .map(|_| ()),
        ExportFormat::Vhd => vhd::write(disk, file, plan.virtual_size, fixed, control),
        ExportFormat::Vhdx => vhdx::write(disk, file, plan.virtual_size, fixed, control),
        // Copied by `archive_copy` before any plan is made; never a disk to write.
        ExportFormat::Imgpack => Err(Error::unsupported("an imgpack archive is copied, not written")),
    }
}

/// Writes the planned format (one that streams) to `out`; returns the bytes written.
fn write_stream<R: ReadAt, W: Write + Send>(
    disk: &Disk<R>,
    plan: &Plan,
    out: W,
    control: &Control,
) -> Result<u64> {
    match plan.format {
        ExportFormat::Raw => raw::stream(disk, out, control),
        _ => vmdk::write_stream(disk, out, plan.virtual_size, control),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: ExportFormat) -> ExportOptions {
        ExportOptions {
            format,
            ..ExportOptions::default()
        }
    }

    #[test]
    fn each_format_refuses_what_it_cannot_hold_naming_the_limit() {
        for (format, size, limit) in [
            (ExportFormat::Vhd, 2040 * GIB + 512, "2040 GiB"),
            (ExportFormat::Vmdk, 2040 * GIB + 512, "2 TiB"),
            (ExportFormat::Vhdx, 64 * TIB + 512, "64 TiB"),
        ] {
            let err = plan(size, &options(format)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
            assert!(err.to_string().contains(limit), "{err}");
            plan(size - 512, &options(format)).unwrap();
        }
        // 32 MiB of L1 entries, each mapping 64 KiB * 8192 = 512 MiB: 2 PiB is the edge.
        plan(4 << 20 << 29, &options(ExportFormat::Qcow2)).unwrap();
        let err = plan((4 << 20 << 29) + 512, &options(ExportFormat::Qcow2)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded, "{err}");
    }

    #[test]
    fn sizes_are_rounded_to_sectors_or_to_a_mib_for_azure_and_the_report_says_so() {
        let p = plan(1000, &options(ExportFormat::Vhdx)).unwrap();
        assert_eq!(p.virtual_size, 1024);
        assert!(p.note.unwrap().contains("512-byte sectors"));
        assert_eq!(
            plan(1000, &options(ExportFormat::Raw)).unwrap().virtual_size,
            1000
        );
        let azure = ExportOptions {
            force_size: true,
            ..options(ExportFormat::Vhd)
        };
        let p = plan(MIB + 512, &azure).unwrap();
        assert_eq!(p.virtual_size, 2 * MIB);
        assert!(p.note.unwrap().contains("whole MiB"));
        assert!(plan(2 * MIB, &azure).unwrap().note.is_none());
    }
}
