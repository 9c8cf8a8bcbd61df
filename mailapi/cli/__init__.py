"""The admin command line: `mailapi --config PATH <group> <command>`."""
