"""Wire formats every part speaks: Open Inference Protocol (KServe V2) types and codecs."""
