"""The service's settings: environment variables prefixed ALKN_ (config/settings.py)."""
