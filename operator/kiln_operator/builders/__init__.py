"""Pure functions from a Kiln object (and what it references) to the manifests of its children."""
