"""Settings flavours: `development` (default for manage.py), `test`, `production`."""
