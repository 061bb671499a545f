//! The handshake: "Fixed newstyle negotiation" and "Option haggling" of the NBD protocol
//! document, one function per option, every length from the wire checked before use.
//!
//! Nothing the client sends is used as anything but a string compared with the export's name
//! or the meta-context names: no option can make the server open a file.

use std::io::{self, Read, Write};

use super::wire::*;

/// Largest option payload accepted (NBD strings are at most 4 KiB; a few of them fit).
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Options a client may send before it must choose an export: past this it is wasting the
/// server's time ("if a server believes a client's behaviour constitutes a denial of service,
/// it MAY initiate a hard disconnect").
pub const MAX_OPTIONS: usize = 256;
/// Queries in one meta-context option.
const MAX_QUERIES: u32 = 128;
/// The id of `base:allocation` in block-status replies.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// What the server offers, as the handshake needs it.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// The export's name ("" by default).
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Transmission flags (`NBD_FLAG_SEND_DF` is dropped for a client without structured
    /// replies).
    pub flags: u16,
    /// Largest request payload accepted.
    pub max_payload: u32,
}

/// What the client and server agreed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Structured replies ("`NBD_OPT_STRUCTURED_REPLY`").
    pub structured: bool,
    /// `base:allocation` selected ("`NBD_OPT_SET_META_CONTEXT`").
    pub base_allocation: bool,
}

/// How the handshake ended.
#[derive(Debug)]
pub enum Outcome {
    /// The client chose the export: go on to transmission.
    Transmission(Negotiated),
    /// The client went away or aborted, or was refused.
    Closed,
}

/// Runs the handshake on `stream` for `export`. An `Err` is a broken connection or a client
/// breaking the protocol badly enough to be cut off (a hard disconnect).
pub fn handshake<S: Read + Write>(stream: &mut S, export: &ExportInfo) -> io::Result<Outcome> {
    // "Newstyle negotiation": NBDMAGIC, IHAVEOPT, handshake flags; the client's flags.
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes());
    stream.write_all(&greeting)?;
    stream.flush()?;
    let mut client_flags = [0u8; 4];
    stream.read_exact(&mut client_flags)?;
    let client_flags = u32::from_be_bytes(client_flags);
    // "the server MUST close the TCP connection if it does not recognize the client's flags"
    if client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0 {
        return Err(protocol_error("unknown client flags"));
    }
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;
    let mut negotiated = Negotiated::default();
    for _ in 0..MAX_OPTIONS {
        let header = OptionHeader::read(stream)?;
        if header.magic != IHAVEOPT {
            return Err(protocol_error("option without the IHAVEOPT magic"));
        }
        if header.length > MAX_OPTION_LEN {
            return Err(protocol_error("option data too long"));
        }
        let mut data = vec![0u8; header.length as usize];
        stream.read_exact(&mut data)?;
        let option = header.option;
        let next = match option {
            NBD_OPT_EXPORT_NAME => opt_export_name(stream, export, &data, no_zeroes, negotiated)?,
            NBD_OPT_ABORT => {
                // "The client can send (and the server can reply to) an NBD_OPT_ABORT."
                write_option_reply(stream, option, NBD_REP_ACK, &[])?;
                Some(Outcome::Closed)
            }
            NBD_OPT_LIST => {
                opt_list(stream, export, &data)?;
                None
            }
            NBD_OPT_INFO | NBD_OPT_GO => opt_info_go(stream, export, option, &data, negotiated)?,
            NBD_OPT_STRUCTURED_REPLY => {
                opt_structured_reply(stream, &data, &mut negotiated)?;
                None
            }
            NBD_OPT_LIST_META_CONTEXT | NBD_OPT_SET_META_CONTEXT => {
                opt_meta_context(stream, export, option, &data, &mut negotiated)?;
                None
            }
            // STARTTLS and every option this server does not know: "NBD_REP_ERR_UNSUP".
            _ => {
                write_option_reply(stream, option, NBD_REP_ERR_UNSUP, &[])?;
                None
            }
        };
        stream.flush()?;
        if let Some(outcome) = next {
            return Ok(outcome);
        }
    }
    Err(protocol_error("too many options"))
}

