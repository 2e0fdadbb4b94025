// The CPU backend of max and average pooling (being written).
