"""arl: runners."""
