"""The `gary-stack` launcher: runs every service of the stack on one machine and pulls their models.

It sits above the services (it installs their demo models), so it is its own package, not part of `garycommon`.
"""
