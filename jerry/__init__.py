"""jerry: the stable-audio-open-small HTTP API."""
