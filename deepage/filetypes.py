"""File suffixes taken for images wherever a folder or archive is searched (ingest, predict).

A leaf module with no imports, so that the CLI's parser and the sources layer can use it without loading
OpenCV or NumPy (``deepage --help`` stays instant).
"""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Suffixes (lower case) of the files taken for images when a folder or archive is searched."""
