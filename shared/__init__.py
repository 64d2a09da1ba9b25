"""What both halves of codec-LM import: codec profiles, the byte-level tokenizer, sample data."""
