//! HPACK's Huffman code (RFC 7541 Appendix B), decoded without allocation per string.
//!
//! Why here: `loona-hpack` builds its Huffman decoder (two levels of `HashMap`, 257 inserts) for
//! every Huffman-coded string and walks it bit by bit through hashed lookups; a gRPC request carries
//! several such strings, and that was a tenth of the agent's CPU per call. The code is canonical
//! (codes of one length are consecutive, shorter lengths first, symbols in order within a length),
//! so the lengths alone define it and a few array lookups per bit decode it. Before a block reaches
//! `loona-hpack`, [`unhuffman`] rewrites its Huffman-coded strings as plain ones: the decoder then
//! sees the same fields and applies the same table updates, without its Huffman path.

use std::sync::OnceLock;

/// Code length of each symbol, 0..=255 then EOS (256).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];
const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code as decoding needs it.
struct Code {
    /// Per length: the first code of that length, how many codes have it, and where their
    /// symbols start in `symbols`.
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u32; MAX_LEN + 1],
    /// Symbols ordered by (length, symbol): the order of their codes.
    symbols: [u16; 257],
}

fn code() -> &'static Code {
    static CODE: OnceLock<Code> = OnceLock::new();
    CODE.get_or_init(|| {
        let mut count = [0u32; MAX_LEN + 1];
        for &l in &LENGTHS {
            count[usize::from(l)] += 1;
        }
        let (mut first, mut offset) = ([0u32; MAX_LEN + 1], [0u32; MAX_LEN + 1]);
        let (mut next, mut at) = (0u32, 0u32);
        for len in 1..=MAX_LEN {
            next = (next + count[len - 1]) << 1;
            first[len] = next;
            offset[len] = at;
            at += count[len];
        }
        let mut order: Vec<u16> = (0..=EOS).collect();
        order.sort_by_key(|&s| (LENGTHS[usize::from(s)], s));
        let mut symbols = [0u16; 257];
        symbols.copy_from_slice(&order);
        Code {
            first,
            count,
            offset,
            symbols,
        }
    })
}

/// Decodes a Huffman-coded string onto `out`. Refuses EOS inside the string and padding that is
/// longer than 7 bits or not all ones (RFC 7541 §5.2).
pub(super) fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let c = code();
    let (mut bits, mut len) = (0u32, 0usize);
    for &byte in src {
        for shift in (0..8).rev() {
            bits = bits << 1 | u32::from(byte >> shift & 1);
            len += 1;
            let index = bits.wrapping_sub(c.first[len]);
            if index < c.count[len] {
                let symbol = c.symbols[(c.offset[len] + index) as usize];
                if symbol == EOS {
                    return Err(());
                }
                out.push(symbol as u8);
                (bits, len) = (0, 0);
            } else if len == MAX_LEN {
                // Every 30-bit pattern is a code or has one as a prefix: not reached.
                return Err(());
            }
        }
    }
    if len > 7 || bits != (1 << len) - 1 {
        return Err(());
    }
    Ok(())
}

/// An HPACK integer with an N-bit prefix at `at` (RFC 7541 §5.1): its value and where it ends.
/// `None` when truncated or over 2^32.
fn read_int(block: &[u8], at: usize, prefix: u8) -> Option<(usize, usize)> {
    let max = (1u64 << prefix) - 1;
    let mut value = u64::from(*block.get(at)?) & max;
    let mut end = at + 1;
    if value < max {
        return Some((value as usize, end));
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(end)?;
        end += 1;
        value += u64::from(byte & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return None;
        }
        if byte & 0x80 == 0 {
            return Some((value as usize, end));
        }
        shift += 7;
        if shift > 28 {
            // Continuation bytes past 2^35 (zero ones do not grow the value, so bound the count).
            return None;
        }
    }
}

/// Copies the string literal at `at` onto `out`, as a plain string if it was Huffman-coded.
fn string(block: &[u8], at: usize, out: &mut Vec<u8>, changed: &mut bool) -> Option<usize> {
    let huffman = block.get(at)? & 0x80 != 0;
    let (len, start) = read_int(block, at, 7)?;
    let end = start.checked_add(len)?;
    let bytes = block.get(start..end)?;
    if huffman {
        let mut plain = Vec::with_capacity(len * 8 / 5 + 1);
        decode(bytes, &mut plain).ok()?;
        super::put_int(out, 7, 0, plain.len());
        out.extend_from_slice(&plain);
        *changed = true;
    } else {
        out.extend_from_slice(&block[at..end]);
    }
    Some(end)
}

