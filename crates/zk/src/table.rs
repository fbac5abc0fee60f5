//! The framing shared by bulk tables (zk-protocol.md §7.1): u32 byte count, then fixed-size records whose size
//! is not announced and has to be inferred.

use crate::error::CodecError;

/// A family of record layouts told apart by their size.
pub(crate) trait Layout: Copy + 'static {
    const WHAT: &'static str;
    /// Candidates, most likely first, used when the count hint does not decide.
    const PREFERENCE: &'static [Self];
    fn size(self) -> usize;
}

/// Checks the table header and picks the layout: the size `T / count` when it is a known one, otherwise the
/// candidate dividing `T` that is closest to `T / count` (or the most likely one without a count).
pub(crate) fn split<L: Layout>(
    buf: &[u8],
    count_hint: Option<usize>,
) -> Result<(L, std::slice::ChunksExact<'_, u8>), CodecError> {
    let Some(head) = buf.get(..4) else {
        return Err(CodecError::Short { len: buf.len(), need: 4 });
    };
    let declared = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let body = &buf[4..];
    if declared != body.len() {
        return Err(CodecError::SizeMismatch { what: L::WHAT, declared, actual: body.len() });
    }
    let layout = infer::<L>(body.len(), count_hint).ok_or(CodecError::UnknownRecordSize {
        what: L::WHAT,
        len: body.len(),
        hint: count_hint,
    })?;
    Ok((layout, body.chunks_exact(layout.size())))
}

fn infer<L: Layout>(len: usize, count_hint: Option<usize>) -> Option<L> {
    if len == 0 {
        return L::PREFERENCE.first().copied();
    }
    let dividing = || L::PREFERENCE.iter().copied().filter(|l| len.is_multiple_of(l.size()));
    match count_hint.filter(|&c| c > 0) {
        Some(count) => {
            if len.is_multiple_of(count)
                && let Some(exact) = dividing().find(|l| l.size() == len / count)
            {
                return Some(exact);
            }
            let per = len / count;
            dividing().min_by_key(|l| l.size().abs_diff(per))
        }
        None => dividing().next(),
    }
}
