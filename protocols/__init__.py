"""gridedge protocols."""
