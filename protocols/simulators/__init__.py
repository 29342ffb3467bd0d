"""gridedge protocols/simulators."""
