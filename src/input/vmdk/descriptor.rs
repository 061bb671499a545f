//! The VMDK text descriptor (embedded in a sparse extent): parsed without any I/O, and refused
//! whenever it would make a reader open another file (flat or split extents, several extents,
//! a parent named by `parentFileNameHint` or `parentCID`), the way CVE-2022-47951 leaked host
//! files. Only `monolithicSparse` and `streamOptimized` descriptors of one `SPARSE` extent pass.

use crate::error::{Error, Result};

/// What the embedded descriptor says, once checked to name no other file.
pub struct Descriptor {
    /// The `createType` (`monolithicSparse` or `streamOptimized`).
    pub create_type: String,
    /// The size of the one extent, in sectors.
    pub sectors: u64,
}

/// Parses a descriptor, refusing everything that would need another file.
pub fn parse_descriptor(text: &str) -> Result<Descriptor> {
    let mut create_type = None;
    let mut extents = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"');
            match key.trim() {
                "createType" => create_type = Some(value.to_string()),
                "parentFileNameHint" => {
                    return Err(Error::unsupported(format!(
                        "VMDK with a parent image (parentFileNameHint=\"{value}\") is refused"
                    )))
                }
                "parentCID" if !value.eq_ignore_ascii_case("ffffffff") => {
                    return Err(Error::unsupported(
                        "VMDK with a parent image (parentCID set) is refused",
                    ))
                }
                _ => {}
            }
            continue;
        }
        let mut words = line.split_whitespace();
        if let Some("RW" | "RDONLY" | "NOACCESS") = words.next() {
            let sectors = words.next().and_then(|s| s.parse::<u64>().ok());
            let kind = words.next().unwrap_or("");
            let name = line.find('"').map(|i| &line[i..]).unwrap_or("");
            if kind != "SPARSE" {
                return Err(Error::unsupported(format!(
                    "VMDK extent of type {kind} names another file ({name}); refused"
                )));
            }
            let sectors = sectors
                .ok_or_else(|| Error::corrupt(0, format!("VMDK extent line without a size: {line}")))?;
            extents.push(sectors);
        }
    }
    let create_type = create_type.unwrap_or_default();
    if !matches!(create_type.as_str(), "monolithicSparse" | "streamOptimized") {
        return Err(Error::unsupported(format!(
            "VMDK of type \"{create_type}\" is refused (only monolithicSparse and streamOptimized are read)"
        )));
    }
    match extents.as_slice() {
        [one] => Ok(Descriptor {
            create_type,
            sectors: *one,
        }),
        [] => Err(Error::corrupt(0, "VMDK descriptor lists no extent")),
        many => Err(Error::unsupported(format!(
            "VMDK descriptor lists {} extents: all but one would be other files",
            many.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    const GOOD: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
        createType=\"monolithicSparse\"\n\n# Extent description\nRW 2048 SPARSE \"disk.vmdk\"\n";

    #[test]
    fn a_plain_descriptor_parses() {
        let d = parse_descriptor(GOOD).unwrap();
        assert_eq!(d.sectors, 2048);
        assert_eq!(d.create_type, "monolithicSparse");
    }

    #[test]
    fn descriptors_naming_other_files_are_refused() {
        let cases = [
            GOOD.replace("RW 2048 SPARSE \"disk.vmdk\"", "RW 100 FLAT \"/etc/passwd\" 0"),
            GOOD.replace(
                "parentCID=ffffffff",
                "parentCID=12345678\nparentFileNameHint=\"/etc/shadow\"",
            ),
            format!("{GOOD}RW 2048 SPARSE \"other.vmdk\"\n"),
            GOOD.replace("monolithicSparse", "twoGbMaxExtentSparse"),
        ];
        for case in cases {
            let err = parse_descriptor(&case).err().expect("refused");
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{case}: {err}");
        }
    }
}
