"""Data: sources on disk, in-memory image sets and their splits, device-resident batches."""
