"""GPU queue gateway (imported as `gpuqueue`: the folder name `queue` would shadow the stdlib)."""
