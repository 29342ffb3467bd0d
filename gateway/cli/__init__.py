"""The ``gridedge`` console script (``main``) and the commands behind it: demo, replay, status view."""
