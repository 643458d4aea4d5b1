"""Scaling out: the index build on Ray actors and the index split into shards."""
