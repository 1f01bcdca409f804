"""Refinement: judge every positive / toxic sample, revise or resample failures for K rounds."""
