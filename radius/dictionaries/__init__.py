"""The RADIUS dictionaries shipped with schoolgate (package data; see `radius.codec`)."""
