//! Character classes for the hand-written pre-tokenizer regexes and the GPT-2
//! byte-to-unicode mapping.
//!
//! The published patterns use `\p{L}` (General_Category=Letter), `\p{N}`
//! (General_Category=Number) and `\s` (White_Space). `core` offers
//! `char::is_numeric` (exactly `\p{N}`: Nd | Nl | No) and `char::is_whitespace`
//! (exactly White_Space), but only `char::is_alphabetic` (the *Alphabetic*
//! property), which is `\p{L}` plus Nl plus Other_Alphabetic (mostly combining
//! vowel signs of Indic / Arabic / SE-Asian scripts, Mn/Mc, and the circled
//! letters, So). [`is_letter`] therefore removes those: `is_numeric` removes
//! Nl, and `NON_LETTER_ALPHABETIC` lists the Other_Alphabetic code points that
//! are not letters (generated from Unicode 14 general categories against
//! `char::is_alphabetic`; code points assigned after Unicode 14 are taken as
//! letters when `core` calls them alphabetic).

/// Packed ranges `(start << 8) | (len - 1)`, sorted, non-overlapping.
static NON_LETTER_ALPHABETIC: [u32; 234] = [
    0x0034500, 0x003630C, 0x005B00D, 0x005BF00, 0x005C101, 0x005C401, 0x005C700, 0x006100A, 0x0064B0C, 0x0065906, 0x0067000, 0x006D606,
    0x006E103, 0x006E701, 0x006ED00, 0x0071100, 0x007300F, 0x007A60A, 0x0081601, 0x0081B08, 0x0082502, 0x0082903, 0x008D40B, 0x008E306,
    0x008F013, 0x0093A01, 0x0093E0E, 0x0094E01, 0x0095502, 0x0096201, 0x0098102, 0x009BE06, 0x009C701, 0x009CB01, 0x009D700, 0x009E201,
    0x00A0102, 0x00A3E04, 0x00A4701, 0x00A4B01, 0x00A5100, 0x00A7001, 0x00A7500, 0x00A8102, 0x00ABE07, 0x00AC702, 0x00ACB01, 0x00AE201,
    0x00AFA02, 0x00B0102, 0x00B3E06, 0x00B4701, 0x00B4B01, 0x00B5601, 0x00B6201, 0x00B8200, 0x00BBE04, 0x00BC602, 0x00BCA02, 0x00BD700,
    0x00C0004, 0x00C3E06, 0x00C4602, 0x00C4A02, 0x00C5501, 0x00C6201, 0x00C8102, 0x00CBE06, 0x00CC602, 0x00CCA02, 0x00CD501, 0x00CE201,
    0x00D0003, 0x00D3E06, 0x00D4602, 0x00D4A02, 0x00D5700, 0x00D6201, 0x00D8102, 0x00DCF05, 0x00DD600, 0x00DD807, 0x00DF201, 0x00E3100,
    0x00E3406, 0x00E4D00, 0x00EB100, 0x00EB405, 0x00EBB01, 0x00ECD00, 0x00F7112, 0x00F8D0A, 0x00F9923, 0x0102B0B, 0x0103800, 0x0103B03,
    0x0105603, 0x0105E02, 0x0106202, 0x0106706, 0x0107103, 0x010820B, 0x0108F00, 0x0109A03, 0x0171201, 0x0173201, 0x0175201, 0x0177201,
    0x017B612, 0x0188501, 0x018A900, 0x019200B, 0x0193008, 0x01A1704, 0x01A5509, 0x01A6113, 0x01ABF01, 0x01ACC02, 0x01B0004, 0x01B350E,
    0x01B8002, 0x01BA108, 0x01BAC01, 0x01BE70A, 0x01C2412, 0x01DD321, 0x024B633, 0x02DE01F, 0x0A67407, 0x0A69E01, 0x0A80200, 0x0A80B00,
    0x0A82304, 0x0A88001, 0x0A8B40F, 0x0A8C500, 0x0A8FF00, 0x0A92604, 0x0A9470B, 0x0A98003, 0x0A9B40B, 0x0A9E500, 0x0AA290D, 0x0AA4300,
    0x0AA4C01, 0x0AA7B02, 0x0AAB000, 0x0AAB202, 0x0AAB701, 0x0AABE00, 0x0AAEB04, 0x0AAF500, 0x0ABE307, 0x0FB1E00, 0x1037604, 0x10A0102,
    0x10A0501, 0x10A0C03, 0x10D2403, 0x10EAB01, 0x1100002, 0x110380D, 0x1107301, 0x1108002, 0x110B008, 0x110C200, 0x1110002, 0x111270B,
    0x1114501, 0x1118002, 0x111B30C, 0x111CE01, 0x1122C08, 0x1123700, 0x1123E00, 0x112DF09, 0x1130003, 0x1133E06, 0x1134701, 0x1134B01,
    0x1135700, 0x1136201, 0x114350C, 0x1144302, 0x114B011, 0x115AF06, 0x115B806, 0x115DC01, 0x116300E, 0x1164000, 0x116AB0A, 0x1171D0D,
    0x1182C0C, 0x1193005, 0x1193701, 0x1193B01, 0x1194000, 0x1194200, 0x119D106, 0x119DA05, 0x119E400, 0x11A0109, 0x11A3504, 0x11A3B03,
    0x11A510A, 0x11A8A0D, 0x11C2F07, 0x11C3806, 0x11C9215, 0x11CA90D, 0x11D3105, 0x11D3A00, 0x11D3C01, 0x11D3F02, 0x11D4300, 0x11D4700,
    0x11D8A04, 0x11D9001, 0x11D9303, 0x11EF303, 0x16F4F00, 0x16F5136, 0x16F8F03, 0x16FF001, 0x1BC9E00, 0x1E00006, 0x1E00810, 0x1E01B06,
    0x1E02301, 0x1E02604, 0x1E94700, 0x1F13019, 0x1F15019, 0x1F17019,
];

