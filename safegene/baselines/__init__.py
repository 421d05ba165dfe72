"""Post-hoc safety defences SafeGene is compared against, one method a file.

Each file holds the method's per-tensor arithmetic as small pure functions (tested against
hand-computed examples) and one entry point that streams a whole checkpoint through it.
"""
