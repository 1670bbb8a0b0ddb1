"""terry: the MelodyFlow transform API."""
