"""arl: tasks."""
