"""Loading models by name or path: the registry of weight files, downloads, backends."""
