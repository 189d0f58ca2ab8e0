"""Built-in captioners; each module is imported only when its backend is chosen (see base.BUILTIN_CAPTIONERS)."""
