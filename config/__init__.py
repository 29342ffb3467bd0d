"""Site configuration: the pydantic models of the YAML (``models``), their reference documentation (``docs``),
and ``site.example.yaml`` for field engineers."""
