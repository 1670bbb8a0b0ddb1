"""The web console gary serves at `/`: static files (no build step at start-up) and the router that serves them."""

from .router import router

__all__ = ["router"]
