"""The ``affinity`` command: parses flags and wires the parts, importing each lazily
(so ``affinity balancer`` never imports torch)."""
