"""Corpora (catalog, readers), token shards and the deterministic window sampler."""
