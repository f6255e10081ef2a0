"""Response cache: key derivation, in-process LRU, Redis layer, the two together."""
