// The CPU backend of batch and instance normalization (being written).
