"""The dataset half of the contract: the byte-level tokenizer, shard tars, documents.parquet, the manifest,
and files on any filesystem."""
