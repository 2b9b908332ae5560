"""dtrain command line."""
