"""What every HTTP surface shares, below the views: the serving extension, security, metrics, error rendering."""
