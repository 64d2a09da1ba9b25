"""The Apache Beam preprocessing job (raw datasets -> codec streams -> BPE -> packed WebDataset shards)."""
