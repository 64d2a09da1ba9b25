"""Tools beside the contract: the codec-shards inspection CLI, the codec round-trip demo, contact sheets."""
