"""The `fedblend` command line."""
