"""gridedge scoring."""
