"""Sessions: admission, ownership (capability keys), controls, lifecycle."""
