"""Running untrusted research code: workspaces, patches, the jail and the experiment runner.

Imports `trainer` only as files (its target description); never imports `server`.
"""
