"""Data plumbing every task shares: ragged sequences stored flat with offsets and padded per batch, length-bucketed
and token-budget batches, resumable checked downloads, vocabularies kept beside prepared data, and a DataLoader
worker that builds the training batches beside the model."""
