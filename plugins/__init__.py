"""Built-in readerd plugins, registered exactly like third-party ones."""
