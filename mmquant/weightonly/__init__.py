"""weightonly subpackage."""
