"""An app that does not import: a typo in a dependency's name. The check must stop with exit 2."""

import flaskk  # noqa: F401  (the typo is the point)
