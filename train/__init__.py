"""The LitGPT trainer, generation, evaluation and export for Jpeg-LM / Avc-LM."""
