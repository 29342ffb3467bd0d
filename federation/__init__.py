"""gridedge federation."""
