"""Storage: the one atomic writer (files and directories), checksums, the index's on-disk
format, the shard manifest and consistent loading of a pipeline being replaced."""