/// "`NBD_OPT_EXPORT_NAME` (1)": the name is the whole payload; the reply is the size, the
/// transmission flags and (unless `NBD_FLAG_C_NO_ZEROES`) 124 zeros. An unknown name can only
/// be refused by closing the connection.
fn opt_export_name<S: Write>(
    stream: &mut S,
    export: &ExportInfo,
    data: &[u8],
    no_zeroes: bool,
    negotiated: Negotiated,
) -> io::Result<Option<Outcome>> {
    if data.len() > MAX_STRING as usize || data != export.name.as_bytes() {
        return Ok(Some(Outcome::Closed));
    }
    let mut reply = Vec::with_capacity(134);
    reply.extend_from_slice(&export.size.to_be_bytes());
    reply.extend_from_slice(&transmission_flags(export, negotiated).to_be_bytes());
    if !no_zeroes {
        reply.extend_from_slice(&[0u8; 124]);
    }
    stream.write_all(&reply)?;
    Ok(Some(Outcome::Transmission(negotiated)))
}

/// "`NBD_OPT_LIST` (3)": no payload; one `NBD_REP_SERVER` per export, then `NBD_REP_ACK`.
fn opt_list<S: Write>(stream: &mut S, export: &ExportInfo, data: &[u8]) -> io::Result<()> {
    if !data.is_empty() {
        return write_option_reply(stream, NBD_OPT_LIST, NBD_REP_ERR_INVALID, &[]);
    }
    let mut server = Vec::new();
    server.extend_from_slice(&(export.name.len() as u32).to_be_bytes());
    server.extend_from_slice(export.name.as_bytes());
    write_option_reply(stream, NBD_OPT_LIST, NBD_REP_SERVER, &server)?;
    write_option_reply(stream, NBD_OPT_LIST, NBD_REP_ACK, &[])
}

/// "`NBD_OPT_INFO` (6) and `NBD_OPT_GO` (7)": payload = name length (32 bits), name, number of
/// information requests (16 bits), the requests (16 bits each). Replies: `NBD_INFO_EXPORT`
/// always, `NBD_INFO_NAME` and `NBD_INFO_BLOCK_SIZE` if asked for, then `NBD_REP_ACK`; `GO`
/// then enters transmission.
fn opt_info_go<S: Write>(
    stream: &mut S,
    export: &ExportInfo,
    option: u32,
    data: &[u8],
    negotiated: Negotiated,
) -> io::Result<Option<Outcome>> {
    let Some((name, requests)) = parse_info_request(data) else {
        write_option_reply(stream, option, NBD_REP_ERR_INVALID, &[])?;
        return Ok(None);
    };
    if name != export.name.as_bytes() {
        write_option_reply(stream, option, NBD_REP_ERR_UNKNOWN, &[])?;
        return Ok(None);
    }
    let mut info = Vec::with_capacity(12);
    info.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
    info.extend_from_slice(&export.size.to_be_bytes());
    info.extend_from_slice(&transmission_flags(export, negotiated).to_be_bytes());
    write_option_reply(stream, option, NBD_REP_INFO, &info)?;
    if requests.contains(&NBD_INFO_NAME) {
        let mut name_info = NBD_INFO_NAME.to_be_bytes().to_vec();
        name_info.extend_from_slice(export.name.as_bytes());
        write_option_reply(stream, option, NBD_REP_INFO, &name_info)?;
    }
    if requests.contains(&NBD_INFO_BLOCK_SIZE) {
        // Minimum 1 (any alignment), preferred 4 KiB (the archive's block), maximum payload.
        let mut sizes = NBD_INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        for value in [1u32, 4096, export.max_payload] {
            sizes.extend_from_slice(&value.to_be_bytes());
        }
        write_option_reply(stream, option, NBD_REP_INFO, &sizes)?;
    }
    write_option_reply(stream, option, NBD_REP_ACK, &[])?;
    Ok((option == NBD_OPT_GO).then_some(Outcome::Transmission(negotiated)))
}

/// The export's transmission flags for this client: `NBD_FLAG_SEND_DF` only once structured
/// replies are negotiated ("the server MUST leave this flag clear if structured replies have
/// not been negotiated").
fn transmission_flags(export: &ExportInfo, negotiated: Negotiated) -> u16 {
    if negotiated.structured {
        export.flags
    } else {
        export.flags & !NBD_FLAG_SEND_DF
    }
}

/// The name and information requests of an `NBD_OPT_INFO`/`NBD_OPT_GO` payload, if its
/// lengths add up exactly.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let name_len = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?);
    if name_len > MAX_STRING {
        return None;
    }
    let name_end = 4 + name_len as usize;
    let name = data.get(4..name_end)?;
    let count = u16::from_be_bytes(data.get(name_end..name_end + 2)?.try_into().ok()?) as usize;
    let list = data.get(name_end + 2..)?;
    if list.len() != 2 * count {
        return None;
    }
    let requests = list
        .chunks_exact(2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .collect();
    Some((name, requests))
}

