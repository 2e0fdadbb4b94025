// The CPU backend of the fully connected layer (being written).
