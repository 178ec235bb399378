"""lattices subpackage."""
