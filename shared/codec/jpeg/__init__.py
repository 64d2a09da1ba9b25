"""JPEG: images as the stripped baseline JPEG streams Jpeg-LM reads and writes.

- ``profile.py``: the profile (normalised image -> Pillow/libjpeg -> stripped stream; restore, decode);
- ``entropy.py``: the Huffman-level check of every restart interval (what "decodes" means);
- ``grammar.py``: the decoding grammar that constrained sampling walks (every MCU entropy-decodes).
"""
