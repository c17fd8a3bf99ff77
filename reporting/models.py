"""No models: the reporting app owns SQL views (see reporting/install.py); this module exists so
that Django sends it post_migrate."""
