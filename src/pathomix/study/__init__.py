"""A study from a folder of slides: ``pathomix init`` (sheets + config) and ``pathomix doctor`` (the machine)."""
