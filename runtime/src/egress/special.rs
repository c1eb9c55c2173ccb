//! The IANA special-purpose address registries, as of their 2025 revisions:
//!
//! - IPv4: <https://www.iana.org/assignments/iana-ipv4-special-registry/>
//! - IPv6: <https://www.iana.org/assignments/iana-ipv6-special-registry/>
//!
//! plus the multicast ranges and the blocks that those registries have
//! since deprecated or that carry an IPv4 address. A block is listed here
//! unless its registry entry says "Globally Reachable: True"; where the
//! registry says "N/A" for a parent block (IETF protocol assignments), the
//! whole block is listed, so its globally reachable anycast members are
//! refused too: a user's endpoint has no reason to be one of them.
//!
//! When the registries change, change this table and the tests beside
//! `is_public` in `egress.rs`, which check one address of every row.

/// What a special-purpose block is, and how an address in it is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never a destination for users' endpoints.
    NotPublic,
    /// Carries an IPv4 address (the last 32 bits), which decides.
    EmbedsV4Low,
    /// 6to4: carries an IPv4 address in bits 16 to 48, which decides.
    EmbedsV4At16,
}

/// IPv4 blocks that are not globally reachable: (first address, prefix
/// length, registry name, RFC).
pub const V4: &[([u8; 4], u8, &str, &str)] = &[
    ([0, 0, 0, 0], 8, "This network", "RFC 791"),
    ([10, 0, 0, 0], 8, "Private-Use", "RFC 1918"),
    ([100, 64, 0, 0], 10, "Shared Address Space", "RFC 6598"),
    ([127, 0, 0, 0], 8, "Loopback", "RFC 1122"),
    ([169, 254, 0, 0], 16, "Link Local", "RFC 3927"),
    ([172, 16, 0, 0], 12, "Private-Use", "RFC 1918"),
    ([192, 0, 0, 0], 24, "IETF Protocol Assignments", "RFC 6890"),
    ([192, 0, 2, 0], 24, "Documentation (TEST-NET-1)", "RFC 5737"),
    (
        [192, 88, 99, 0],
        24,
        "Deprecated (6to4 Relay Anycast)",
        "RFC 7526",
    ),
    ([192, 168, 0, 0], 16, "Private-Use", "RFC 1918"),
    ([198, 18, 0, 0], 15, "Benchmarking", "RFC 2544"),
    (
        [198, 51, 100, 0],
        24,
        "Documentation (TEST-NET-2)",
        "RFC 5737",
    ),
    (
        [203, 0, 113, 0],
        24,
        "Documentation (TEST-NET-3)",
        "RFC 5737",
    ),
    ([224, 0, 0, 0], 4, "Multicast", "RFC 5771"),
    ([240, 0, 0, 0], 4, "Reserved", "RFC 1112"),
    ([255, 255, 255, 255], 32, "Limited Broadcast", "RFC 919"),
];

/// IPv6 blocks: (first address, prefix length, registry name, RFC, kind).
/// Searched in order; the first block that holds an address decides, so
/// narrower blocks come before the wider blocks that contain them.
pub const V6: &[([u16; 8], u8, &str, &str, Kind)] = &[
    (
        [0; 8],
        128,
        "Unspecified Address",
        "RFC 4291",
        Kind::NotPublic,
    ),
    (
        [0, 0, 0, 0, 0, 0, 0, 1],
        128,
        "Loopback Address",
        "RFC 4291",
        Kind::NotPublic,
    ),
    (
        [0, 0, 0, 0, 0, 0xffff, 0, 0],
        96,
        "IPv4-mapped Address",
        "RFC 4291",
        Kind::EmbedsV4Low,
    ),
    (
        [0, 0, 0, 0, 0xffff, 0, 0, 0],
        96,
        "IPv4-translated Address (SIIT)",
        "RFC 2765",
        Kind::EmbedsV4Low,
    ),
    (
        [0; 8],
        96,
        "IPv4-compatible Address (deprecated)",
        "RFC 4291",
        Kind::EmbedsV4Low,
    ),
    // Everything else below 2000::/3 is caught by the global unicast rule
    // in `is_public_v6`; these are listed for their names and tests.
    (
        [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
        96,
        "IPv4-IPv6 Translat.",
        "RFC 6052",
        Kind::EmbedsV4Low,
    ),
    (
        [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
        48,
        "IPv4-IPv6 Translat. (local use)",
        "RFC 8215",
        Kind::NotPublic,
    ),
    (
        [0x100, 0, 0, 0, 0, 0, 0, 0],
        64,
        "Discard-Only Address Block",
        "RFC 6666",
        Kind::NotPublic,
    ),
    (
        [0x100, 0, 0, 1, 0, 0, 0, 0],
        64,
        "Dummy IPv6 Prefix",
        "RFC 9780",
        Kind::NotPublic,
    ),
    (
        [0x2001, 0, 0, 0, 0, 0, 0, 0],
        23,
        "IETF Protocol Assignments",
        "RFC 2928",
        Kind::NotPublic,
    ),
    (
        [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
        32,
        "Documentation",
        "RFC 3849",
        Kind::NotPublic,
    ),
    (
        [0x2002, 0, 0, 0, 0, 0, 0, 0],
        16,
        "6to4",
        "RFC 3056",
        Kind::EmbedsV4At16,
    ),
    (
        [0x3fff, 0, 0, 0, 0, 0, 0, 0],
        20,
        "Documentation",
        "RFC 9637",
        Kind::NotPublic,
    ),
    (
        [0x5f00, 0, 0, 0, 0, 0, 0, 0],
        16,
        "Segment Routing (SRv6) SIDs",
        "RFC 9602",
        Kind::NotPublic,
    ),
    (
        [0xfc00, 0, 0, 0, 0, 0, 0, 0],
        7,
        "Unique-Local",
        "RFC 4193",
        Kind::NotPublic,
    ),
    (
        [0xfe80, 0, 0, 0, 0, 0, 0, 0],
        10,
        "Link-Local Unicast",
        "RFC 4291",
        Kind::NotPublic,
    ),
    (
        [0xfec0, 0, 0, 0, 0, 0, 0, 0],
        10,
        "Site-Local (deprecated)",
        "RFC 3879",
        Kind::NotPublic,
    ),
    (
        [0xff00, 0, 0, 0, 0, 0, 0, 0],
        8,
        "Multicast",
        "RFC 4291",
        Kind::NotPublic,
    ),
];

/// Whether `addr` lies in the block `net/len` (as integers of `bits` bits).
pub fn within(addr: u128, net: u128, len: u8, bits: u32) -> bool {
    if len == 0 {
        return true;
    }
    let shift = bits - u32::from(len);
    (addr >> shift) == (net >> shift)
}