/// "`NBD_OPT_STRUCTURED_REPLY` (8)": no payload.
fn opt_structured_reply<S: Write>(
    stream: &mut S,
    data: &[u8],
    negotiated: &mut Negotiated,
) -> io::Result<()> {
    if !data.is_empty() {
        return write_option_reply(stream, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_INVALID, &[]);
    }
    negotiated.structured = true;
    write_option_reply(stream, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, &[])
}

/// "`NBD_OPT_LIST_META_CONTEXT` (9) and `NBD_OPT_SET_META_CONTEXT` (10)": payload = export name
/// length (32 bits), name, number of queries (32 bits), each query's length (32 bits) and
/// string. Only `base:allocation` exists; it is matched by itself and (listing) by `base:`
/// and by an empty query list. Requires structured replies.
fn opt_meta_context<S: Write>(
    stream: &mut S,
    export: &ExportInfo,
    option: u32,
    data: &[u8],
    negotiated: &mut Negotiated,
) -> io::Result<()> {
    let set = option == NBD_OPT_SET_META_CONTEXT;
    // "NBD_OPT_SET_META_CONTEXT ... replaces all previously selected contexts", also when it
    // fails: a failed SET leaves none selected.
    if set {
        negotiated.base_allocation = false;
    }
    if !negotiated.structured {
        return write_option_reply(stream, option, NBD_REP_ERR_INVALID, &[]);
    }
    let Some((name, queries)) = parse_meta_request(data) else {
        return write_option_reply(stream, option, NBD_REP_ERR_INVALID, &[]);
    };
    if name != export.name.as_bytes() {
        return write_option_reply(stream, option, NBD_REP_ERR_UNKNOWN, &[]);
    }
    let matches = if set {
        queries.iter().any(|q| *q == BASE_ALLOCATION.as_bytes())
    } else {
        queries.is_empty()
            || queries
                .iter()
                .any(|q| *q == b"base:" || *q == BASE_ALLOCATION.as_bytes())
    };
    if set {
        negotiated.base_allocation = matches;
    }
    if matches {
        // In reply to LIST the id carries no meaning; it is zero.
        let id = if set { BASE_ALLOCATION_ID } else { 0 };
        let mut context = id.to_be_bytes().to_vec();
        context.extend_from_slice(BASE_ALLOCATION.as_bytes());
        write_option_reply(stream, option, NBD_REP_META_CONTEXT, &context)?;
    }
    write_option_reply(stream, option, NBD_REP_ACK, &[])
}

/// The export name and queries of a meta-context payload, if its lengths add up exactly.
fn parse_meta_request(data: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let u32_at =
        |at: usize| -> Option<u32> { Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?)) };
    let name_len = u32_at(0)?;
    if name_len > MAX_STRING {
        return None;
    }
    let mut at = 4 + name_len as usize;
    let name = data.get(4..at)?;
    let count = u32_at(at)?;
    if count > MAX_QUERIES {
        return None;
    }
    at += 4;
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u32_at(at)?;
        if len > MAX_STRING {
            return None;
        }
        let start = at + 4;
        at = start + len as usize;
        queries.push(data.get(start..at)?);
    }
    (at == data.len()).then_some((name, queries))
}

/// A client that broke the protocol: the connection is closed.
pub fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("NBD protocol error: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_requests_must_add_up() {
        let mut good = 3u32.to_be_bytes().to_vec();
        good.extend_from_slice(b"abc");
        good.extend_from_slice(&1u16.to_be_bytes());
        good.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&good),
            Some((&b"abc"[..], vec![NBD_INFO_BLOCK_SIZE]))
        );
        assert_eq!(parse_info_request(&good[..good.len() - 1]), None);
        let mut long = good.clone();
        long.push(0);
        assert_eq!(parse_info_request(&long), None);
        let mut huge = u32::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(parse_info_request(&huge), None);
    }

    #[test]
    fn meta_requests_must_add_up() {
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&15u32.to_be_bytes());
        data.extend_from_slice(b"base:allocation");
        assert_eq!(
            parse_meta_request(&data),
            Some((&b""[..], vec![&b"base:allocation"[..]]))
        );
        assert_eq!(parse_meta_request(&data[..data.len() - 1]), None);
        let mut many = 0u32.to_be_bytes().to_vec();
        many.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_meta_request(&many), None);
    }
}
