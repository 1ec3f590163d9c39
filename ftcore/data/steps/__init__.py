"""ftcore's built-in cleaning steps, one module per family (docs/cleaning-steps.md lists them). Each step is a plain
function registered with `@cleaning_step` (ftcore/registry.py); the registry imports this package, and so every
module below, the first time a step is looked up. A new family is a module here, imported below."""

from ftcore.data.steps import dedup, filter, images, nlp, text  # noqa: F401  (each registers its steps on import)
