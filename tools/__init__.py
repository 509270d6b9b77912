"""Build scripts kept out of the wheel (the catalogue snapshot builder)."""