/// Writes `block` onto `out` with every Huffman-coded string plain, everything else byte for byte.
/// `Some(false)`: nothing was Huffman-coded (use `block` itself); `None`: the block is malformed
/// (hand `block` itself to the decoder, which reports why).
pub(super) fn unhuffman(block: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    let mut at = 0;
    let mut changed = false;
    while at < block.len() {
        let first = block[at];
        if first & 0x80 != 0 || first & 0xe0 == 0x20 {
            // Indexed field (7-bit index) or table size update (5-bit size): no strings.
            let prefix = if first & 0x80 != 0 { 7 } else { 5 };
            let (_, end) = read_int(block, at, prefix)?;
            out.extend_from_slice(&block[at..end]);
            at = end;
            continue;
        }
        // A literal: with incremental indexing (6-bit name index) or without / never indexed
        // (4-bit); index 0 means a literal name follows.
        let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
        let (index, end) = read_int(block, at, prefix)?;
        out.extend_from_slice(&block[at..end]);
        at = end;
        if index == 0 {
            at = string(block, at, out, &mut changed)?;
        }
        at = string(block, at, out, &mut changed)?;
    }
    Some(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lengths give exactly the codes of RFC 7541 Appendix B (as another implementation has
    /// them), so the code is canonical and the table right.
    #[test]
    fn canonical_codes_match_the_rfc_table() {
        let c = code();
        for (rank, &symbol) in c.symbols.iter().enumerate() {
            let len = usize::from(LENGTHS[usize::from(symbol)]);
            let code = c.first[len] + (rank as u32 - c.offset[len]);
            let (want_len, want) =
                httlib_huffman::encoder::table::ENCODE_TABLE[usize::from(symbol)];
            assert_eq!(
                (len, code),
                (usize::from(want_len), want),
                "symbol {symbol}"
            );
        }
    }

    #[test]
    fn decodes_what_an_encoder_wrote_and_refuses_bad_padding_and_eos() {
        let mut all: Vec<u8> = (0..=255).collect();
        all.extend_from_slice(b"/spiffe.workload.SpiffeWorkloadAPI/FetchX509SVID");
        for text in [
            &all[..],
            b"",
            b"a",
            b"application/grpc",
            b"grpc-python/1.70.0",
        ] {
            let mut coded = Vec::new();
            httlib_huffman::encode(text, &mut coded).unwrap();
            let mut out = Vec::new();
            decode(&coded, &mut out).unwrap();
            assert_eq!(out, text);
        }
        // 'a' is 00011 (5 bits): padding 111 is right, 000 and 8 bits of ones are not.
        assert!(decode(&[0b0001_1111], &mut Vec::new()).is_ok());
        assert!(decode(&[0b0001_1000], &mut Vec::new()).is_err());
        assert!(decode(&[0b0001_1111, 0xff], &mut Vec::new()).is_err());
        // EOS (30 ones) inside a string.
        assert!(decode(&[0xff, 0xff, 0xff, 0xfc], &mut Vec::new()).is_err());
    }

    #[test]
    fn unhuffman_keeps_everything_but_the_coding() {
        let mut enc = httlib_hpack::Encoder::default();
        let mut block = Vec::new();
        use httlib_hpack::Encoder as E;
        let fields: [(&[u8], &[u8], u8); 5] = [
            (b":method", b"POST", E::BEST_FORMAT),
            (
                b":path",
                b"/spiffe.workload.SpiffeWorkloadAPI/FetchJWTSVID",
                E::HUFFMAN_VALUE | E::WITH_INDEXING,
            ),
            (
                b"workload.spiffe.io",
                b"true",
                E::HUFFMAN_NAME | E::HUFFMAN_VALUE | E::WITH_INDEXING,
            ),
            (b"workload.spiffe.io", b"true", E::BEST_FORMAT),
            (b"x-plain", b"value", E::HUFFMAN_NAME | E::NEVER_INDEXED),
        ];
        for (name, value, flags) in fields {
            enc.encode((name.to_vec(), value.to_vec(), flags), &mut block)
                .unwrap();
        }
        let mut plain = Vec::new();
        assert_eq!(unhuffman(&block, &mut plain), Some(true));
        let decode_all = |b: &[u8]| {
            let mut d = loona_hpack::Decoder::new();
            d.decode(b).unwrap()
        };
        assert_eq!(decode_all(&plain), decode_all(&block));
        let mut again = Vec::new();
        assert_eq!(unhuffman(&plain, &mut again), Some(false));
        assert_eq!(again, plain);
        // Truncated: refused, so the original goes to the decoder.
        assert_eq!(unhuffman(&block[..block.len() - 1], &mut Vec::new()), None);
        // An integer with endless zero continuation bytes is refused, not shifted past 64 bits.
        let mut endless = vec![0x7f];
        endless.extend(std::iter::repeat_n(0x80, 40));
        endless.push(0x01);
        assert_eq!(unhuffman(&endless, &mut Vec::new()), None);
    }
}
