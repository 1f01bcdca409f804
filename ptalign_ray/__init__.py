"""ptalign-ray: PT-ALIGN dual safety self-alignment on Ray."""

__version__ = "0.1.0"
