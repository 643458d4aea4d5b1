"""The `segment_influence` pipeline component."""
