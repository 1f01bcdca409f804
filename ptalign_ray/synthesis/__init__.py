"""Self-synthesis: seeds -> topics -> red-team questions -> positive / toxic responses."""
