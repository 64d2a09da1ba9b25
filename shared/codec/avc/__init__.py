"""AVC (H.264): video clips as the stripped NAL streams Avc-LM reads and writes.

- ``profile.py``: the profile (frames at a fixed rate -> libx264 -> stripped stream; restore, decode, MP4);
- ``bytestream.py``: the Annex-B framing every module uses (start codes, NAL units and types, emulation
  prevention, the first slice of a picture);
- ``syntax.py``: bit-level reading and Exp-Golomb writing, and the strict check of a stream (every slice
  parsed, clean frames and macroblocks);
- ``grammar.py``: the decoding grammar that constrained sampling walks, down to the macroblock;
- ``finish.py``: a sampled stream made a whole, strictly valid file (clean prefix + filler slices);
- ``tables.py``: the CAVLC code tables both the check and the grammar read.

Imports go one way: bytestream and tables <- syntax <- grammar, finish <- profile.

The slice syntax is written twice on purpose: ``syntax.py`` is the independent judge of ``grammar.py``.
The tests that hold them together: tests/test_avc_grammar.py (real clips accepted byte for byte, random
constrained walks that the check and FFmpeg pass, corrupted streams the grammar accepts pass the check)
and tests/test_avc_syntax.py (the check agrees with FFmpeg on real clips and random corruptions).
"""
