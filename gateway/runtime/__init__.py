"""The daemon process: the poll/score/store/publish loop and device supervision (``daemon``), the alert policy,
clock checks, systemd (``sdnotify``, ``watchdog``), metrics, kernel precompilation and malloc tuning."""