/// `\p{L}`.
#[inline]
pub fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    if !c.is_alphabetic() || c.is_numeric() {
        return false;
    }
    let cp = c as u32;
    // Last range whose start <= cp.
    let idx = NON_LETTER_ALPHABETIC.partition_point(|&e| (e >> 8) <= cp);
    if idx == 0 {
        return true;
    }
    let e = NON_LETTER_ALPHABETIC[idx - 1];
    let (start, len) = (e >> 8, (e & 0xFF) + 1);
    !(cp >= start && cp < start + len)
}

/// `\p{N}`.
#[inline]
pub fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    c.is_numeric()
}

/// `\s`.
#[inline]
pub fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// GPT-2 `bytes_to_unicode()`: the printable character that stands for byte
/// `b` in byte-level BPE vocabularies (`'Ġ'` for `b' '`, `'Ċ'` for `b'\n'`).
pub const fn gpt2_byte_to_char(b: u8) -> char {
    let b32 = b as u32;
    if is_gpt2_printable(b) {
        return match char::from_u32(b32) {
            Some(c) => c,
            None => '\u{FFFD}',
        };
    }
    // Non-printable bytes map to 256, 257, ... in increasing byte order.
    let mut n = 0u32;
    let mut i = 0u32;
    while i < b32 {
        if !is_gpt2_printable(i as u8) {
            n += 1;
        }
        i += 1;
    }
    match char::from_u32(256 + n) {
        Some(c) => c,
        None => '\u{FFFD}',
    }
}

/// Inverse of [`gpt2_byte_to_char`]; `None` for characters outside the
/// 256-character alphabet.
pub const fn gpt2_char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        if is_gpt2_printable(cp as u8) {
            return Some(cp as u8);
        }
        return None;
    }
    if cp >= 256 + 68 {
        return None;
    }
    // The (cp-256)-th non-printable byte.
    let mut k = cp - 256;
    let mut b = 0u32;
    while b < 256 {
        if !is_gpt2_printable(b as u8) {
            if k == 0 {
                return Some(b as u8);
            }
            k -= 1;
        }
        b += 1;
    }
    None
}

const fn is_gpt2_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}
