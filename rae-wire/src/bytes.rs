//! Bounds-checked byte access shared by the packet views.
//!
//! The views check lengths once in `new_checked`; these helpers read and write through `get`
//! anyway, so a mistake in a length check shows up as a debug assertion in tests and fuzzing,
//! and as a zero value (never a panic) in a release build on the router.

use core::ops::Range;

/// A byte range inside a header.
pub(crate) type Field = Range<usize>;

/// The `N` bytes at `at`, or zeros if they are not there.
pub(crate) fn array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let src = buf.get(at..at.saturating_add(N));
    debug_assert!(
        src.is_some(),
        "read of {N} bytes at {at} past a checked length"
    );
    if let Some(src) = src {
        out.copy_from_slice(src);
    }
    out
}

pub(crate) fn u8_at(buf: &[u8], at: usize) -> u8 {
    let [b] = array::<1>(buf, at);
    b
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array(buf, at))
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(array(buf, at))
}

/// The bytes of `range`, or an empty slice if they are not there.
pub(crate) fn slice(buf: &[u8], range: Field) -> &[u8] {
    let got = buf.get(range.clone());
    debug_assert!(got.is_some(), "slice {range:?} past a checked length");
    got.unwrap_or(&[])
}

/// The bytes from `start` to the end, or an empty slice if `start` is past the end.
pub(crate) fn rest(buf: &[u8], start: usize) -> &[u8] {
    let got = buf.get(start..);
    debug_assert!(got.is_some(), "rest from {start} past a checked length");
    got.unwrap_or(&[])
}

/// Copies `data` to `at`; the caller has checked the buffer is long enough.
pub(crate) fn put(buf: &mut [u8], at: usize, data: &[u8]) {
    let dst = buf.get_mut(at..at.saturating_add(data.len()));
    debug_assert!(
        dst.is_some(),
        "write of {} bytes at {at} past a checked length",
        data.len()
    );
    if let Some(dst) = dst {
        dst.copy_from_slice(data);
    }
}

pub(crate) fn put_u8(buf: &mut [u8], at: usize, value: u8) {
    put(buf, at, &[value]);
}

pub(crate) fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    put(buf, at, &value.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    put(buf, at, &value.to_be_bytes());
}

/// The mutable bytes from `start` to the end (empty if `start` is past the end).
pub(crate) fn rest_mut(buf: &mut [u8], start: usize) -> &mut [u8] {
    let len = buf.len();
    debug_assert!(start <= len, "rest_mut from {start} past a buffer of {len}");
    buf.get_mut(start.min(len)..).unwrap_or_default()
}

/// The mutable bytes of `range` (empty if they are not there).
pub(crate) fn slice_mut(buf: &mut [u8], range: Field) -> &mut [u8] {
    let len = buf.len();
    debug_assert!(
        range.end <= len,
        "slice_mut {range:?} past a buffer of {len}"
    );
    buf.get_mut(range).unwrap_or_default()
}
