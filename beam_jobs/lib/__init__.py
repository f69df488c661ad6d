"""The shared layer beneath the jobs: sources, splits, records, shards, artifacts, the run
skeleton and CLI plumbing."""
