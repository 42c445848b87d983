"""arl: queries."""
