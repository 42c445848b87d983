"""arl: agents."""
