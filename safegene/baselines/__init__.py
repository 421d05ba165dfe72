"""Post-hoc safety defences SafeGene is compared against, one method a file.

Each file holds the method's per-tensor arithmetic as small pure functions (tested against
hand-computed examples), one entry point that streams a whole checkpoint through it (the shared
loop: stream.py), and its registration for `compare` (safegene.methods: name, parameter grid,
whether it needs the base model, the demo's grid). docs/baselines.md has one section per
method: the paper's formula, this code's, the differences and why.
"""
