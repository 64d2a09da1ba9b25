"""Whole, strictly valid AVC files from any stream: a model's output cut by its token budget, or broken.

JPEG's decoder keeps the valid restart intervals and fills the rest grey. An AVC stream cannot be
patched in the middle as freely (each frame refers to the ones before it), so a file keeps the stream's
*clean prefix* (``avc.syntax.CleanPrefix``): every slice up to the first error, or to the end. The frame
it stops inside is then either

- **filled** (``"fill"``, what files are made with): its missing macroblocks are written as one-macroblock
  slices the encoder could have written itself. In a P frame a P_Skip macroblock, which copies the
  reference frame (a skipped macroblock with no neighbour predicts motion 0); in an I frame an
  Intra_16x16 DC macroblock with no coefficients, flat mid-grey like JPEG's fill. Filled slices do not
  deblock, so they are exactly that copy or that grey; or
- **dropped** (``"drop"``): the file ends after the last whole frame.

Either way everything after the first error is dropped. A constrained sample only ever stops inside its
last frame, so it keeps every slice it wrote whole. The counts (macroblocks kept, filled, dropped) go into
the sample's report, and the filled ones are marked on contact sheets.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.codec.avc.bytestream import NAL_IDR, START_CODE, escape
from shared.codec.avc.syntax import P_SLICE, AvcCheck, Params, SliceHeader, se_code, ue_code

PARTIAL_FRAME = ("fill", "drop")  # what becomes of the frame a stream stops inside
I16_DC_NO_CODED = 3  # mb_type I_16x16_2_0_0: DC prediction, no coded luma AC or chroma
P_SKIP_RUN = 1  # mb_skip_run covering the slice's one macroblock
NO_DEBLOCKING = 1  # disable_deblocking_filter_idc
FIRST_IDR = SliceHeader(nal_type=NAL_IDR, nal_ref_idc=3, first_mb=0, slice_type=2, raw_slice_type=7, frame_num=0,
                        idr_pic_id=0, num_ref_idx_active=0, qp=0)


@dataclass(frozen=True)
class Finished:
    """A stream made whole: what a file is made from, and how it was made."""

    stream: bytes
    frames: int  # in ``stream``
    kept: int  # macroblocks of the original stream it keeps
    filled: tuple[tuple[int, int], ...]  # (frame, macroblock) written as filler
    dropped: int  # NAL units of the original stream (one macroblock each, or garbage) it leaves out


def finish(params: Params, stream: bytes, check: AvcCheck, partial_frame: str = "fill") -> Finished:
    """The whole, valid stream made from ``stream`` (judged by ``check``): its clean prefix, the frame it
    stops inside filled or dropped. A stream that is valid and whole comes back as it is."""
    if partial_frame not in PARTIAL_FRAME:
        raise ValueError(f"partial_frame is one of {PARTIAL_FRAME}, not {partial_frame!r}")
    if params.poc_type != 2 or params.redundant_pic_cnt:
        raise ValueError("filler slices are written for x264's baseline parameter sets (POC type 2, no "
                         "redundant pictures)")
    prefix, per_frame = check.clean_prefix, params.macroblocks
    kept_units = prefix.whole_frames * per_frame + prefix.macroblocks
    if prefix.end == len(stream) and not prefix.macroblocks:  # whole (or empty: nothing to finish)
        return Finished(stream, prefix.whole_frames, kept_units, (), 0)
    if partial_frame == "drop" or (not prefix.macroblocks and prefix.whole_frames):
        kept = prefix.whole_frames * per_frame
        return Finished(stream[:prefix.whole_frames_end], prefix.whole_frames, kept, (), check.units - kept)
    frame = prefix.whole_frames
    if prefix.macroblocks:  # finish the frame the prefix stops inside, as that frame's own slices would be
        header, nal_header, references = prefix.frame_header, prefix.nal_header, prefix.references
        assert header is not None
        start, body = prefix.macroblocks, stream[:prefix.end]
    else:  # bytes, but not one clean slice: a whole filled IDR frame, so that there is still a file to look at
        header, nal_header, references = FIRST_IDR, 0x65, 0
        start, body = 0, b"\x00"  # the first unit gets a 4-byte start code
    fillers = b"".join(filler_slice(params, nal_header, header, mb, references) for mb in range(start, per_frame))
    filled = tuple((frame, mb) for mb in range(start, per_frame))
    return Finished(body + fillers, frame + 1, kept_units, filled, check.units - kept_units)


def filler_slice(params: Params, nal_header: int, frame: SliceHeader, macroblock: int, references: int) -> bytes:
    """One NAL unit: a slice of the frame whose first slice header is ``frame``, holding macroblock
    ``macroblock`` as P_Skip (P frames) or flat Intra_16x16 DC (I frames), with the start code."""
    bits = ue_code(macroblock) + ue_code(frame.raw_slice_type) + ue_code(0)  # first_mb, slice_type, PPS 0
    bits += format(frame.frame_num, f"0{params.log2_max_frame_num}b")
    if frame.nal_type == NAL_IDR:
        bits += ue_code(frame.idr_pic_id)
    if frame.slice_type == P_SLICE:
        # the PPS's default count of active references, unless fewer frames are decoded: then one
        bits += "0" if params.num_ref_idx_default <= references else "1" + ue_code(0)
        bits += "0"  # no reference list modification
    if frame.nal_ref_idc:
        bits += "00" if frame.nal_type == NAL_IDR else "0"  # no long-term or adaptive marking
    bits += se_code(0)  # slice_qp_delta
    if params.deblocking_control:
        bits += ue_code(NO_DEBLOCKING)
    if frame.slice_type == P_SLICE:
        bits += ue_code(P_SKIP_RUN)
    else:  # mb_type, intra_chroma_pred_mode DC, mb_qp_delta 0, Intra16x16DCLevel coeff_token TotalCoeff 0 (nC 0)
        bits += ue_code(I16_DC_NO_CODED) + ue_code(0) + se_code(0) + "1"
    bits += "1"  # rbsp_stop_one_bit, then zeros to the byte boundary
    bits += "0" * (-len(bits) % 8)
    rbsp = int(bits, 2).to_bytes(len(bits) // 8, "big")
    return START_CODE + bytes([nal_header]) + escape(rbsp)

